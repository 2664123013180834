// Package s3test runs a real S3 server for tests: versitygw with its posix
// backend (a bucket is a directory), built from the Go module proxy at a
// pinned version the first time it is needed and cached across runs.
//
//	url := s3test.Start(t) // s3://bucket?endpoint=http://127.0.0.1:PORT&region=us-east-1&path-style=true
//	store, err := blob.Open(context.Background(), url)
//
// The first build takes one to two minutes; later runs reuse the binary
// from the user cache directory (foster-testbin/versitygw-VERSION/), and a
// file lock keeps parallel test packages from building it twice. Without
// network access the tests are skipped, unless the CI environment variable
// is set, in which case they fail. In -short mode they are skipped.
//
// Start and StartServer set the AWS_* environment for the test (fresh
// credentials; no profile, shared files, CA bundle or endpoint override
// leaking in from the machine), so tests that use them cannot run in
// parallel with each other.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	// VersitygwModule is installed with go install at VersitygwVersion.
	VersitygwModule = "github.com/versity/versitygw/cmd/versitygw"
	// VersitygwVersion is pinned: DESIGN.md records that it builds here.
	VersitygwVersion = "v1.8.0"
	// Region is the region the server and the returned URLs use.
	Region = "us-east-1"

	buildTimeout = 10 * time.Minute
	startTimeout = 20 * time.Second
)

// Server is a running versitygw on 127.0.0.1, stopped when the test ends.
type Server struct {
	// Endpoint is http://127.0.0.1:PORT.
	Endpoint string
	// AccessKey and SecretKey are the root credentials, also exported as
	// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the test.
	AccessKey, SecretKey string
	// Dir is the posix backend's root: Dir/BUCKET/KEY is an object.
	Dir string

	client *s3.Client
}

// Start starts a server and returns the URL of a new, empty bucket on it.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t).NewBucket(t)
}

var bucketSeq atomic.Int64

// NewBucket creates an empty bucket and returns its blob store URL.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("foster-test-%d", bucketSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("s3test: creating bucket %s: %v", name, err)
	}
	return s.URL(name)
}

// URL is the blob store URL of bucket on this server.
func (s *Server) URL(bucket string) string {
	return "s3://" + bucket + "?endpoint=" + s.Endpoint + "&region=" + Region + "&path-style=true"
}

// Client is an S3 client for the server, for tests that inspect a bucket
// behind the store's back.
func (s *Server) Client() *s3.Client { return s.client }

// StartServer builds (or reuses) versitygw, starts it on a free port with
// an empty data directory, and stops it when the test ends.
func StartServer(t testing.TB) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("s3test: skipping the real S3 server in -short mode")
	}
	bin := Binary(t)
	s := &Server{
		AccessKey: "foster" + randHex(7),
		SecretKey: randHex(20),
		Dir:       filepath.Join(t.TempDir(), "s3"),
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	isolateAWSEnv(t, s.AccessKey, s.SecretKey)

	var lastErr error
	for range 3 { // another process may take the free port before versitygw binds it
		addr, err := freeAddr()
		if err != nil {
			t.Fatalf("s3test: %v", err)
		}
		s.Endpoint = "http://" + addr
		s.client = s3.New(s3.Options{
			BaseEndpoint: aws.String(s.Endpoint),
			Region:       Region,
			UsePathStyle: true,
			Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),

			DisableLogOutputChecksumValidationSkipped: true,
		})
		if lastErr = s.start(t, bin, addr); lastErr == nil {
			return s
		}
	}
	t.Fatalf("s3test: starting versitygw: %v", lastErr)
	return nil
}

func (s *Server) start(t testing.TB, bin, addr string) error {
	logPath := filepath.Join(filepath.Dir(s.Dir), fmt.Sprintf("versitygw-%s.log", strings.ReplaceAll(addr, ":", "_")))
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", s.Dir)
	cmd.Env = append(envWithout(os.Environ(), "AWS_", "ROOT_", "VGW_"),
		"ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited at startup: %s", tail(logPath))
		case <-ctx.Done():
			stop()
			return fmt.Errorf("versitygw did not answer on %s within %v: %s", addr, startTimeout, tail(logPath))
		case <-time.After(25 * time.Millisecond):
		}
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := s.client.ListBuckets(rctx, &s3.ListBucketsInput{})
		rcancel()
		if err == nil {
			break
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("s3test: versitygw log (%s):\n%s", logPath, tail(logPath))
		}
	})
	return nil
}

// isolateAWSEnv gives the SDK in the test exactly these credentials and
// nothing from the machine: no profile or shared files, no session token,
// no endpoint override, no instance metadata, and no AWS_CA_BUNDLE (this
// machine sets one; the local endpoint is plain HTTP).
func isolateAWSEnv(t testing.TB, access, secret string) {
	missing := filepath.Join(t.TempDir(), "no-such-aws-file")
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":           access,
		"AWS_SECRET_ACCESS_KEY":       secret,
		"AWS_SESSION_TOKEN":           "",
		"AWS_PROFILE":                 "",
		"AWS_DEFAULT_PROFILE":         "",
		"AWS_CONFIG_FILE":             missing,
		"AWS_SHARED_CREDENTIALS_FILE": missing,
		"AWS_CA_BUNDLE":               "",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_S3":         "",
		"AWS_REGION":                  "",
		"AWS_DEFAULT_REGION":          "",
		"AWS_EC2_METADATA_DISABLED":   "true",
	} {
		t.Setenv(k, v)
	}
}

func envWithout(env []string, prefixes ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// tail returns the end of a log file for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "(no output)"
	}
	return string(b)
}

var (
	buildMu  sync.Mutex
	builtBin string
	buildErr error // a failed build is not retried within one test binary
)

// Binary returns the path of the cached versitygw binary, building it
// first if needed. It skips the test (fails it when CI is set) if the
// build fails, e.g. without network access to the module proxy.
func Binary(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtBin == "" && buildErr == nil {
		builtBin, buildErr = build(t)
	}
	if buildErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("s3test: %v", buildErr)
		}
		t.Skipf("s3test: skipping, no S3 server (set CI to make this a failure): %v", buildErr)
	}
	return builtBin
}

func cacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "foster-testbin", "versitygw-"+VersitygwVersion)
}

func build(t testing.TB) (string, error) {
	dir := cacheDir()
	exe := "versitygw"
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	bin := filepath.Join(dir, exe)
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating cache directory: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", fmt.Errorf("locking %s: %w", dir, err)
	}
	defer unlock()
	if isExecutable(bin) { // built by another test process while we waited
		return bin, nil
	}
	gobin, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(gobin)
	// go test puts the running toolchain's bin directory first in PATH.
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("s3test: the go command is needed to build %s: %w", VersitygwModule, err)
	}
	pkg := VersitygwModule + "@" + VersitygwVersion
	t.Logf("s3test: building %s into %s (one to two minutes, cached afterwards)", pkg, dir)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "install", pkg)
	cmd.Dir = gobin // outside any module or workspace
	cmd.Env = append(envWithout(os.Environ(), "GOBIN=", "GOFLAGS=", "GOTOOLCHAIN=", "GOWORK="),
		"GOBIN="+gobin, "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", pkg, err, lastLines(out, 20))
	}
	if err := os.Rename(filepath.Join(gobin, exe), bin); err != nil {
		return "", fmt.Errorf("installing versitygw into the cache: %w", err)
	}
	t.Logf("s3test: built versitygw in %v", time.Since(start).Round(time.Second))
	return bin, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && (runtime.GOOS == "windows" || fi.Mode()&0o111 != 0)
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
