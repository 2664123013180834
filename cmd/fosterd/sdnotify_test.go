package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifySocket listens where systemd would (NOTIFY_SOCKET) and returns the
// datagrams fosterd sends.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func countWatchdogPings(ch <-chan string, d time.Duration) int {
	n := 0
	end := time.After(d)
	for {
		select {
		case m := <-ch:
			if strings.Contains(m, "WATCHDOG=1") {
				n++
			}
		case <-end:
			return n
		}
	}
}

// A fosterd that answers /healthz over TLS pings the watchdog; one whose
// listener accepts connections but never answers (a hung accept loop or
// handler) does not, so systemd restarts it.
func TestWatchdogPingsOnlyWhileTheServerAnswers(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("answering", func(t *testing.T) {
		ch := notifySocket(t)
		t.Setenv("WATCHDOG_USEC", "400000")
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
			}
		}))
		defer srv.Close()
		pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { runWatchdog(ctx, srv.Listener.Addr(), pool, log); close(done) }()
		if n := countWatchdogPings(ch, 3*time.Second); n < 2 {
			t.Errorf("%d WATCHDOG=1 in 3 s with a 400 ms watchdog, want several", n)
		}
		cancel()
		<-done
	})
	t.Run("hung", func(t *testing.T) {
		ch := notifySocket(t)
		t.Setenv("WATCHDOG_USEC", "400000")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { // accepts, never speaks TLS
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		defer srv.Close()
		pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { runWatchdog(ctx, ln.Addr(), pool, log); close(done) }()
		if n := countWatchdogPings(ch, 3*time.Second); n != 0 {
			t.Errorf("%d WATCHDOG=1 from a server that never answers, want none", n)
		}
		cancel()
		<-done
	})
	t.Run("wrong certificate", func(t *testing.T) {
		// Something else bound the address (or a stale listener): a server
		// whose certificate does not chain to fosterd's CA is not fosterd.
		ch := notifySocket(t)
		t.Setenv("WATCHDOG_USEC", "400000")
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		defer srv.Close()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { runWatchdog(ctx, srv.Listener.Addr(), nil, log); close(done) }()
		if n := countWatchdogPings(ch, 2*time.Second); n != 0 {
			t.Errorf("%d WATCHDOG=1 from a server with an untrusted certificate, want none", n)
		}
		cancel()
		<-done
	})
}

func TestDialableAddressOfAWildcardListener(t *testing.T) {
	for in, want := range map[string]string{"0.0.0.0:8443": "127.0.0.1:8443", "[::]:8443": "127.0.0.1:8443", "10.0.0.5:443": "10.0.0.5:443"} {
		a, err := net.ResolveTCPAddr("tcp", in)
		if err != nil {
			t.Fatal(err)
		}
		if got := dialable(a); got != want {
			t.Errorf("dialable(%s) = %s, want %s", in, got, want)
		}
	}
}
