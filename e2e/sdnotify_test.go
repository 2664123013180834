package e2e

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFosterdTellsSystemdWhenItServesAndIsAlive runs the real fosterd as
// deploy/systemd/fosterd.service does (Type=notify, WatchdogSec): systemd's
// notification socket receives READY=1 once fosterd answers, then WATCHDOG=1
// pings. Without READY=1 systemd would fail the unit's start after
// TimeoutStartSec; without pings it would kill a healthy fosterd.
func TestFosterdTellsSystemdWhenItServesAndIsAlive(t *testing.T) {
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	// A short socket path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "n.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	e.StartDaemonWith(nil, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=1000000")
	ready, pings := false, 0
	deadline := time.After(90 * time.Second)
	for !ready || pings < 2 {
		select {
		case m := <-msgs:
			if strings.Contains(m, "READY=1") {
				ready = true
			}
			if strings.Contains(m, "WATCHDOG=1") {
				if !ready {
					t.Fatalf("WATCHDOG=1 before READY=1")
				}
				pings++
			}
		case <-deadline:
			t.Fatalf("after 90 s: READY=1 seen %v, %d WATCHDOG=1 pings (want 2)", ready, pings)
		}
	}
}
