package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

// TestFleetReport builds a small fleet with a controlled clock: two
// releases, devices on each, one never updated and silent, one revoked.
func TestFleetReport(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := t0
		d.SetClock(func() time.Time { return now })

		enroll := func(serial string) string {
			t.Helper()
			d.CreateToken(ctx, store.Token{Hash: "h-" + serial, Serial: serial, Model: "edge-gw", ExpiresAt: now.Add(time.Hour)})
			dv, err := enrollToken(ctx, d, "h-"+serial, serial, "edge-gw")
			if err != nil {
				t.Fatal(err)
			}
			return dv.ID
		}
		var ids []string
		for i := range 5 {
			ids = append(ids, enroll(fmt.Sprintf("SN-%d", i)))
		}
		r1 := store.Release{Model: "edge-gw", Version: "1.0.0", Counter: 1, TargetPath: "edge-gw/1.0.0/fw.bin", SHA256: "aa", Length: 1}
		if _, err := d.AddRelease(ctx, r1, nil); err != nil {
			t.Fatal(err)
		}
		seq := map[string]int64{}
		attest := func(id string, rel store.Release, outcome string, after time.Duration) {
			t.Helper()
			now = rel.CreatedAt.Add(after)
			seq[id]++
			if _, err := d.AddAttestation(ctx, store.Attestation{DeviceID: id, Sequence: seq[id], Outcome: outcome, TargetPath: rel.TargetPath, SHA256: rel.SHA256, Version: rel.Version, Counter: rel.Counter, Envelope: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
		}
		r1.CreatedAt = t0
		for i, id := range ids[:4] {
			attest(id, r1, "committed", time.Duration(i+1)*time.Hour) // 1h, 2h, 3h, 4h
		}
		now = t0.Add(10 * 24 * time.Hour)
		r2 := store.Release{Model: "edge-gw", Version: "1.1.0", Counter: 2, TargetPath: "edge-gw/1.1.0/fw.bin", SHA256: "bb", Length: 1}
		if _, err := d.AddRelease(ctx, r2, nil); err != nil {
			t.Fatal(err)
		}
		r2.CreatedAt = now
		attest(ids[0], r2, "failed", 30*time.Minute)
		attest(ids[0], r2, "committed", time.Hour)
		attest(ids[0], r2, "committed", 2*time.Hour) // a re-attestation does not count twice
		attest(ids[1], r2, "committed", 5*time.Hour)
		if _, err := d.RevokeDevice(ctx, ids[3], 1, "stolen", "admin"); err != nil {
			t.Fatal(err)
		}
		now = t0.Add(40 * 24 * time.Hour)

		rep, err := d.FleetReport(ctx, "edge-gw", 30)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Releases) != 2 {
			t.Fatalf("releases: %+v", rep.Releases)
		}
		v1, v2 := rep.Releases[0], rep.Releases[1]
		if v1.Version != "1.0.0" || v1.Latest || v1.Installed != 1 || v1.Committed != 4 {
			t.Fatalf("1.0.0: %+v", v1)
		}
		if p := v1.TimeToPatch; p == nil || p.P50 != 2*3600 || p.P90 != 4*3600 || p.Max != 4*3600 {
			t.Fatalf("1.0.0 time to patch: %+v", p)
		}
		if v2.Version != "1.1.0" || !v2.Latest || v2.Installed != 2 || v2.Committed != 2 || fmt.Sprint(v2.Devices) != fmt.Sprint(ids[:2]) {
			t.Fatalf("1.1.0: %+v", v2)
		}
		if p := v2.TimeToPatch; p == nil || p.P50 != 3600 || p.P99 != 5*3600 {
			t.Fatalf("1.1.0 time to patch: %+v", p)
		}
		// Behind: SN-2 (on 1.0.0) and SN-4 (never installed); SN-3 is revoked.
		if len(rep.Behind) != 2 || rep.Behind[0].Serial != "SN-2" || rep.Behind[0].ReleasesBehind != 1 ||
			rep.Behind[1].Serial != "SN-4" || rep.Behind[1].ReleasesBehind != 2 || rep.Behind[1].LatestVersion != "1.1.0" {
			t.Fatalf("behind: %+v", rep.Behind)
		}
		// Stale for 30 days: SN-2 (last heard at day 0) and SN-4 (enrolled at day 0, never attested).
		if len(rep.Stale) != 2 || rep.Stale[0].Serial != "SN-2" || rep.Stale[1].Serial != "SN-4" {
			t.Fatalf("stale: %+v", rep.Stale)
		}
		// Revoked: SN-3; coverage: SN-1 and SN-2 committed 1.1.0 before the window, so every day counts 2.
		if rep.Active != 4 || rep.RevokedCount != 1 || len(rep.Revoked) != 1 || rep.Revoked[0].Serial != "SN-3" {
			t.Fatalf("active %d, revoked %d %+v", rep.Active, rep.RevokedCount, rep.Revoked)
		}
		if len(rep.Coverage) != store.CoverageDays || rep.Coverage[0].Patched != 2 || rep.Coverage[len(rep.Coverage)-1].Patched != 2 ||
			!rep.Coverage[len(rep.Coverage)-1].Day.Equal(now) {
			t.Fatalf("coverage: %+v", rep.Coverage)
		}
		if rep, _ := d.FleetReport(ctx, "other", 30); len(rep.Releases) != 0 || len(rep.Behind) != 0 {
			t.Fatalf("other model: %+v", rep)
		}
		if _, err := d.FleetReport(context.Background(), "", -1); err == nil {
			t.Fatal("negative stale days accepted")
		}
	})
}
