package client_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Renewal under broken clocks: a device whose wall clock reads 1970 (dead
// RTC) or 2099 decides renewal and expiry by fosterd's authenticated clock,
// or by its trusted clock (signed evidence) when fosterd is unreachable. It
// neither renews on every run (2099: "due" and "expired" by the wall clock)
// nor fails TLS, and a forced renewal still goes over mTLS.
func TestRenewalIgnoresBrokenWallClock(t *testing.T) {
	ctx := context.Background()
	for name, wall := range map[string]time.Time{
		"1970": time.Unix(0, 0),
		"2099": time.Date(2099, 6, 1, 0, 0, 0, 0, time.UTC),
	} {
		t.Run(name, func(t *testing.T) {
			srv := newEnv(t, false)
			d := newDevice(t, srv)
			d.now = func() time.Time { return wall }
			publish(t, srv, model, "1.0.1", 1, []byte("v1"))

			for i := range 3 {
				res, err := d.agent().Renew(ctx, false)
				if err != nil || res.Renewed {
					t.Fatalf("renewal check %d: %+v, %v\n%s", i, res, err, d.logs)
				}
				if res.DueAt.Before(time.Now()) {
					t.Fatalf("a fresh certificate is reported due at %v", res.DueAt)
				}
			}
			rep, err := d.runOnce()
			if err != nil || rep.Installed == nil {
				t.Fatalf("run under a %s clock: %+v, %v\n%s", name, rep, err, d.logs)
			}
			if _, err := d.runOnce(); err != nil {
				t.Fatalf("second run: %v\n%s", err, d.logs)
			}
			var renewals, expired int
			srv.Lock(func() { renewals, expired = srv.Renewals, srv.ExpiredRenewals })
			if renewals != 0 || expired != 0 {
				t.Fatalf("a fresh certificate was renewed %d times (+%d after expiry) under a %s clock", renewals, expired, name)
			}

			res, err := d.agent().Renew(ctx, true)
			if err != nil || !res.Renewed || res.AfterExpiry {
				t.Fatalf("forced renewal: %+v, %v\n%s", res, err, d.logs)
			}
			srv.Lock(func() { renewals, expired = srv.Renewals, srv.ExpiredRenewals })
			if renewals != 1 || expired != 0 {
				t.Fatalf("forced renewal: %d over mTLS, %d after expiry; want 1, 0", renewals, expired)
			}

			// fosterd unreachable: the trusted clock decides, not the wall clock.
			pointAgentAt(t, d.dir, unreachableURL(t))
			res, err = d.agent().Renew(ctx, false)
			if err != nil || res.Renewed {
				t.Fatalf("renewal check with fosterd unreachable: %+v, %v\n%s", res, err, d.logs)
			}
		})
	}
}

func unreachableURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "https://" + addr
}

func pointAgentAt(t *testing.T, dir, server string) {
	t.Helper()
	p := filepath.Join(dir, "agent.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["server"] = server
	b, _ = json.Marshal(cfg)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
