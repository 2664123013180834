package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// Backup, restore and moving blobs to S3, with the real binaries
// (docs/OPERATIONS.md, "Backup, restore, moving to S3").

// fetch GETs path from e over mTLS as dev (the repository needs a client
// certificate) and returns the body.
func (e *Env) fetch(dev *Device, path string) []byte {
	e.t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dev.StateDir, "device.crt"), filepath.Join(dev.StateDir, "device.key"))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.HTTPClient(caPEM, &cert).Get(e.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		e.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// enrollLoop enrolls devices SN-LOOP-<n> one after the other until stop is
// closed; enrolled counts those done. Errors go to errs.
func (e *Env) enrollLoop(stop <-chan struct{}, enrolled *atomic.Int64, errs chan<- string) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		serial := fmt.Sprintf("SN-LOOP-%d", i)
		tok := e.Run("foster", "--instance", e.DataDir, "token", "create", "--serial", serial, "--model", "edge-gw")
		if tok.Code != 0 {
			errs <- "token create: " + tok.Stderr
			return
		}
		d := e.NewDevice(serial, "edge-gw")
		if r := e.Run("foster-agent", d.enrollArgs(strings.TrimSpace(tok.Stdout))...); r.Code != 0 {
			errs <- "enroll: " + r.Stderr
			return
		}
		enrolled.Add(1)
	}
}

func (e *Env) deviceSerials() map[string]deviceJSON {
	e.t.Helper()
	var ds []deviceJSON
	if err := json.Unmarshal([]byte(e.Admin("device", "list", "--json").Stdout), &ds); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]deviceJSON{}
	for _, d := range ds {
		out[d.Serial] = d
	}
	return out
}

type backupSummary struct {
	File          string `json:"file"`
	SchemaVersion int64  `json:"schema_version"`
	Counts        struct {
		Rows     int64 `json:"rows"`
		Blobs    int64 `json:"blobs"`
		KeyFiles int64 `json:"key_files"`
	} `json:"counts"`
}

// TestBackupWhileServingRestoresTheSameInstance: fosterd serves a model, two
// releases and a device that installed the first and attested, and keeps
// enrolling devices while `foster backup` runs. The original is lost; the
// archive is restored into a new directory (and, for PostgreSQL + S3, a new
// schema and a new bucket); fosterd started on it knows the device and the
// devices enrolled before the backup, serves the second release, accepts the
// device's next attestation after the first, and the auditor verifies both
// bundles and sees the log only grew. A tampered or truncated archive and
// non-empty targets are refused, and change nothing.
func TestBackupWhileServingRestoresTheSameInstance(t *testing.T) {
	t.Run("sqlite-file", func(t *testing.T) {
		backupStory(t, nil, nil)
	})
	t.Run("postgres-s3", func(t *testing.T) {
		s3srv := s3test.StartServer(t)
		orig := []string{"--db", storetest.PostgresDSN(t), "--blobs", s3srv.NewBucket(t)}
		restored := []string{"--db", storetest.PostgresDSN(t), "--blobs", s3srv.NewBucket(t)}
		backupStory(t, orig, restored)
	})
}

func backupStory(t *testing.T, origArgs, restoreArgs []string) {
	env := NewEnvWith(t, origArgs)
	env.Admin("model", "add", "edge-gw")
	fw1, _ := writeFirmware(t, 256<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(env.Token("SN-0001", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("first install: %s", r.Stderr)
	}
	fw2, fw2Bytes := writeFirmware(t, 512<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw2)
	anchors := env.anchors()
	monitorState := filepath.Join(t.TempDir(), "monitor.json")
	monitor := func() Result {
		return env.Run("foster", "--server", env.URL, "--ca", filepath.Join(env.DataDir, "ca.pem"),
			"audit", "monitor", "--state", monitorState, "--log-key", anchors[5])
	}
	if r := monitor(); r.Code != 0 {
		t.Fatalf("monitor: %s%s", r.Stdout, r.Stderr)
	}
	before := env.Admin("device", "show", "SN-0001", "--json").Stdout

	// Back up while devices keep enrolling.
	var enrolled atomic.Int64
	stop := make(chan struct{})
	errs := make(chan string, 1)
	var wg sync.WaitGroup
	wg.Go(func() { env.enrollLoop(stop, &enrolled, errs) })
	deadline := time.Now().Add(90 * time.Second)
	for enrolled.Load() < 2 && len(errs) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	atStart := enrolled.Load()
	archive := filepath.Join(t.TempDir(), "foster-backup.tar.gz")
	r := env.MustRun("foster", "backup", "--instance", env.DataDir, "--out", archive, "--json")
	atEnd := enrolled.Load()
	close(stop)
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatalf("enrollments during the backup: %s", e)
	default:
	}
	var sum backupSummary
	if err := json.Unmarshal([]byte(r.Stdout), &sum); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, r.Stdout)
	}
	if !strings.Contains(r.Stderr, "private keys") {
		t.Fatalf("backup does not warn that the archive holds keys:\n%s", r.Stderr)
	}
	if st, err := os.Stat(archive); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive mode: %v %v, want 0600", st, err)
	}
	if sum.Counts.KeyFiles == 0 || sum.Counts.Blobs == 0 || sum.Counts.Rows == 0 {
		t.Fatalf("backup summary: %+v", sum)
	}

	// The original is lost.
	env.stopDaemon()
	newDir := filepath.Join(t.TempDir(), "restored")

	// Refusals first: each leaves no directory behind.
	tampered := filepath.Join(t.TempDir(), "tampered.tar.gz")
	raw, _ := os.ReadFile(archive)
	bad := bytes.Clone(raw)
	bad[len(bad)/2] ^= 0x40
	os.WriteFile(tampered, bad, 0o600)
	env.MustFail("invalid backup archive", "foster", "restore", "--from", tampered, "--dir", newDir)
	truncated := filepath.Join(t.TempDir(), "truncated.tar.gz")
	os.WriteFile(truncated, raw[:len(raw)*2/3], 0o600)
	env.MustFail("truncated", "foster", "restore", "--from", truncated, "--dir", newDir)
	if origArgs == nil {
		// The original's store holds data: refused.
		env.MustFail("not empty", "foster", "restore", "--from", archive, "--dir", newDir, "--db", filepath.Join(env.DataDir, "foster.db"))
	} else {
		// The original's bucket holds objects: refused.
		env.MustFail("not empty", "foster", "restore", "--from", archive, "--dir", newDir, "--db", restoreArgs[1], "--blobs", origArgs[3])
	}
	if _, err := os.Stat(newDir); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s behind: %v", newDir, err)
	}

	args := []string{"restore", "--from", archive, "--dir", newDir, "--json"}
	args = append(args, restoreArgs...)
	env.MustRun("foster", args...)
	// A non-empty directory is refused.
	env.MustFail("not empty", "foster", append([]string{"restore", "--from", archive, "--dir", newDir}, restoreArgs...)...)

	// fosterd on the restored directory, where the original listened.
	rest := &Env{t: t, DataDir: newDir, Addr: env.Addr, URL: env.URL, logs: &bytes.Buffer{}}
	rest.StartDaemon()
	if got := rest.Admin("device", "show", "SN-0001", "--json").Stdout; got != before {
		t.Fatalf("the restored instance's device differs:\n got %s\nwant %s", got, before)
	}
	serials := rest.deviceSerials()
	loop := 0
	for s := range serials {
		if strings.HasPrefix(s, "SN-LOOP-") {
			loop++
		}
	}
	t.Logf("enrolled %d devices before the backup began, %d when it ended; the backup holds %d", atStart, atEnd, loop)
	if int64(loop) < atStart || int64(loop) > atEnd+1 {
		t.Fatalf("the backup holds %d of the devices enrolled meanwhile; %d were enrolled when it began, %d when it ended", loop, atStart, atEnd)
	}
	for i := range loop {
		if _, ok := serials[fmt.Sprintf("SN-LOOP-%d", i)]; !ok {
			t.Fatalf("the backup holds %d loop devices but not SN-LOOP-%d: not one point in time", loop, i)
		}
	}

	// The device updates from the restored instance; its attestation
	// follows the one the original accepted.
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("update from the restored instance: %s", r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fw2Bytes) {
		t.Fatal("the device did not install 1.0.1 from the restored instance")
	}
	if d := rest.deviceSerials()["SN-0001"]; d.InstalledVersion != "1.0.1" {
		t.Fatalf("restored instance: device %+v", d)
	}
	if r := rest.Verify(rest.anchors(), dev.Bundle(1), dev.Bundle(2)); r.Code != 0 {
		t.Fatalf("audit verify of the bundles from before and after the restore: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := monitor(); r.Code != 0 || !strings.Contains(r.Stdout, "consistent") {
		t.Fatalf("the restored log does not extend the one the monitor saw: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
}

// TestBlobsMigrateMovesAFileInstanceToS3: a file-backed instance moves its
// TUF repository and firmware to a real S3 server. Refused while fosterd
// serves, and while the destination holds other objects (config.json
// unchanged); an interrupted copy is finished by running it again; fosterd
// restarted on the bucket (without the local files) serves the same
// metadata and the device updates from it.
func TestBlobsMigrateMovesAFileInstanceToS3(t *testing.T) {
	s3srv := s3test.StartServer(t)
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw1, _ := writeFirmware(t, 256<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	dev := env.NewDevice("SN-0001", "edge-gw")
	dev.Enroll(env.Token("SN-0001", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("first install: %s", r.Stderr)
	}
	fw2, fw2Bytes := writeFirmware(t, 512<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw2)
	timestamp := env.fetch(dev, "/tuf/timestamp.json")
	config := filepath.Join(env.DataDir, "config.json")
	cfgBefore, _ := os.ReadFile(config)

	bucket := s3srv.NewBucket(t)
	env.MustFail("stop it first", "foster", "blobs", "migrate", "--instance", env.DataDir, "--to", bucket)
	env.stopDaemon()

	// A bucket holding another object under one of the instance's keys.
	other := s3srv.NewBucket(t)
	name := strings.TrimPrefix(other[:strings.Index(other, "?")], "s3://")
	ctx := context.Background()
	if _, err := s3srv.Client().PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(name), Key: aws.String("tuf/1.root.json"), Body: strings.NewReader("{}")}); err != nil {
		t.Fatal(err)
	}
	env.MustFail("differ", "foster", "migrate-blobs", "--instance", env.DataDir, "--to", other)
	if b, _ := os.ReadFile(config); !bytes.Equal(b, cfgBefore) {
		t.Fatal("a refused migration changed config.json")
	}

	// An interrupted copy: some objects are there, others not yet.
	env.MustRun("foster", "blobs", "copy", "--from", "file:"+filepath.Join(env.DataDir, "blobs"), "--to", bucket)
	bname := strings.TrimPrefix(bucket[:strings.Index(bucket, "?")], "s3://")
	for _, k := range []string{"tuf/timestamp.json", "tuf/1.root.json"} {
		if _, err := s3srv.Client().DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bname), Key: aws.String(k)}); err != nil {
			t.Fatal(err)
		}
	}
	r := env.MustRun("foster", "blobs", "migrate", "--instance", env.DataDir, "--to", bucket, "--json")
	var res struct {
		Copied, Already int
		ConfigBackup    string `json:"config_backup"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("%v\n%s", err, r.Stdout)
	}
	if res.Copied != 2 || res.Already == 0 {
		t.Fatalf("re-run after an interruption copied %d objects (%d already there), want the 2 missing ones", res.Copied, res.Already)
	}
	if b, _ := os.ReadFile(res.ConfigBackup); !bytes.Equal(b, cfgBefore) {
		t.Fatalf("the old config.json was not kept in %s", res.ConfigBackup)
	}
	var cfg struct{ Blobs string }
	b, _ := os.ReadFile(config)
	json.Unmarshal(b, &cfg)
	if cfg.Blobs != bucket {
		t.Fatalf("config.json blobs %q, want %q", cfg.Blobs, bucket)
	}
	if r := env.MustRun("foster", "blobs", "migrate", "--instance", env.DataDir, "--to", bucket); !strings.Contains(r.Stdout, "nothing to do") {
		t.Fatalf("a second run: %s", r.Stdout)
	}

	// Serve from the bucket only.
	if err := os.Rename(filepath.Join(env.DataDir, "blobs"), filepath.Join(t.TempDir(), "old-blobs")); err != nil {
		t.Fatal(err)
	}
	env.StartDaemon()
	if got := env.fetch(dev, "/tuf/timestamp.json"); !bytes.Equal(got, timestamp) {
		t.Fatalf("fosterd on S3 serves another timestamp.json:\n%s\nwas\n%s", got, timestamp)
	}
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("update from the S3-backed instance: %s", r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fw2Bytes) {
		t.Fatal("the device did not install 1.0.1 from S3")
	}
}
