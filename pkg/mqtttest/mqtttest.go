// Package mqtttest gives tests an MQTT broker: the Mosquitto already
// listening on 127.0.0.1:1883 when one answers, else a private `mosquitto`
// started on a free port for the test, else the test is skipped (failed
// when CI=true, where a broker must be available).
package mqtttest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// SharedAddr is where these machines run Mosquitto.
const SharedAddr = "127.0.0.1:1883"

// Broker returns the address (host:port) of a running MQTT broker. Tests
// sharing the machine's broker must use topics or models of their own.
func Broker(t testing.TB) string {
	t.Helper()
	if answers(SharedAddr, time.Second) {
		return SharedAddr
	}
	return Start(t)
}

// Start starts a private Mosquitto for the test on a free port and returns
// its address; it is stopped when the test ends.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		msg := "no MQTT broker: nothing answers on " + SharedAddr + " and no mosquitto binary is installed (apt-get install mosquitto)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		conf := filepath.Join(t.TempDir(), "mosquitto.conf")
		body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-c", conf)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting mosquitto: %v", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		stop := func() {
			cmd.Process.Kill()
			<-done
		}
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-done: // exited: the port was taken meanwhile, or a bad config
				deadline = time.Time{}
				continue
			default:
			}
			if answers(addr, 200*time.Millisecond) {
				t.Cleanup(stop)
				return addr
			}
			time.Sleep(50 * time.Millisecond)
		}
		stop()
		if attempt == 2 {
			t.Fatalf("mosquitto did not start listening on %s:\n%s", addr, out.String())
		}
	}
}

// Unreachable returns the URL of a port where no broker listens.
func Unreachable(t testing.TB) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("tcp://127.0.0.1:%d", port)
}

func answers(addr string, timeout time.Duration) bool {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
