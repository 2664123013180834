package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// seedSmallFleet: three models with four releases each, 1,500 devices and
// 6,000 attestations from storetest.SeedFleet, plus a clone attempt through
// the live enrollment path.
func seedSmallFleet(t *testing.T, d *store.DB) (context.Context, *storetest.Fleet, time.Time) {
	t.Helper()
	ctx := context.Background()
	for _, m := range []string{"cam", "edge-gw", "meter"} {
		if _, err := d.CreateModel(ctx, store.Model{Name: m}); err != nil {
			t.Fatal(err)
		}
		for c := range 4 {
			if _, err := d.AddRelease(ctx, store.Release{Model: m, Version: fmt.Sprintf("1.%d.0", c), Counter: int64(c + 1),
				TargetPath: fmt.Sprintf("%s/1.%d.0/fw.bin", m, c), SHA256: "aa", Length: 1}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := time.Now().UTC()
	f, err := storetest.SeedFleet(ctx, d, storetest.FleetSpec{Devices: 1500, Attestations: 6000, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// SN-0000000 enrolled with its key (token "key-..."); another key is a clone.
	if err := d.CreateToken(ctx, store.Token{Hash: "h-clone", Serial: "SN-0000000", Model: modelOf(f.IDs[0]), ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-0000000", Model: modelOf(f.IDs[0]), KeySHA256: "another key", TokenHash: "h-clone"}, issuer("another key")); !errors.Is(err, store.ErrClone) {
		t.Fatalf("second key for SN-0000000: %v, want a clone refusal", err)
	}
	return ctx, f, now
}

func modelOf(urn string) string {
	var m string
	fmt.Sscanf(urn, "urn:foster:device:%s", &m)
	for i := range m {
		if m[i] == ':' {
			return m[:i]
		}
	}
	return m
}

// walk pages through a fleet list, failing on a device seen twice.
func walk(t *testing.T, d *store.DB, q store.FleetListQuery) []store.DeviceStatus {
	t.Helper()
	var out []store.DeviceStatus
	seen := map[string]bool{}
	for pages := 0; ; pages++ {
		p, err := d.PageFleetList(context.Background(), q)
		if err != nil {
			t.Fatalf("%s after %q: %v", q.List, q.After, err)
		}
		for _, ds := range p.Devices {
			if seen[ds.ID] {
				t.Fatalf("%s: %s on two pages", q.List, ds.ID)
			}
			seen[ds.ID] = true
		}
		out = append(out, p.Devices...)
		if p.Next == "" {
			return out
		}
		if pages > 1000 {
			t.Fatalf("%s: no end", q.List)
		}
		q.After = p.Next
	}
}

func ids(ds []store.DeviceStatus) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	slices.Sort(out)
	return out
}

// TestFleetSummaryAgreesWithTheFullReport: the fleet page's counts,
// coverage and paged lists (indexes and keyset pages) say what the full
// report (a walk over every device) says, for the whole fleet and per
// model, and the lists page through each device exactly once, in order.
func TestFleetSummaryAgreesWithTheFullReport(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx, f, now := seedSmallFleet(t, d)
		d.SetClock(func() time.Time { return now })
		for _, model := range []string{"", "edge-gw", "meter"} {
			rep, err := d.FleetReport(ctx, model, 30)
			if err != nil {
				t.Fatal(err)
			}
			s, err := d.FleetSummary(ctx, model, 30, 20)
			if err != nil {
				t.Fatal(err)
			}
			onLatest := 0
			installed := map[string]int{}
			for _, r := range rep.Releases {
				if r.Latest {
					onLatest += r.Installed
				}
				installed[fmt.Sprint(r.Model, r.Counter)] = r.Installed
			}
			if s.Active != rep.Active || s.OnLatest != onLatest || s.Behind != len(rep.Behind) || s.Silent != len(rep.Stale) || s.Revoked != rep.RevokedCount {
				t.Fatalf("model %q: summary active %d, on latest %d, behind %d, silent %d, revoked %d; report %d, %d, %d, %d, %d",
					model, s.Active, s.OnLatest, s.Behind, s.Silent, s.Revoked, rep.Active, onLatest, len(rep.Behind), len(rep.Stale), rep.RevokedCount)
			}
			if model == "" && (s.Active != f.Active || s.Revoked != f.Revoked || s.Behind != f.Behind() || s.Silent != f.Silent(now, 30) || s.Cloned != len(f.Cloned)+1) {
				t.Fatalf("summary: %d active, %d revoked, %d behind, %d silent, %d cloned; seeded %d, %d, %d, %d, %d and a live clone attempt",
					s.Active, s.Revoked, s.Behind, s.Silent, s.Cloned, f.Active, f.Revoked, f.Behind(), f.Silent(now, 30), len(f.Cloned))
			}
			for _, m := range s.Models {
				for _, v := range m.Versions {
					if v.Counter != 0 && v.Devices != installed[fmt.Sprint(m.Model, v.Counter)] {
						t.Fatalf("%s %s: %d devices, the report %d", m.Model, v.Version, v.Devices, installed[fmt.Sprint(m.Model, v.Counter)])
					}
				}
			}
			if !slices.EqualFunc(s.Coverage, rep.Coverage, func(a, b store.CoveragePoint) bool { return a.Day.Equal(b.Day) && a.Patched == b.Patched }) {
				t.Fatalf("model %q coverage:\nsummary %+v\nreport  %+v", model, s.Coverage, rep.Coverage)
			}

			q := store.FleetListQuery{Model: model, StaleDays: 30, Limit: 37}
			q.List = store.ListBehind
			behind := walk(t, d, q)
			if !slices.Equal(ids(behind), ids(rep.Behind)) || len(behind) == 0 {
				t.Fatalf("model %q: behind list of %d differs from the report's %d", model, len(behind), len(rep.Behind))
			}
			want := map[string]int{}
			for _, b := range rep.Behind {
				want[b.ID] = b.ReleasesBehind
			}
			if !slices.IsSortedFunc(behind, func(a, b store.DeviceStatus) int {
				if a.Model != b.Model {
					return cmpStr(a.Model, b.Model)
				}
				if a.InstalledCounter != b.InstalledCounter {
					return int(a.InstalledCounter - b.InstalledCounter)
				}
				if c := a.InstalledAt.Compare(b.InstalledAt); c != 0 {
					return c
				}
				return cmpStr(a.ID, b.ID)
			}) {
				t.Fatal("behind list not most behind first")
			}
			for _, b := range behind {
				if b.ReleasesBehind != want[b.ID] || b.LatestVersion == "" {
					t.Fatalf("%s: %d releases behind (latest %q), the report %d", b.ID, b.ReleasesBehind, b.LatestVersion, want[b.ID])
				}
			}
			q.List = store.ListSilent
			silent := walk(t, d, q)
			if !slices.Equal(ids(silent), ids(rep.Stale)) || len(silent) == 0 {
				t.Fatalf("model %q: silent list of %d differs from the report's %d", model, len(silent), len(rep.Stale))
			}
			q.List = store.ListRevoked
			revoked := walk(t, d, q)
			if !slices.Equal(ids(revoked), ids(rep.Revoked)) || len(revoked) == 0 {
				t.Fatalf("model %q: revoked list of %d differs from the report's %d", model, len(revoked), len(rep.Revoked))
			}
			if !slices.IsSortedFunc(revoked, func(a, b store.DeviceStatus) int { return b.RevokedAt.Compare(a.RevokedAt) }) {
				t.Fatal("revoked list not latest first")
			}
			q.List = store.ListCloned
			cloned := walk(t, d, q)
			if len(cloned) != s.Cloned {
				t.Fatalf("model %q: cloned list of %d, counted %d", model, len(cloned), s.Cloned)
			}
			for _, c := range cloned {
				if c.CloneAttempts < 1 || c.LastCloneAttempt.IsZero() || c.Status == "" || (model != "" && c.Model != model) {
					t.Fatalf("cloned %+v", c)
				}
			}
			if model == "" {
				wantCloned := append(slices.Clone(f.Cloned), f.IDs[0]) // the live attempt
				slices.Sort(wantCloned)
				if got := ids(cloned); !slices.Equal(got, slices.Compact(wantCloned)) {
					t.Fatalf("cloned %v, want %v", got, wantCloned)
				}
			}
			// The first pages are the summary's.
			for _, l := range store.FleetLists {
				q.List, q.Limit, q.After = l, 20, ""
				p, err := d.PageFleetList(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if got := s.Lists[l]; !slices.Equal(ids(got.Devices), ids(p.Devices)) || got.Next != p.Next {
					t.Fatalf("model %q: summary's %s page differs from PageFleetList's", model, l)
				}
			}
		}
	})
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestFleetListRefusesBadQueries: a forged cursor, an unknown list, a page
// size out of bounds are errors, not a scan.
func TestFleetListRefusesBadQueries(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		for name, q := range map[string]store.FleetListQuery{
			"forged cursor":    {List: store.ListBehind, Limit: 10, After: "not-a-cursor"},
			"cursor of json":   {List: store.ListRevoked, Limit: 10, After: "e30"}, // {}
			"oversized cursor": {List: store.ListSilent, Limit: 10, After: string(make([]byte, 2000))},
		} {
			if _, err := d.PageFleetList(ctx, q); !errors.Is(err, store.ErrBadCursor) {
				t.Errorf("%s: %v, want ErrBadCursor", name, err)
			}
		}
		for name, q := range map[string]store.FleetListQuery{
			"unknown list": {List: "everything", Limit: 10},
			"no limit":     {List: store.ListCloned},
			"huge page":    {List: store.ListCloned, Limit: store.MaxFleetListPage + 1},
			"stale < 0":    {List: store.ListSilent, Limit: 10, StaleDays: -1},
		} {
			if _, err := d.PageFleetList(ctx, q); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if _, err := d.FleetSummary(ctx, "", 30, 0); err == nil {
			t.Error("summary with lists of 0 accepted")
		}
	})
}

// TestInstalledAtIsWhenTheReleaseWasFirstCommitted: coverage counts a
// device from its first committed attestation of the release it runs; a
// re-attestation or a failed install of the next release does not move it.
func TestInstalledAtIsWhenTheReleaseWasFirstCommitted(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		now := t0
		d.SetClock(func() time.Time { return now })
		d.CreateToken(ctx, store.Token{Hash: "h", Serial: "SN-1", Model: "edge-gw", ExpiresAt: now.Add(time.Hour)})
		dev, err := enrollToken(ctx, d, "h", "SN-1", "edge-gw")
		if err != nil {
			t.Fatal(err)
		}
		var rels []store.Release
		for c := range 3 {
			r, err := d.AddRelease(ctx, store.Release{Model: "edge-gw", Version: fmt.Sprintf("1.%d.0", c), Counter: int64(c + 1), TargetPath: fmt.Sprintf("edge-gw/1.%d.0/fw.bin", c), SHA256: "aa", Length: 1}, nil)
			if err != nil {
				t.Fatal(err)
			}
			rels = append(rels, r)
		}
		seq := int64(0)
		attest := func(r store.Release, outcome string, at time.Time) {
			t.Helper()
			seq++
			now = at
			if _, err := d.AddAttestation(ctx, store.Attestation{DeviceID: dev.ID, Sequence: seq, Outcome: outcome, TargetPath: r.TargetPath, Version: r.Version, Counter: r.Counter, Envelope: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
		}
		installedAt := func() time.Time {
			t.Helper()
			p, err := d.PageFleetList(ctx, store.FleetListQuery{List: store.ListBehind, Limit: 10})
			if err != nil || len(p.Devices) != 1 {
				t.Fatalf("behind: %+v, %v", p, err)
			}
			return p.Devices[0].InstalledAt
		}
		attest(rels[0], "committed", t0.Add(time.Hour))
		attest(rels[0], "committed", t0.Add(2*time.Hour))
		if got := installedAt(); !got.Equal(t0.Add(time.Hour)) {
			t.Fatalf("after a re-attestation: installed at %v, want the first commit", got)
		}
		attest(rels[1], "committed", t0.Add(3*time.Hour))
		attest(rels[2], "rolled-back", t0.Add(4*time.Hour))
		if got := installedAt(); !got.Equal(t0.Add(3 * time.Hour)) {
			t.Fatalf("after 1.1.0 and a failed 1.2.0: installed at %v", got)
		}
		attest(rels[2], "committed", t0.Add(5*24*time.Hour))
		now = t0.Add(10 * 24 * time.Hour)
		s, err := d.FleetSummary(ctx, "", 30, 5)
		if err != nil {
			t.Fatal(err)
		}
		c := s.Coverage
		// Patched from the day of the commit (day 5 after t0) on.
		for _, p := range c {
			want := 0
			if !p.Day.Before(t0.Add(5 * 24 * time.Hour)) {
				want = 1
			}
			if p.Patched != want {
				t.Fatalf("coverage on %v: %d, want %d (%+v)", p.Day, p.Patched, want, c)
			}
		}
		if s.OnLatest != 1 || s.Behind != 0 {
			t.Fatalf("summary %+v", s)
		}
	})
}

// TestDeviceHistoryIsBounded: a clone that keeps trying, or a device that
// renews too often, cannot make the device's history unbounded: the newest
// MaxDeviceHistory come back, oldest first, with the total.
func TestDeviceHistoryIsBounded(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "h", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		dev, err := enrollToken(ctx, d, "h", "SN-1", "edge-gw")
		if err != nil {
			t.Fatal(err)
		}
		const n = store.MaxDeviceHistory + 5
		for i := range n {
			hash := fmt.Sprintf("h-clone-%d", i)
			d.CreateToken(ctx, store.Token{Hash: hash, Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
			if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: fmt.Sprintf("clone-%d", i), TokenHash: hash}, issuer("x")); !errors.Is(err, store.ErrClone) {
				t.Fatalf("clone attempt %d: %v", i, err)
			}
		}
		rs, total, err := d.RecentRefusals(ctx, dev.ID, store.MaxDeviceHistory)
		if err != nil || total != n || len(rs) != store.MaxDeviceHistory || rs[0].KeySHA256 != "clone-5" || rs[len(rs)-1].KeySHA256 != fmt.Sprintf("clone-%d", n-1) {
			t.Fatalf("recent refusals: %d of %d (%v), first %q", len(rs), total, err, rs[0].KeySHA256)
		}
		cs, total, err := d.RecentCertificates(ctx, dev.ID, 1)
		if err != nil || total != 1 || len(cs) != 1 || cs[0].Serial != dev.CertSerial {
			t.Fatalf("recent certificates: %+v of %d, %v", cs, total, err)
		}
		if _, _, err := d.RecentRefusals(ctx, dev.ID, store.MaxDeviceHistory+1); err == nil {
			t.Fatal("a page above the bound accepted")
		}
	})
}
