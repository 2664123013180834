package instance

import (
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/tufrepo"
)

func TestTUFLifetimesDefaultsAndOverrides(t *testing.T) {
	var o tufrepo.Options
	if err := (TUFLifetimes{}).apply(&o); err != nil {
		t.Fatal(err)
	}
	if o.TargetsExpiry != 365*24*time.Hour || o.DelegatedExpiry != o.TargetsExpiry || o.SnapshotExpiry != 7*24*time.Hour || o.TimestampExpiry != 24*time.Hour {
		t.Fatalf("defaults: %+v", o)
	}
	o = tufrepo.Options{}
	if err := (TUFLifetimes{Targets: "720h", Delegated: "48h", Snapshot: "12h", Timestamp: "5m"}).apply(&o); err != nil {
		t.Fatal(err)
	}
	if o.TargetsExpiry != 720*time.Hour || o.DelegatedExpiry != 48*time.Hour || o.SnapshotExpiry != 12*time.Hour || o.TimestampExpiry != 5*time.Minute {
		t.Fatalf("overrides: %+v", o)
	}
}

func TestTUFLifetimesOutOfBoundsAreRefused(t *testing.T) {
	for _, c := range []struct {
		l    TUFLifetimes
		want string
	}{
		{TUFLifetimes{Timestamp: "1m"}, "tuf_lifetimes.timestamp 1m: want between 5m0s"},
		{TUFLifetimes{Timestamp: "0s"}, "tuf_lifetimes.timestamp 0s"},
		{TUFLifetimes{Timestamp: "-1h"}, "tuf_lifetimes.timestamp -1h"},
		{TUFLifetimes{Timestamp: "a day"}, `tuf_lifetimes.timestamp "a day": want a Go duration`},
		{TUFLifetimes{Targets: "100000h"}, "tuf_lifetimes.targets 100000h: want between"},
		{TUFLifetimes{Timestamp: "200h"}, "timestamp lifetime 200h0m0s is longer than snapshot lifetime 168h0m0s"},
		{TUFLifetimes{Snapshot: "12h"}, "timestamp lifetime 24h0m0s is longer than snapshot lifetime 12h0m0s"},
		{TUFLifetimes{Targets: "100h"}, "snapshot lifetime 168h0m0s is longer than targets lifetime 100h0m0s"},
		{TUFLifetimes{Delegated: "24h"}, "snapshot lifetime 168h0m0s is longer than delegated lifetime 24h0m0s"},
		// delegated defaults to targets, so a short targets shortens both
		{TUFLifetimes{Targets: "24h", Snapshot: "24h", Timestamp: "1h"}, ""},
	} {
		var o tufrepo.Options
		err := c.l.apply(&o)
		if c.want == "" {
			if err != nil || o.DelegatedExpiry != 24*time.Hour {
				t.Errorf("%+v: %v, delegated %s", c.l, err, o.DelegatedExpiry)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.l, err, c.want)
		}
	}
}

// The refresh loop re-signs a quarter of the timestamp lifetime ahead and
// runs four times per margin, so a short timestamp never lapses; the
// default schedule is unchanged (hourly, 6 h ahead).
func TestRefreshScheduleFollowsTimestampLifetime(t *testing.T) {
	for _, c := range []struct{ ts, interval, margin time.Duration }{
		{24 * time.Hour, time.Hour, 6 * time.Hour},
		{7 * 24 * time.Hour, time.Hour, 6 * time.Hour},
		{2 * time.Hour, 7*time.Minute + 30*time.Second, 30 * time.Minute},
		{MinTimestampLifetime, 18750 * time.Millisecond, 75 * time.Second},
	} {
		interval, margin := refreshSchedule(c.ts)
		if interval != c.interval || margin != c.margin {
			t.Errorf("timestamp %s: every %s, margin %s; want %s, %s", c.ts, interval, margin, c.interval, c.margin)
		}
		// tufrepo.Repo.Refresh refuses a margin that is not below the timestamp lifetime.
		if margin >= c.ts || interval >= margin {
			t.Errorf("timestamp %s: margin %s / interval %s would let it lapse", c.ts, margin, interval)
		}
	}
}
