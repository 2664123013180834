package tufrepo_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/tufrepo"
)

// Each role is signed with its own lifetime: models/<model> and bins with
// DelegatedExpiry, top-level targets with TargetsExpiry, snapshot and
// timestamp with theirs.
func TestLifetimesPerRole(t *testing.T) {
	f := newFixture(t, nil)
	var err error
	f.opts.RecentTargets, f.opts.TargetsPerBin = 1, 2
	f.opts.TargetsExpiry, f.opts.DelegatedExpiry = 30*24*time.Hour, 3*24*time.Hour
	f.opts.SnapshotExpiry, f.opts.TimestampExpiry = 2*24*time.Hour, 2*time.Hour
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 4; i++ { // past RecentTargets: bins too
		f.add(fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i), []byte(fmt.Sprint("fw", i)), custom("edge-gw", fmt.Sprintf("1.0.%d", i), i))
	}
	now := f.clock.Now()
	near := func(what string, got time.Time, want time.Duration) {
		t.Helper()
		if d := got.Sub(now.Add(want)); d < -2*time.Second || d > 2*time.Second {
			t.Errorf("%s expires %s, want now + %s", what, got.UTC().Format(time.RFC3339), want)
		}
	}
	_, targets, snapshot, timestamp := f.repo.Expiries()
	near("targets", targets, f.opts.TargetsExpiry)
	near("snapshot", snapshot, f.opts.SnapshotExpiry)
	near("timestamp", timestamp, f.opts.TimestampExpiry)
	bins := 0
	for _, ri := range f.repo.Roles() {
		if ri.Name == "targets" {
			continue
		}
		exp, err := time.Parse(time.RFC3339, ri.Expires)
		if err != nil {
			t.Fatal(err)
		}
		near(ri.Name, exp, f.opts.DelegatedExpiry)
		if strings.Contains(ri.Name, "/bins-") {
			bins++
		}
	}
	if bins == 0 {
		t.Fatalf("no bins were signed: %+v", f.repo.Roles())
	}
}
