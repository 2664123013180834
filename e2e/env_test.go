// Package e2e runs Foster's real binaries over real TLS on 127.0.0.1 and
// checks whole user stories, reading like the README walkthrough.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "foster-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := func() int {
		defer os.RemoveAll(dir)
		for _, b := range []string{"fosterd", "foster", "foster-agent"} {
			// -buildvcs=auto: stamp the commit (--version) when built from a git checkout.
			// -tags fostertest: honour the test hooks (pkg/env/hook.go).
			cmd := exec.Command("go", "build", "-tags", "fostertest", "-buildvcs=auto", "-o", filepath.Join(dir, b), "./cmd/"+b)
			cmd.Dir = moduleRoot()
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n", b, err)
				return 1
			}
		}
		code := m.Run()
		if fleetSummary != "" {
			fmt.Println(fleetSummary) // the fleet simulator's figures end its run
		}
		return code
	}()
	os.Exit(code)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// Env is one Foster instance under test.
type Env struct {
	t       *testing.T
	DataDir string
	Addr    string
	URL     string
	daemon  *exec.Cmd
	logs    *bytes.Buffer
}

// NewEnv starts fosterd on a fresh data dir and a free port.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	e.StartDaemon()
	return e
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// StartDaemon runs fosterd and waits until it answers /healthz over TLS.
func (e *Env) StartDaemon() {
	e.t.Helper()
	e.StartDaemonWith(nil)
}

func (e *Env) healthy() bool {
	pem, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		return false
	}
	resp, err := e.HTTPClient(pem, nil).Get(e.URL + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// HTTPClient returns a client trusting caPEM, presenting cert if non-nil.
func (e *Env) HTTPClient(caPEM []byte, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// Result is a finished command.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Run runs a Foster binary with a timeout.
func (e *Env) Run(bin string, args ...string) Result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, bin), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("running %s %v: %v", bin, args, err)
		}
		code = ee.ExitCode()
	}
	return Result{Code: code, Stdout: out.String(), Stderr: errb.String()}
}

// MustRun runs a command and fails the test unless it exits 0.
func (e *Env) MustRun(bin string, args ...string) Result {
	e.t.Helper()
	r := e.Run(bin, args...)
	if r.Code != 0 {
		e.t.Fatalf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", bin, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// MustFail runs a command, requires a non-zero exit and that the output
// mentions want.
func (e *Env) MustFail(want string, bin string, args ...string) Result {
	e.t.Helper()
	r := e.Run(bin, args...)
	if r.Code == 0 {
		e.t.Fatalf("%s %s: succeeded, want failure mentioning %q\nstdout:\n%s", bin, strings.Join(args, " "), want, r.Stdout)
	}
	if !strings.Contains(strings.ToLower(r.Stdout+r.Stderr), strings.ToLower(want)) {
		e.t.Fatalf("%s %s: exit %d but output does not mention %q\nstdout:\n%s\nstderr:\n%s", bin, strings.Join(args, " "), r.Code, want, r.Stdout, r.Stderr)
	}
	return r
}

// Admin runs the admin CLI against this instance.
func (e *Env) Admin(args ...string) Result {
	e.t.Helper()
	return e.MustRun("foster", append([]string{"--instance", e.DataDir}, args...)...)
}

// Token creates a one-time enrollment token.
func (e *Env) Token(serial, model string) string {
	e.t.Helper()
	return strings.TrimSpace(e.Admin("token", "create", "--serial", serial, "--model", model).Stdout)
}

// Device is a simulated device with its own state directory.
type Device struct {
	env      *Env
	StateDir string
	Serial   string
	Model    string
	Firmware string
}

// NewDevice prepares a device state dir (nothing is enrolled yet).
func (e *Env) NewDevice(serial, model string) *Device {
	dir := filepath.Join(e.t.TempDir(), serial)
	return &Device{env: e, StateDir: dir, Serial: serial, Model: model, Firmware: filepath.Join(dir, "firmware.bin")}
}

func (d *Device) enrollArgs(token string) []string {
	return []string{"--state-dir", d.StateDir, "enroll", "--server", d.env.URL, "--token", token,
		"--serial", d.Serial, "--model", d.Model,
		"--ca-root", filepath.Join(d.env.DataDir, "ca.pem"), "--tuf-root", filepath.Join(d.env.DataDir, "root.json")}
}

// Enroll enrolls the device with token.
func (d *Device) Enroll(token string) Result {
	return d.env.MustRun("foster-agent", d.enrollArgs(token)...)
}

// RunOnce runs one update cycle with the file installer.
func (d *Device) RunOnce() Result {
	return d.env.Run("foster-agent", "--state-dir", d.StateDir, "run", "--once", "--installer", "file", "--target", d.Firmware)
}

// addReleasesAtOnce runs `foster release add` of version for every model at
// the same time, each through its fosterd (adds: model -> instance), with
// the firmware file paths[model]; it returns each model's result.
func addReleasesAtOnce(adds map[string]*Env, version string, paths map[string]string) map[string]Result {
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := map[string]Result{}
	for m, via := range adds {
		wg.Go(func() {
			r := via.Run("foster", "--instance", via.DataDir, "release", "add", "--model", m, "--version", version, paths[m])
			mu.Lock()
			results[m] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return results
}
