// Package systemd holds Foster's systemd units (fosterd.service,
// foster-agent.service) and the test that checks them with systemd's own
// tools; the directory has no Go code of its own.
package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// systemdAnalyze returns the path of systemd-analyze, or skips the test
// where it is not installed (under CI=true a missing tool fails: CI
// machines have systemd, and a skipped check would pass silently).
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("systemd-analyze not found under CI=true (install systemd): %v", err)
		}
		t.Skipf("systemd-analyze not installed (apt-get install systemd): the units in deploy/systemd are not checked")
	}
	return p
}

// The units, with ExecStart's binary replaced by a stub executable at a
// temporary path (systemd-analyze verify requires it to exist), and the most
// exposure `systemd-analyze security` may grade them (0 best, 10 worst).
var units = []struct {
	file, binary string
	maxExposure  float64
}{
	{"fosterd.service", "/usr/local/bin/fosterd", 2.0},
	// Root, to write partitions and the boot environment: less confined.
	{"foster-agent.service", "/usr/bin/foster-agent", 3.5},
}

func stage(t *testing.T, file, binary string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "ExecStart="+binary+" ") {
		t.Fatalf("%s: ExecStart does not run %s", file, binary)
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, filepath.Base(binary))
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, file)
	if err := os.WriteFile(out, []byte(strings.ReplaceAll(string(b), binary, stub)), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// verify fails on anything systemd-analyze says: an unknown or misspelled
// key is only a warning (exit 0) to systemd, but a hardening line it ignores
// is hardening that is not there.
func TestUnitsVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			path := stage(t, u.file, u.binary)
			out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Fatalf("systemd-analyze verify %s: %v\n%s", u.file, err, out)
			}
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

func TestUnitsHardened(t *testing.T) {
	sa := systemdAnalyze(t)
	for _, u := range units {
		t.Run(u.file, func(t *testing.T) {
			path := stage(t, u.file, u.binary)
			out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
			if err != nil && strings.Contains(string(out), "offline") {
				t.Skipf("this systemd-analyze cannot grade units offline (systemd < 252): %s", out)
			}
			m := exposureRE.FindSubmatch(out)
			if m == nil {
				t.Fatalf("systemd-analyze security %s: %v, no exposure level in:\n%s", u.file, err, out)
			}
			got, _ := strconv.ParseFloat(string(m[1]), 64)
			if got > u.maxExposure {
				t.Fatalf("%s: exposure %.1f, want at most %.1f (a hardening line was lost?)\n%s", u.file, got, u.maxExposure, out)
			}
		})
	}
}

// fosterd speaks sd_notify (cmd/fosterd/sdnotify.go): its unit must say so,
// or systemd would count it started before it serves and never run the
// watchdog that restarts a hung fosterd.
func TestFosterdUnitUsesNotifyAndWatchdog(t *testing.T) {
	b, err := os.ReadFile("fosterd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "NotifyAccess=main", "WatchdogSec="} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want)).Match(b) {
			t.Errorf("fosterd.service lacks %s", want)
		}
	}
}
