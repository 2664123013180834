package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/clienttest"
)

type result struct {
	code           int
	stdout, stderr string
}

func agent(t *testing.T, args ...string) result {
	t.Helper()
	return agentCtx(context.Background(), t, args...)
}

func agentCtx(ctx context.Context, t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func TestHelpAndUsageErrors(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"top help", []string{"--help"}, 0, "Commands:", ""},
		{"help command", []string{"help", "run"}, 0, "--target", ""},
		{"command help", []string{"enroll", "--help"}, 0, "--token-file", ""},
		{"status help", []string{"status", "-h"}, 0, "--json", ""},
		{"no command", nil, 2, "", "missing command"},
		{"unknown command", []string{"flash"}, 2, "", `unknown command "flash"`},
		{"unknown command suggests", []string{"stauts"}, 2, "", "Did you mean this?\n\tfoster-agent status"},
		{"unknown command suggests by prefix", []string{"enr"}, 2, "", "foster-agent enroll"},
		{"help for an unknown command", []string{"help", "rnu"}, 2, "", "foster-agent run"},
		{"help lists the commands", []string{"help"}, 0, "renew", ""},
		{"tuf help", []string{"tuf", "--help"}, 0, "--metadata-dir", ""},
		{"tuf subcommand suggests", []string{"tuf", "--metadata-dir", t.TempDir(), "refesh"}, 1, "", `did you mean "refresh"`},
		{"unknown flag", []string{"run", "--frobnicate"}, 2, "", "flag provided but not defined: -frobnicate"},
		{"enroll missing flags", []string{"--state-dir", t.TempDir(), "enroll", "--server", "https://x"}, 2, "",
			"missing required flag(s): --token, --serial, --model, --ca-root, --tuf-root"},
		{"run missing target", []string{"--state-dir", t.TempDir(), "run", "--once"}, 2, "", "missing required flag(s): --target"},
		{"install-bundle help", []string{"install-bundle", "--help"}, 0, "--verify-only", ""},
		{"install-bundle without a bundle", []string{"--state-dir", t.TempDir(), "install-bundle", "--target", "x"}, 2, "", "missing bundle FILE|DIR (or --mirror URL)"},
		{"install-bundle with a bundle and a mirror", []string{"--state-dir", t.TempDir(), "install-bundle", "--mirror", "http://h/", "b.tar"}, 2, "", "not both"},
		{"install-bundle missing target", []string{"--state-dir", t.TempDir(), "install-bundle", "b.tar"}, 2, "", "missing required flag(s): --target"},
		{"unknown installer", []string{"--state-dir", t.TempDir(), "run", "--installer", "flash"}, 2, "", `unknown installer "flash"`},
		{"ab without config", []string{"--state-dir", t.TempDir(), "run", "--installer", "ab"}, 2, "", "ab installer needs exactly two slots"},
		{"tuf without subcommand", []string{"tuf", "--metadata-dir", t.TempDir()}, 1, "", "missing subcommand"},
		{"tuf bad subcommand", []string{"tuf", "--metadata-dir", t.TempDir(), "frobnicate"}, 1, "", "unknown or malformed subcommand"},
		{"tuf bad flag", []string{"tuf", "--frobnicate", "refresh"}, 1, "", "flag provided but not defined"},
		{"tuf refresh without url", []string{"tuf", "--metadata-dir", t.TempDir(), "refresh"}, 1, "", "--metadata-url"},
		{"tuf help", []string{"help", "tuf"}, 0, "--target-name", ""},
		{"bad log level", []string{"--log-level", "loud", "status"}, 2, "", "--log-level"},
		{"stray argument", []string{"status", "extra"}, 2, "", `unexpected argument "extra"`},
		{"not enrolled", []string{"--state-dir", t.TempDir(), "status"}, 1, "", "not enrolled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := agent(t, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", r.code, tt.code, r.stdout, r.stderr)
			}
		})
	}
}

// The walking skeleton, as an operator would type it.
func TestEnrollRunStatus(t *testing.T) {
	srv := clienttest.NewServer(t, clienttest.NewRepo(t, ""))
	srv.AddToken("TOKEN", "SN-0001", "edge-gw")
	data := t.TempDir()
	caRoot := clienttest.WriteFile(t, data, "ca.pem", srv.PKI.RootPEM)
	tufRoot := clienttest.WriteFile(t, data, "root.json", srv.Repo.RootJSON())
	dev := filepath.Join(t.TempDir(), "dev1")
	os.MkdirAll(dev, 0o755)
	state := filepath.Join(dev, "state")
	target := filepath.Join(dev, "firmware.bin")
	os.WriteFile(target, []byte("factory image"), 0o755)

	enroll := []string{"--state-dir", state, "enroll", "--server", srv.URL, "--token", "TOKEN",
		"--serial", "SN-0001", "--model", "edge-gw", "--ca-root", caRoot, "--tuf-root", tufRoot}
	r := agent(t, enroll...)
	if r.code != 0 || !strings.Contains(r.stdout, "enrolled urn:foster:device:edge-gw:SN-0001") {
		t.Fatalf("enroll: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, "TOKEN") {
		t.Fatal("token printed")
	}
	r = agent(t, enroll...)
	if r.code != 1 || !strings.Contains(r.stderr, "already enrolled") {
		t.Fatalf("second enroll: exit %d\n%s", r.code, r.stderr)
	}
	r = agent(t, append([]string{"--state-dir", filepath.Join(t.TempDir(), "other")}, enroll[2:]...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "the token was already used") {
		t.Fatalf("token reuse: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("token reuse:\n%s", r.stderr)

	runOnce := []string{"--state-dir", state, "run", "--once", "--installer", "file", "--target", target}
	r = agent(t, runOnce...)
	if r.code != 0 || !strings.Contains(r.stderr, "up to date") {
		t.Fatalf("run on empty repo: exit %d\n%s", r.code, r.stderr)
	}

	fw := bytes.Repeat([]byte{0xfe, 0xed}, 50000)
	srv.Lock(func() {
		srv.Repo.AddTarget(t, "edge-gw/1.0.1/firmware.bin", fw, clienttest.Custom{Model: "edge-gw", Version: "1.0.1", ReleaseCounter: 1})
		srv.Repo.Publish(t)
	})
	// Tampered in transit: refused, old image untouched, non-zero exit.
	srv.Lock(func() {
		srv.TargetHook = func(w http.ResponseWriter, _ *http.Request, b []byte) { w.Write(append(bytes.Clone(b[:len(b)-1]), 0)) }
	})
	r = agent(t, runOnce...)
	if r.code != 1 || !strings.Contains(r.stderr, "hash mismatch") || !strings.Contains(r.stderr, "edge-gw/1.0.1/firmware.bin") {
		t.Fatalf("tampered: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("tampered:\n%s", r.stderr)
	if b, _ := os.ReadFile(target); string(b) != "factory image" {
		t.Fatal("tampered image touched the target")
	}
	if _, err := os.Stat(target + ".unverified"); !os.IsNotExist(err) {
		t.Fatal(".unverified left behind")
	}

	srv.Lock(func() { srv.TargetHook = nil })
	r = agent(t, runOnce...)
	if r.code != 0 || !strings.Contains(r.stderr, "installed") {
		t.Fatalf("run: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("run --once:\n%s", r.stderr)
	if b, _ := os.ReadFile(target); !bytes.Equal(b, fw) {
		t.Fatal("target not replaced")
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode not preserved: %v", fi.Mode())
	}

	r = agent(t, "--state-dir", state, "status", "--json")
	var st struct {
		Device             string
		Phase              string
		Installed          struct{ Version string }
		QueuedAttestations []int64 `json:"queued_attestations"`
		SentAttestations   int     `json:"sent_attestations"`
		CertNotAfter       time.Time
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("status --json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if st.Device != "urn:foster:device:edge-gw:SN-0001" || st.Phase != "attested" || st.Installed.Version != "1.0.1" ||
		len(st.QueuedAttestations) != 0 || st.SentAttestations != 1 {
		t.Fatalf("status %+v", st)
	}
	r = agent(t, "--state-dir", state, "status")
	t.Logf("status:\n%s", r.stdout)
	for _, want := range []string{"urn:foster:device:edge-gw:SN-0001", "valid until", "edge-gw/1.0.1/firmware.bin", "1 sent"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("status missing %q:\n%s%s", want, r.stdout, r.stderr)
		}
	}
}

// Without --once the agent loops until cancelled (SIGINT/SIGTERM in main).
func TestRunLoopsUntilCancelled(t *testing.T) {
	srv := clienttest.NewServer(t, clienttest.NewRepo(t, ""))
	srv.AddToken("T", "SN-9", "edge-gw")
	data := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	r := agent(t, "--state-dir", state, "enroll", "--server", srv.URL, "--token", "T", "--serial", "SN-9", "--model", "edge-gw",
		"--ca-root", clienttest.WriteFile(t, data, "ca.pem", srv.PKI.RootPEM),
		"--tuf-root", clienttest.WriteFile(t, data, "root.json", srv.Repo.RootJSON()))
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	srv.Lock(func() {
		srv.Repo.AddTarget(t, "edge-gw/1.0.0/firmware.bin", []byte("v1"), clienttest.Custom{Model: "edge-gw", Version: "1.0.0", ReleaseCounter: 1})
		srv.Repo.Publish(t)
	})
	target := filepath.Join(t.TempDir(), "fw")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result)
	go func() {
		done <- agentCtx(ctx, t, "--state-dir", state, "run", "--interval", "50ms", "--target", target)
	}()
	deadline := time.After(10 * time.Second)
	for len(srv.Received()) == 0 {
		select {
		case <-deadline:
			cancel()
			t.Fatalf("no install: %s", (<-done).stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	r = <-done
	if r.code != 0 || !strings.Contains(r.stderr, "agent stopped") {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
}

func TestRunConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string { return clienttest.WriteFile(t, dir, name, []byte(body)) }
	tests := []struct {
		name   string
		config string
		extra  []string
		code   int
		stderr string
	}{
		{"unknown field", `{"installer":"file","file":{"path":"/tmp/x"},"colour":"blue"}`, nil, 1, `unknown field "colour"`},
		{"bad duration", `{"installer":"file","interval":"soon"}`, nil, 1, "invalid duration"},
		{"unknown installer", `{"installer":"flash"}`, nil, 1, `unknown installer "flash"`},
		{"ab with one slot", `{"installer":"ab","ab":{"slots":{"a":"/dev/x"},"env":{"backend":"file","file":"/tmp/e"}}}`, nil, 1, "exactly two slots"},
		{"bad boot env", `{"installer":"ab","ab":{"slots":{"a":"/x","b":"/y"},"env":{"backend":"lilo"}}}`, nil, 1, "unknown boot env backend"},
		{"trailing data", `{"installer":"file"} {}`, nil, 1, "trailing data"},
		// Flags win over the file: the file installer from the command line, then "not enrolled".
		{"flags override", `{"installer":"ab"}`, []string{"--installer", "file", "--target", filepath.Join(dir, "fw")}, 1, "not enrolled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := write(strings.ReplaceAll(tt.name, " ", "-")+".json", tt.config)
			r := agent(t, append([]string{"--state-dir", t.TempDir(), "run", "--once", "--config", cfg}, tt.extra...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d)\n%s", r.code, tt.code, r.stderr)
			}
		})
	}
}
