package server

import (
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// TestThrottleTableStaysBoundedUnderManyAddresses: failures from 10,000
// addresses (a botnet, or one IPv6 subscriber cycling its /64) never grow
// the table past MaxAddresses, and entries whose bucket refilled are
// dropped.
func TestThrottleTableStaysBoundedUnderManyAddresses(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	th := newThrottle(Throttle{Burst: 2, Every: time.Second, MaxAddresses: 100}, newMetrics(), slog.New(slog.DiscardHandler))
	th.now = func() time.Time { return now }
	for i := range 10_000 {
		th.fail(fmt.Sprintf("198.51.%d.%d", i/256, i%256))
		if n := th.size(); n > 100 {
			t.Fatalf("after %d addresses the table holds %d", i+1, n)
		}
	}
	// An hour later every bucket is full again: the next failure's sweep
	// drops them all.
	now = now.Add(time.Hour)
	th.fail("203.0.113.1")
	if n := th.size(); n != 1 {
		t.Fatalf("after an hour the table holds %d entries, want only the new one", n)
	}
}

// TestThrottleKeysIPv6By64: addresses of one IPv6 /64 share a bucket;
// IPv4-mapped addresses count as IPv4.
func TestThrottleKeysIPv6By64(t *testing.T) {
	tests := []struct{ remote, want string }{
		{"192.0.2.7:4431", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:4431", "192.0.2.7"},
		{"[2001:db8:1:2::1]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff:ffff:ffff:ffff]:1", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:1", "fe80::/64"},
		{"not-an-address", "not-an-address"},
	}
	for _, tt := range tests {
		if got := clientKey(tt.remote); got != tt.want {
			t.Errorf("clientKey(%q) = %q, want %q", tt.remote, got, tt.want)
		}
	}
}

// TestThrottleChargesParallelFailures: failures that were in flight
// together are all charged, so opening many requests at once earns no
// extra guesses: the wait grows with the debt.
func TestThrottleChargesParallelFailures(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	th := newThrottle(Throttle{Burst: 5, Every: time.Second, MaxAddresses: 10}, newMetrics(), slog.New(slog.DiscardHandler))
	th.now = func() time.Time { return now }
	// 25 requests admitted together (none had failed yet), then all fail.
	for range 25 {
		if _, ok := th.admit("192.0.2.1"); !ok {
			t.Fatal("refused before any failure")
		}
	}
	for range 25 {
		th.fail("192.0.2.1")
	}
	wait, ok := th.admit("192.0.2.1")
	if ok || wait < 20*time.Second || wait > 21*time.Second {
		t.Fatalf("after 25 parallel failures with burst 5: admitted %v, wait %v, want about 21 s", ok, wait)
	}
	now = now.Add(21 * time.Second)
	if _, ok := th.admit("192.0.2.1"); !ok {
		t.Fatal("still refused after paying the debt")
	}
}
