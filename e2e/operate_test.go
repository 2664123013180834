package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An operator's first day: fosterd refuses a data dir that is not there
// (an unmounted volume), --init creates a dev instance once and is a no-op
// after, logs are JSON for the collector, and the container health check
// (fosterd --probe, no shell or curl needed) follows /readyz.
func TestOperatorFirstDay(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "not-mounted")
	e := &Env{t: t}
	e.MustFail("run with --init to create a new development instance", "fosterd", "--data-dir", missing, "--listen", "127.0.0.1:0")
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("fosterd without --init created %s (%v)", missing, err)
	}

	env := NewEnvWith(t, []string{"--log-format", "json"})
	caBefore, err := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	env.MustRun("fosterd", "--data-dir", env.DataDir, "--listen", env.Addr, "--probe")
	env.KillDaemon() // its output is complete once it has exited

	// Every log line is one JSON object, and the start line says which build runs.
	sawServing := false
	for _, line := range bytes.Split(bytes.TrimSpace(env.logs.Bytes()), []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("{")) {
			continue // the human-readable banner on stderr
		}
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("--log-format json wrote a line that is not JSON: %q: %v", line, err)
		}
		if rec["msg"] == "serving" {
			sawServing = rec["version"] != nil && rec["go"] != nil
		}
	}
	if !sawServing {
		t.Fatalf("no JSON \"serving\" record with version and go fields in:\n%s", env.logs.String())
	}

	// A restart with --init opens the same instance: same CA, nothing re-created.
	env.StartDaemonWith(nil)
	caAfter, err := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	if err != nil || !bytes.Equal(caBefore, caAfter) {
		t.Fatalf("--init on an initialised instance replaced its CA root (%v)", err)
	}

	// Not ready: the probe fails once fosterd is gone.
	env.KillDaemon()
	r := env.Run("fosterd", "--data-dir", env.DataDir, "--listen", env.Addr, "--probe")
	if r.Code == 0 || !strings.Contains(r.Stderr, "probe") {
		t.Fatalf("fosterd --probe with no fosterd running: exit %d, stderr %q; want a failure", r.Code, r.Stderr)
	}
}
