package tufrepo_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/rollout"
)

var testSeed = strings.Repeat("5e", rollout.SeedBytes)

func newBinnedFixture(t *testing.T, recent, perBin int) *fixture {
	t.Helper()
	f := newFixture(t, nil)
	f.opts.RecentTargets, f.opts.TargetsPerBin = recent, perBin
	var err error
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	return f
}

// changedRoles lists the roles whose version differs between two states.
func changedRoles(before, after map[string]int64) []string {
	var out []string
	for n, v := range after {
		if before[n] != v {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func targetsByPath(t *testing.T, r *tufrepo.Repo) map[string]tufrepo.Target {
	t.Helper()
	ts, err := r.Targets(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]tufrepo.Target{}
	for _, tg := range ts {
		out[tg.Path] = tg
	}
	return out
}

// TestSetTermsResignsOneRoleAndOnlyThatTargetsCustom: widening a wave
// re-signs the role listing the release (the model role for a recent one, a
// bin for an archived one), snapshot and timestamp, and changes nothing but
// the target's custom "rollout" member; go-tuf's stock client reads the
// signed terms.
func TestSetTermsResignsOneRoleAndOnlyThatTargetsCustom(t *testing.T) {
	f := newBinnedFixture(t, 4, 2)
	for i := 1; i <= 12; i++ {
		f.add(fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i), []byte(fmt.Sprint(i)), custom("edge-gw", fmt.Sprintf("1.0.%d", i), i))
	}
	for _, tc := range []struct{ path, role string }{
		{"edge-gw/1.0.12/fw.bin", "models/edge-gw"},
		{"edge-gw/1.0.2/fw.bin", ""}, // archived: its bin
	} {
		_, role, ok := f.repo.Lookup(tc.path)
		if !ok {
			t.Fatalf("%s not published", tc.path)
		}
		if tc.role != "" && role != tc.role {
			t.Fatalf("%s is in %s, want %s", tc.path, role, tc.role)
		}
		beforeRoles, beforeVersions, beforeTargets := roleVersions(f.repo), versionsOf(f.repo), targetsByPath(t, f.repo)
		terms := &rollout.Terms{ID: "r-7", Seed: testSeed, Share: 2500, State: "running"}
		got, err := f.repo.SetTerms(t.Context(), tc.path, terms)
		if err != nil {
			t.Fatalf("SetTerms(%s): %v", tc.path, err)
		}
		if ch := changedRoles(beforeRoles, roleVersions(f.repo)); !slices.Equal(ch, []string{role}) {
			t.Fatalf("SetTerms(%s) re-signed %v, want only %s", tc.path, ch, role)
		}
		after := versionsOf(f.repo)
		if after[0] != beforeVersions[0] || after[1] != beforeVersions[1] || after[2] != beforeVersions[2]+1 || after[3] != beforeVersions[3]+1 {
			t.Fatalf("versions %v -> %v: want root and top-level targets unchanged, snapshot and timestamp +1", beforeVersions, after)
		}
		afterTargets := targetsByPath(t, f.repo)
		for p, was := range beforeTargets {
			now := afterTargets[p]
			if now.Length != was.Length || now.SHA256 != was.SHA256 {
				t.Fatalf("%s: length or hash changed", p)
			}
			if p != tc.path && string(now.Custom) != string(was.Custom) {
				t.Fatalf("%s: custom changed by SetTerms of %s", p, tc.path)
			}
		}
		var wasC, nowC map[string]json.RawMessage
		json.Unmarshal(beforeTargets[tc.path].Custom, &wasC)
		json.Unmarshal(got.Custom, &nowC)
		delete(nowC, "rollout")
		if fmt.Sprint(wasC) != fmt.Sprint(nowC) {
			t.Fatalf("other custom members changed: %s -> %s", beforeTargets[tc.path].Custom, got.Custom)
		}
		// A stock client verifies the re-signed role and reads the terms.
		info, err := f.newDevice().refresh().GetTargetInfo(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if signed, ok, err := rollout.FromCustom(*info.Custom); err != nil || !ok || signed.Share != 2500 || signed.ID != "r-7" {
			t.Fatalf("stock client reads terms %+v ok=%v err=%v", signed, ok, err)
		}
		// The same terms again publish nothing.
		v := versionsOf(f.repo)
		if _, err := f.repo.SetTerms(t.Context(), tc.path, terms); err != nil || versionsOf(f.repo) != v {
			t.Fatalf("repeating the terms: err %v, versions %v -> %v", err, v, versionsOf(f.repo))
		}
	}

	// Refused, publishing nothing.
	v := versionsOf(f.repo)
	for _, tc := range []struct {
		path  string
		terms *rollout.Terms
		want  error
	}{
		{"edge-gw/9.9.9/fw.bin", &rollout.Terms{Seed: testSeed}, tufrepo.ErrTargetNotFound},
		{"edge-gw/1.0.12/fw.bin", &rollout.Terms{Seed: "zz", Share: 1}, tufrepo.ErrInvalidTarget},
		{"edge-gw/1.0.12/fw.bin", &rollout.Terms{Seed: testSeed, Share: rollout.Scale + 1}, tufrepo.ErrInvalidTarget},
		{rollout.MembershipPath("edge-gw", "SN1"), &rollout.Terms{Seed: testSeed}, tufrepo.ErrInvalidTarget},
	} {
		if _, err := f.repo.SetTerms(t.Context(), tc.path, tc.terms); !errors.Is(err, tc.want) {
			t.Fatalf("SetTerms(%s, %+v) = %v, want %v", tc.path, tc.terms, err, tc.want)
		}
	}
	if versionsOf(f.repo) != v {
		t.Fatal("a refused SetTerms published")
	}
	// nil removes the terms (offered to all again).
	got, err := f.repo.SetTerms(t.Context(), "edge-gw/1.0.12/fw.bin", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := rollout.FromCustom(got.Custom); ok || string(got.Custom) != string(targetsByPath(t, f.repo)["edge-gw/1.0.12/fw.bin"].Custom) {
		t.Fatalf("terms not removed: %s", got.Custom)
	}
}

// TestHeldReleaseIsNotASteppingStone: the newest full image is a model's
// stepping stone (the release a device far behind installs first), but not
// while rollout terms restrict it: the previous release offered to all
// comes back into the model role, and leaves it when the rollout completes.
func TestHeldReleaseIsNotASteppingStone(t *testing.T) {
	f := newBinnedFixture(t, 2, 2)
	f.add("edge-gw/1.0.0/fw.bin", []byte("full"), custom("edge-gw", "1.0.0", 1))
	for i := 1; i <= 4; i++ {
		f.add(fmt.Sprintf("edge-gw/1.0.%d/delta.bin", i), []byte(fmt.Sprint(i)),
			fmt.Sprintf(`{"model":"edge-gw","version":"1.0.%d","release_counter":%d,"hardware_ids":[],"min_from_version":"1.0.%d"}`, i, i+1, i-1))
	}
	f.add("edge-gw/2.0.0/fw.bin", []byte("full 2"), custom("edge-gw", "2.0.0", 6))
	roleOf := func(p string) string {
		_, role, _ := f.repo.Lookup(p)
		return role
	}
	if r := roleOf("edge-gw/1.0.0/fw.bin"); r == "models/edge-gw" {
		t.Fatal("superseded stone still in the model role")
	}
	if _, err := f.repo.SetTerms(t.Context(), "edge-gw/2.0.0/fw.bin", &rollout.Terms{ID: "r1", Seed: testSeed, Share: 0, State: "halted"}); err != nil {
		t.Fatal(err)
	}
	if r := roleOf("edge-gw/1.0.0/fw.bin"); r != "models/edge-gw" {
		t.Fatalf("with 2.0.0 halted, 1.0.0 (the newest image offered to all) is in %s, want the model role", r)
	}
	if r := roleOf("edge-gw/2.0.0/fw.bin"); r != "models/edge-gw" {
		t.Fatalf("the newest release moved to %s", r)
	}
	if _, err := f.repo.SetTerms(t.Context(), "edge-gw/2.0.0/fw.bin", &rollout.Terms{ID: "r1", Seed: testSeed, Share: rollout.Scale, State: "completed"}); err != nil {
		t.Fatal(err)
	}
	if r := roleOf("edge-gw/1.0.0/fw.bin"); r == "models/edge-gw" {
		t.Fatal("with 2.0.0 offered to all, 1.0.0 stays in the model role")
	}
}

// TestMembershipsLiveInBinsOnly: group membership records are signed in the
// model's hashed bins (created and doubled as they fill), never in its role
// and never as releases; stock clients find them by the delegation walk.
func TestMembershipsLiveInBinsOnly(t *testing.T) {
	f := newBinnedFixture(t, 4, 2)
	f.add("edge-gw/1.0.0/fw.bin", []byte("one"), custom("edge-gw", "1.0.0", 1))
	f.add("edge-gw/1.0.1/fw.bin", []byte("two"), custom("edge-gw", "1.0.1", 2))
	members := map[string][]string{}
	for i := range 20 {
		members[fmt.Sprintf("SN%02d", i)] = []string{"lab", "canary", "lab"}
	}
	if err := f.repo.SetMemberships(t.Context(), "edge-gw", members); err != nil {
		t.Fatal(err)
	}
	want := []byte(`{"groups":["canary","lab"]}`)
	sum := sha256.Sum256(want)
	for serial := range members {
		p := rollout.MembershipPath("edge-gw", serial)
		tg, role, ok := f.repo.Lookup(p)
		if !ok || !strings.HasPrefix(role, "models/edge-gw/bins-") {
			t.Fatalf("%s in %q (found %v), want a bin", p, role, ok)
		}
		if string(tg.Custom) != string(want) || tg.Length != int64(len(want)) || tg.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("%s: custom %s, length %d, sha256 %s", p, tg.Custom, tg.Length, tg.SHA256)
		}
	}
	bins, inBins := countPrefix(f.repo, "models/edge-gw/bins-")
	if inBins != 20 || bins < 10 {
		t.Fatalf("%d bins hold %d records: want 20 records at <= 2 per bin", bins, inBins)
	}
	// More releases: the newest stay in the model role; records never move up.
	for i := 2; i <= 9; i++ {
		f.add(fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i), []byte(fmt.Sprint(i)), custom("edge-gw", fmt.Sprintf("1.0.%d", i), i+1))
	}
	if err := f.repo.SetMemberships(t.Context(), "edge-gw", map[string][]string{"SN99": {"canary"}}); err != nil {
		t.Fatal(err)
	}
	if mr, _ := roleInfo(f.repo, "models/edge-gw"); mr.Targets != 4 {
		t.Fatalf("model role lists %d targets, want its 4 newest releases", mr.Targets)
	}
	for _, tg := range targetsByPath(t, f.repo) {
		if rollout.IsMembershipPath(tg.Path) {
			t.Fatalf("Targets lists the membership record %s as a release", tg.Path)
		}
	}
	if n := len(targetsByPath(t, f.repo)); n != 10 {
		t.Fatalf("Targets lists %d releases, want 10", n)
	}
	bins, inBins = countPrefix(f.repo, "models/edge-gw/bins-")
	if inBins != 21+6 || bins*2 < inBins || bins/2*2 >= inBins {
		t.Fatalf("%d bins hold %d targets: want 27 at no more than 2 per bin, in as few bins as that takes", bins, inBins)
	}

	up := f.newDevice().refresh()
	if got := newest(t, up, "edge-gw"); got != "edge-gw/1.0.9/fw.bin" {
		t.Fatalf("newest release = %s", got)
	}
	info, err := up.GetTargetInfo(rollout.MembershipPath("edge-gw", "SN07"))
	if err != nil {
		t.Fatalf("stock client: %v", err)
	}
	if m, err := rollout.ParseMembership(*info.Custom); err != nil || fmt.Sprint(m.Groups) != "[canary lab]" {
		t.Fatalf("stock client reads membership %+v %v", m, err)
	}
	if g, ok := f.repo.Membership("edge-gw", "SN07"); !ok || fmt.Sprint(g) != "[canary lab]" {
		t.Fatalf("Membership = %v %v", g, ok)
	}

	// Unchanged records publish nothing; an empty list removes a record.
	v := versionsOf(f.repo)
	if err := f.repo.SetMemberships(t.Context(), "edge-gw", map[string][]string{"SN07": {"lab", "canary"}}); err != nil || versionsOf(f.repo) != v {
		t.Fatalf("unchanged membership: err %v, published %v", err, versionsOf(f.repo) != v)
	}
	if err := f.repo.SetMemberships(t.Context(), "edge-gw", map[string][]string{"SN07": nil, "SN08": {"field"}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.repo.Membership("edge-gw", "SN07"); ok {
		t.Fatal("record not removed")
	}
	if g, _ := f.repo.Membership("edge-gw", "SN08"); fmt.Sprint(g) != "[field]" {
		t.Fatalf("SN08 groups %v", g)
	}

	// Bad input: clear error, nothing published.
	v = versionsOf(f.repo)
	big := map[string][]string{}
	for i := range tufrepo.MaxMembershipBatch + 1 {
		big[fmt.Sprint("S", i)] = []string{"g"}
	}
	for _, tc := range []struct {
		model   string
		members map[string][]string
		want    error
	}{
		{"edge-gw", map[string][]string{"a/b": {"g"}}, tufrepo.ErrInvalidTarget},
		{"edge-gw", map[string][]string{"": {"g"}}, tufrepo.ErrInvalidTarget},
		{"edge-gw", map[string][]string{"SN1": {"bad group"}}, tufrepo.ErrInvalidTarget},
		{"edge/gw", map[string][]string{"SN1": {"g"}}, tufrepo.ErrInvalidTarget},
		{"edge-gw", big, tufrepo.ErrTooLarge},
	} {
		if err := f.repo.SetMemberships(t.Context(), tc.model, tc.members); !errors.Is(err, tc.want) {
			t.Fatalf("SetMemberships(%s, %d) = %v, want %v", tc.model, len(tc.members), err, tc.want)
		}
	}
	// A release cannot take a membership record's path.
	p := rollout.MembershipPath("edge-gw", "SN50")
	if _, err := f.repo.AddTarget(t.Context(), p, strings.NewReader("x"), 1, nil); !errors.Is(err, tufrepo.ErrInvalidTarget) {
		t.Fatalf("AddTarget(%s) = %v", p, err)
	}
	if versionsOf(f.repo) != v {
		t.Fatal("refused input published")
	}
}

// TestReplicasSeeTermsAndMemberships: terms and memberships published by
// one fosterd replica are in force on the other (they go through the
// Arbiter like every publish).
func TestReplicasSeeTermsAndMemberships(t *testing.T) {
	rs := newReplicas(t, fileStore(t), 2)
	p := "edge-gw/1.0.0/fw.bin"
	rs.add(p, []byte("fw"), custom("edge-gw", "1.0.0", 1))
	if _, err := rs.repos[1].SetTerms(t.Context(), p, &rollout.Terms{ID: "r1", Seed: testSeed, Share: 100}); err != nil {
		t.Fatal(err)
	}
	if err := rs.repos[0].SetMemberships(t.Context(), "edge-gw", map[string][]string{"SN1": {"canary"}}); err != nil {
		t.Fatal(err)
	}
	// Replica 0 caught up before publishing: the terms replica 1 set stayed.
	if tg, _, _ := rs.repos[0].Lookup(p); !strings.Contains(string(tg.Custom), `"share":100`) {
		t.Fatalf("replica 0 lost the terms replica 1 published: %s", tg.Custom)
	}
	if _, err := rs.repos[1].SetTerms(t.Context(), p, &rollout.Terms{ID: "r1", Seed: testSeed, Share: 5000}); err != nil {
		t.Fatal(err)
	}
	if err := rs.repos[0].Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if tg, _, _ := rs.repos[0].Lookup(p); !strings.Contains(string(tg.Custom), `"share":5000`) {
		t.Fatalf("replica 0 serves terms %s after the other widened them", tg.Custom)
	}
	if g, ok := rs.repos[1].Membership("edge-gw", "SN1"); !ok || fmt.Sprint(g) != "[canary]" {
		t.Fatalf("replica 1 membership %v %v", g, ok)
	}
	up := rs.newDevice().refresh()
	info, err := up.GetTargetInfo(p)
	if err != nil || !strings.Contains(string(*info.Custom), `"share":5000`) {
		t.Fatalf("stock client: %v", err)
	}
}
