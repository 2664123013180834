package tufrepo_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
	"golang.org/x/mod/semver"
)

// rel is one release of the stepping-stone scenario.
type rel struct {
	counter int
	version string
	hw      []string
	minFrom string
	revoked bool
}

func (r *rel) path() string { return "edge-gw/" + r.version + "/fw.bin" }

func (r *rel) custom() string {
	c := map[string]any{"model": "edge-gw", "version": r.version, "release_counter": r.counter, "hardware_ids": r.hw}
	if r.hw == nil {
		c["hardware_ids"] = []string{}
	}
	if r.minFrom != "" {
		c["min_from_version"] = r.minFrom
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// installed is what a device runs: its hardware id ("" if unconfigured),
// and the version and release counter of its image.
type installed struct {
	hw      string
	version string
	counter int64
}

// agentPick does what the agent's selection (client/internal/tufclient:
// Criteria.Qualifies, Latest) does over what the agent loads, the model's
// role and not its bins: the qualifying target with the highest release
// counter, confirmed through go-tuf's delegation walk.
func agentPick(t *testing.T, up *updater.Updater, d installed) string {
	t.Helper()
	if _, err := up.GetTargetInfo("edge-gw/0/probe"); err == nil {
		t.Fatal("probe path found")
	}
	role := up.GetTrustedMetadataSet().Targets["models/edge-gw"]
	if role == nil {
		t.Fatal("model role not loaded")
	}
	best, bestN := "", int64(-1)
	for name, tf := range role.Signed.Targets {
		var c struct {
			Model       string   `json:"model"`
			Version     string   `json:"version"`
			Counter     int64    `json:"release_counter"`
			HardwareIDs []string `json:"hardware_ids"`
			MinFrom     string   `json:"min_from_version"`
		}
		if tf.Custom == nil || json.Unmarshal(*tf.Custom, &c) != nil {
			continue
		}
		switch {
		case c.Model != "edge-gw", c.Counter <= d.counter:
		case d.hw != "" && len(c.HardwareIDs) > 0 && !slices.Contains(c.HardwareIDs, d.hw):
		case c.MinFrom != "" && (d.version == "" || semver.Compare("v"+d.version, "v"+c.MinFrom) < 0):
		default:
			if c.Counter > bestN {
				best, bestN = name, c.Counter
			}
		}
	}
	if best != "" {
		if _, err := up.GetTargetInfo(best); err != nil {
			t.Fatalf("GetTargetInfo(%s): %v", best, err)
		}
	}
	return best
}

func modelRoleTargets(t *testing.T, r *tufrepo.Repo) []string {
	t.Helper()
	var out []string
	ts, err := r.Targets(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range ts {
		if _, role, _ := r.Lookup(tg.Path); role == "models/edge-gw" {
			out = append(out, tg.Path)
		}
	}
	return out
}

func roleVersions(r *tufrepo.Repo) map[string]int64 {
	out := map[string]int64{}
	for _, ri := range r.Roles() {
		out[ri.Name] = ri.Version
	}
	return out
}

// TestOrphanedDeviceFindsSteppingStoneBehindDeltas: a device offline for
// years, still on 1.0.0, comes back when the model's 32 newest releases are
// all deltas that need 2.0.0. Its way up, the newest full image (no
// min_from_version) for its hardware id, is older than all of them and
// stays in the model's role, the only targets role the agent loads, so the
// device takes it and then the newest release. A hardware id with its own,
// newer full image gets that one. Stock go-tuf clients still find every
// target through the delegations (each in exactly one role), a restarted
// repository keeps the layout, and a newer full image replaces the stone at
// the cost of one model role and at most two bins.
func TestOrphanedDeviceFindsSteppingStoneBehindDeltas(t *testing.T) {
	f := newFixture(t, nil)
	var err error
	f.opts.TargetsPerBin = 1 // many small bins: a move touches few of them
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	rels := []*rel{
		{counter: 1, version: "0.9.0"},                        // factory image
		{counter: 2, version: "1.0.0"},                        // full
		{counter: 3, version: "2.0.0"},                        // full, every hardware id
		{counter: 4, version: "2.0.1", hw: []string{"rev-b"}}, // full, rev-b only
	}
	for i := 5; i <= 8; i++ {
		rels = append(rels, &rel{counter: i, version: fmt.Sprintf("2.1.%d", i), minFrom: "1.0.0"})
	}
	for i := 9; i <= 40; i++ { // the 32 newest: deltas from 2.0.0 on
		rels = append(rels, &rel{counter: i, version: fmt.Sprintf("2.2.%d", i), minFrom: "2.0.0"})
	}
	byCounter := func(n int) *rel { return rels[n-1] }
	bodies := map[string][]byte{}
	for _, r := range rels {
		bodies[r.path()] = randomBytes(64+r.counter, uint64(r.counter))
		f.add(r.path(), bodies[r.path()], r.custom())
	}
	newest := byCounter(40).path()

	// The model role: the 32 newest and the two stepping stones.
	listed := modelRoleTargets(t, f.repo)
	for _, want := range []string{byCounter(3).path(), byCounter(4).path(), byCounter(9).path(), newest} {
		if !slices.Contains(listed, want) {
			t.Fatalf("model role lacks %s; lists %d targets", want, len(listed))
		}
	}
	if len(listed) != 34 {
		t.Fatalf("model role lists %d targets, want 34 (32 newest + 2 stepping stones)", len(listed))
	}
	if _, archived := countPrefix(f.repo, "models/edge-gw/bins-"); archived != 6 {
		t.Fatalf("bins hold %d targets, want 6 (each target in exactly one role)", archived)
	}

	dev := f.newDevice()
	up := dev.refresh()
	for _, tc := range []struct {
		name      string
		d         installed
		stone     *rel
		thenPicks string
	}{
		{"rev-a on 1.0.0", installed{"rev-a", "1.0.0", 2}, byCounter(3), newest},
		{"rev-b on 1.0.0", installed{"rev-b", "1.0.0", 2}, byCounter(4), newest},
		{"hardware id in no release, on 0.9.0", installed{"rev-z", "0.9.0", 1}, byCounter(3), newest},
		{"no hardware id configured, nothing installed", installed{"", "", 0}, byCounter(4), newest},
	} {
		got := agentPick(t, up, tc.d)
		if got != tc.stone.path() {
			t.Fatalf("%s: the agent's selection picks %q, want the stepping stone %s", tc.name, got, tc.stone.path())
		}
		after := installed{tc.d.hw, tc.stone.version, int64(tc.stone.counter)}
		if got := agentPick(t, up, after); got != tc.thenPicks {
			t.Fatalf("%s: after the stepping stone the agent picks %q, want %s", tc.name, got, tc.thenPicks)
		}
	}

	// Every target, stone, recent or archived, verifies and downloads with
	// a stock client walking the delegations.
	stockFindsAll := func(up *updater.Updater) {
		t.Helper()
		for _, r := range rels {
			data, err := dev.download(up, r.path())
			if r.revoked {
				if err == nil {
					t.Fatalf("revoked %s still offered", r.path())
				}
				continue
			}
			if err != nil || !bytes.Equal(data, bodies[r.path()]) {
				t.Fatalf("stock client, %s: %v", r.path(), err)
			}
		}
	}
	stockFindsAll(up)

	// A restarted repository (which lays the model out again from all its
	// bins on its first publish) keeps the stones through revocations.
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	revoke := func(r *rel) {
		t.Helper()
		if _, err := f.repo.RemoveTarget(t.Context(), r.path()); err != nil {
			t.Fatalf("RemoveTarget(%s): %v", r.path(), err)
		}
		r.revoked = true
	}
	// Revoking rev-b's own full image: rev-b falls back to the one for all.
	revoke(byCounter(4))
	up = dev.refresh()
	if got := agentPick(t, up, installed{"rev-b", "1.0.0", 2}); got != byCounter(3).path() {
		t.Fatalf("after revoking 2.0.1, rev-b picks %q, want 2.0.0", got)
	}
	if n := len(modelRoleTargets(t, f.repo)); n != 33 {
		t.Fatalf("model role lists %d targets, want 33", n)
	}
	// Revoking the stone for all: the next full image moves up from its bin.
	revoke(byCounter(3))
	if _, role, _ := f.repo.Lookup(byCounter(2).path()); role != "models/edge-gw" {
		t.Fatalf("after revoking 2.0.0, 1.0.0 is in %q, want the model role", role)
	}
	up = dev.refresh()
	if got := agentPick(t, up, installed{"rev-a", "0.9.0", 1}); got != byCounter(2).path() {
		t.Fatalf("after revoking 2.0.0, a device on 0.9.0 picks %q, want the next full image 1.0.0", got)
	}
	if n := len(modelRoleTargets(t, f.repo)); n != 33 {
		t.Fatalf("model role lists %d targets, want 33 (32 newest + 1.0.0)", n)
	}
	stockFindsAll(up)

	// A new full image for all replaces the stone: one model role and at
	// most two bins (the superseded stone's and the oldest recent release's)
	// are re-signed, never top-level targets.
	before := roleVersions(f.repo)
	next := &rel{counter: 41, version: "3.0.0"}
	rels = append(rels, next)
	bodies[next.path()] = []byte("3.0.0 full image")
	f.add(next.path(), bodies[next.path()], next.custom())
	after := roleVersions(f.repo)
	var changed []string
	for name, v := range after {
		if before[name] != v {
			changed = append(changed, name)
		}
	}
	bins := slices.DeleteFunc(slices.Clone(changed), func(n string) bool { return !strings.Contains(n, "/bins-") })
	if !slices.Contains(changed, "models/edge-gw") || slices.Contains(changed, metadata.TARGETS) || len(bins) > 2 || len(changed) != 1+len(bins) {
		t.Fatalf("a release re-signed %v, want the model role and at most two bins", changed)
	}
	if _, role, _ := f.repo.Lookup(byCounter(2).path()); role == "models/edge-gw" {
		t.Fatal("superseded stepping stone 1.0.0 still in the model role")
	}
	if n := len(modelRoleTargets(t, f.repo)); n != 32 {
		t.Fatalf("model role lists %d targets, want 32 (3.0.0 is recent and the only stone)", n)
	}
	up = dev.refresh()
	if got := agentPick(t, up, installed{"rev-a", "0.9.0", 1}); got != next.path() {
		t.Fatalf("a device on 0.9.0 picks %q, want 3.0.0", got)
	}
	stockFindsAll(up)
}

// TestSteppingStonesAreBounded: a model whose releases name ever more
// hardware ids, each with its own full image, would grow its role (which
// every device downloads) without bound; past MaxSteppingStones the release
// is refused, clearly, and nothing is published.
func TestSteppingStonesAreBounded(t *testing.T) {
	f := newFixture(t, nil)
	var err error
	f.opts.RecentTargets = 2
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= tufrepo.MaxSteppingStones; i++ {
		r := &rel{counter: i, version: fmt.Sprintf("1.0.%d", i), hw: []string{fmt.Sprintf("hw-%d", i)}}
		f.add(r.path(), []byte{byte(i)}, r.custom())
	}
	before := versionsOf(f.repo)
	r := &rel{counter: 1000, version: "1.1.0", hw: []string{"hw-new"}}
	_, err = f.repo.AddTarget(t.Context(), r.path(), strings.NewReader("x"), 1, []byte(r.custom()))
	if !errors.Is(err, tufrepo.ErrTooLarge) || !strings.Contains(err.Error(), "stepping stones") {
		t.Fatalf("release adding stepping stone %d: %v, want a refusal naming the bound", tufrepo.MaxSteppingStones+1, err)
	}
	if versionsOf(f.repo) != before {
		t.Fatal("refused release changed the repository")
	}
	// A full image for every hardware id supersedes them all.
	r = &rel{counter: 1001, version: "2.0.0"}
	f.add(r.path(), []byte("for all"), r.custom())
	if n := len(modelRoleTargets(t, f.repo)); n != 2 {
		t.Fatalf("model role lists %d targets, want 2 (RecentTargets; the stone is among them)", n)
	}
}
