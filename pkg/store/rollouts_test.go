package store_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

func newRollout(id, version string, groups ...string) store.Rollout {
	return store.Rollout{
		ID: id, Model: "edge-gw", Version: version, TargetPath: "edge-gw/" + version + "/fw.bin", Groups: groups,
		Waves: []int{1, 10, 100}, WaveInterval: time.Hour, MaxFailureRate: 0.05, MinSample: 20,
		SilenceDeadline: 24 * time.Hour, Seed: "00", State: store.RolloutRunning,
		WaveStarts: []time.Time{time.Unix(100, 0).UTC()}, CreatedBy: "admin",
	}
}

func TestRolloutRoundTripsAndOneActivePerModelAndGroups(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		r, err := d.CreateRollout(ctx, newRollout("r1", "1.0.0", "beta", "alpha", "beta"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.GetRollout(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Groups, []string{"alpha", "beta"}) || !slices.Equal(got.Waves, r.Waves) || got.Revision != 1 ||
			got.WaveInterval != time.Hour || got.MaxFailureRate != 0.05 || !got.WaveStartedAt().Equal(time.Unix(100, 0)) {
			t.Fatalf("round trip: %+v", got)
		}
		// The same group set (in another order): refused while r1 is active.
		if _, err := d.CreateRollout(ctx, newRollout("r2", "1.1.0", "alpha", "beta")); !errors.Is(err, store.ErrRolloutActive) {
			t.Fatalf("second active rollout for the same groups: %v", err)
		}
		// The same release for other groups: refused too (one set of terms per target).
		if _, err := d.CreateRollout(ctx, newRollout("r3", "1.0.0", "gamma")); !errors.Is(err, store.ErrRolloutActive) {
			t.Fatalf("second active rollout of one release: %v", err)
		}
		if _, err := d.CreateRollout(ctx, newRollout("r4", "1.1.0", "gamma")); err != nil {
			t.Fatalf("other groups, other release: %v", err)
		}
		if _, err := d.CreateRollout(ctx, newRollout("r1", "2.0.0", "delta")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate id: %v", err)
		}
		// Once r1 is aborted, its group set is free again.
		if _, err := d.UpdateRollout(ctx, r, func(cur store.Rollout) (store.Rollout, error) {
			cur.State = store.RolloutAborted
			return cur, nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateRollout(ctx, newRollout("r5", "1.2.0", "alpha", "beta")); err != nil {
			t.Fatalf("after abort: %v", err)
		}
		list, err := d.ListRollouts(ctx, store.RolloutFilter{Model: "edge-gw", Active: true, Limit: 10})
		if err != nil || len(list) != 2 {
			t.Fatalf("active rollouts: %v %v", list, err)
		}
		if _, err := d.ListRollouts(ctx, store.RolloutFilter{Limit: store.MaxRolloutPage + 1}); err == nil {
			t.Fatal("unbounded page accepted")
		}
	})
}

func TestRolloutBadInputChangesNothing(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		bad := map[string]func(*store.Rollout){
			"id":           func(r *store.Rollout) { r.ID = "../x" },
			"group":        func(r *store.Rollout) { r.Groups = []string{"a b"} },
			"no waves":     func(r *store.Rollout) { r.Waves = nil },
			"many waves":   func(r *store.Rollout) { r.Waves = make([]int, store.MaxWaves+1) },
			"state":        func(r *store.Rollout) { r.State = "exploded" },
			"not active":   func(r *store.Rollout) { r.State = store.RolloutHalted },
			"wave index":   func(r *store.Rollout) { r.Wave = 3 },
			"halt indices": func(r *store.Rollout) { r.HaltIndices = make([]int64, store.MaxHaltIndices+1) },
		}
		for name, mutate := range bad {
			r := newRollout("r1", "1.0.0")
			mutate(&r)
			if _, err := d.CreateRollout(ctx, r); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if list, _ := d.ListRollouts(ctx, store.RolloutFilter{Limit: 10}); len(list) != 0 {
			t.Fatalf("bad input recorded: %v", list)
		}
		r, err := d.CreateRollout(ctx, newRollout("r1", "1.0.0"))
		if err != nil {
			t.Fatal(err)
		}
		// A halted rollout cannot become active again through the store either.
		halted, err := d.UpdateRollout(ctx, r, func(cur store.Rollout) (store.Rollout, error) { cur.State = store.RolloutHalted; return cur, nil })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.UpdateRollout(ctx, halted, func(cur store.Rollout) (store.Rollout, error) { cur.State = store.RolloutRunning; return cur, nil }); err == nil {
			t.Fatal("halted rollout resumed")
		}
		// apply failing writes nothing.
		boom := errors.New("publish failed")
		if _, err := d.UpdateRollout(ctx, halted, func(cur store.Rollout) (store.Rollout, error) { cur.State = store.RolloutAborted; return cur, boom }); !errors.Is(err, boom) {
			t.Fatal(err)
		}
		if got, _ := d.GetRollout(ctx, "r1"); got.State != store.RolloutHalted || got.Revision != halted.Revision {
			t.Fatalf("failed apply changed the row: %+v", got)
		}
	})
}

// TestConcurrentPromotesAdvanceOnce: two replicas that decided the same
// promotion from the same row apply it once.
func TestConcurrentPromotesAdvanceOnce(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		r, err := d.CreateRollout(ctx, newRollout("r1", "1.0.0"))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		applied, changed := 0, 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := d.UpdateRollout(ctx, r, func(cur store.Rollout) (store.Rollout, error) {
					mu.Lock()
					applied++ // the publish: must run once
					mu.Unlock()
					cur.Wave++
					cur.WaveStarts = append(cur.WaveStarts, time.Now())
					return cur, nil
				})
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, store.ErrRolloutChanged) {
					changed++
				} else if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		got, _ := d.GetRollout(ctx, "r1")
		if applied != 1 || changed != 7 || got.Wave != 1 || got.Revision != 2 {
			t.Fatalf("applied %d, changed %d, row %+v", applied, changed, got)
		}
	})
}

func TestTagsGroupsAndFleetOutcomes(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.CreateModel(ctx, store.Model{Name: "cam"}); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i, m := range []string{"edge-gw", "edge-gw", "edge-gw", "cam"} {
			serial := fmt.Sprintf("SN-%d", i)
			d.CreateToken(ctx, store.Token{Hash: "h-" + serial, Serial: serial, Model: m, ExpiresAt: time.Now().Add(time.Hour)})
			dv, err := enrollToken(ctx, d, "h-"+serial, serial, m)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, dv.ID)
		}
		if err := d.TagDevice(ctx, ids[0], []string{"lab", "eu"}); err != nil {
			t.Fatal(err)
		}
		if err := d.TagDevice(ctx, ids[1], []string{"eu"}); err != nil {
			t.Fatal(err)
		}
		if err := d.TagDevice(ctx, "urn:foster:device:edge-gw:nope", []string{"eu"}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
		if err := d.TagDevice(ctx, ids[0], []string{"bad tag"}); err == nil {
			t.Fatal("invalid tag accepted")
		}
		many := make([]string, store.MaxDeviceTags)
		for i := range many {
			many[i] = fmt.Sprintf("t%d", i)
		}
		if err := d.TagDevice(ctx, ids[0], many); err == nil {
			t.Fatal("more than MaxDeviceTags tags accepted")
		}
		if tags, _ := d.DeviceTags(ctx, ids[0]); !slices.Equal(tags, []string{"eu", "lab"}) {
			t.Fatalf("tags after refused tagging: %v", tags)
		}
		if _, err := d.CreateGroup(ctx, store.Group{Name: "europe", Kind: store.GroupTag, Tag: "eu"}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateGroup(ctx, store.Group{Name: "pilot", Kind: store.GroupStatic, Serials: []string{"SN-2", "SN-3", "SN-2"}}); err != nil {
			t.Fatal(err)
		}
		for name, g := range map[string]store.Group{
			"duplicate":       {Name: "europe", Kind: store.GroupTag, Tag: "x"},
			"no kind":         {Name: "g", Tag: "x"},
			"static no list":  {Name: "g", Kind: store.GroupStatic},
			"tag with serial": {Name: "g", Kind: store.GroupTag, Tag: "x", Serials: []string{"a"}},
			"bad serial":      {Name: "g", Kind: store.GroupStatic, Serials: []string{"a/b"}},
		} {
			if _, err := d.CreateGroup(ctx, g); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if g, err := d.GetGroup(ctx, "pilot"); err != nil || g.SerialCount != 2 {
			t.Fatalf("pilot: %+v %v", g, err)
		}
		groups, err := d.DeviceGroups(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{ids[0]: {"europe"}, ids[1]: {"europe"}, ids[2]: {"pilot"}, ids[3]: {"pilot"}}
		for id, w := range want {
			if !slices.Equal(groups[id], w) {
				t.Errorf("%s: groups %v, want %v", id, groups[id], w)
			}
		}
		if tagged, _ := d.DevicesWithTag(ctx, "eu", "", 10); !slices.Equal(tagged, ids[:2]) {
			t.Fatalf("devices with tag: %v", tagged)
		}

		rel := store.Release{Model: "edge-gw", Version: "1.0.0", Counter: 1, TargetPath: "edge-gw/1.0.0/fw.bin", SHA256: "aa", Length: 1}
		if _, err := d.AddRelease(ctx, rel, nil); err != nil {
			t.Fatal(err)
		}
		since := time.Now().Add(-time.Minute)
		seq := int64(0)
		attest := func(id, outcome string, leaf int64) {
			seq++
			if _, err := d.AddAttestation(ctx, store.Attestation{DeviceID: id, Sequence: seq, Outcome: outcome, TargetPath: rel.TargetPath, SHA256: "aa", Version: "1.0.0", Counter: 1, Envelope: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
		}
		attest(ids[0], "committed", -1)
		attest(ids[1], "rolled-back", -1)
		attest(ids[1], "committed", -1) // failed once: counts as failed
		o, err := d.TargetOutcomes(ctx, rel.TargetPath, since, 10)
		if err != nil || o.Succeeded != 1 || o.Failed != 1 {
			t.Fatalf("outcomes %+v %v", o, err)
		}
		if o, _ := d.TargetOutcomes(ctx, rel.TargetPath, time.Now().Add(time.Hour), 10); o.Succeeded+o.Failed != 0 {
			t.Fatalf("attestations before since counted: %+v", o)
		}
		fleet, err := d.PageFleet(ctx, store.FleetQuery{Model: "edge-gw", Target: rel.TargetPath, Since: since, Limit: 2})
		if err != nil || len(fleet) != 2 || !fleet[0].Attested || fleet[0].Groups[0] != "europe" {
			t.Fatalf("fleet page 1: %+v %v", fleet, err)
		}
		fleet, err = d.PageFleet(ctx, store.FleetQuery{Model: "edge-gw", Target: rel.TargetPath, Since: since, AfterID: fleet[1].ID, Limit: 2})
		if err != nil || len(fleet) != 1 || fleet[0].ID != ids[2] || fleet[0].Attested {
			t.Fatalf("fleet page 2: %+v %v", fleet, err)
		}
		if a, err := d.TargetAttesters(ctx, rel.TargetPath, since); err != nil || len(a) != 2 || !a[ids[0]] || !a[ids[1]] {
			t.Fatalf("attesters %v %v, want %s and %s", a, err, ids[0], ids[1])
		}
		if a, _ := d.TargetAttesters(ctx, rel.TargetPath, time.Now().Add(time.Hour)); len(a) != 0 {
			t.Fatalf("attestations before since read as attesters: %v", a)
		}
		fleet, err = d.PageFleet(ctx, store.FleetQuery{Model: "edge-gw", NoGroups: true, Limit: 3})
		if err != nil || len(fleet) != 3 || fleet[0].Attested || fleet[0].Groups != nil {
			t.Fatalf("fleet without target or groups: %+v %v", fleet, err)
		}
		if err := d.UntagDevice(ctx, ids[0], []string{"eu"}); err != nil {
			t.Fatal(err)
		}
		if err := d.DeleteGroup(ctx, "pilot"); err != nil {
			t.Fatal(err)
		}
		groups, _ = d.DeviceGroups(ctx, ids)
		if len(groups[ids[0]]) != 0 || len(groups[ids[2]]) != 0 || !slices.Equal(groups[ids[1]], []string{"europe"}) {
			t.Fatalf("after untag and delete: %v", groups)
		}
	})
}
