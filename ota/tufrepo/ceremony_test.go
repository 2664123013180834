package tufrepo_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// holder is an offline key holder: a key on their own machine.
type holder struct {
	s   signature.Signer
	key *metadata.Key
	id  string
}

func newHolder(t *testing.T) holder {
	t.Helper()
	s := ed25519Keys(t).Root
	pub, err := s.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	key, id, err := tufrepo.TUFKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return holder{s, key, id}
}

func holderOf(t *testing.T, s signature.Signer) holder {
	t.Helper()
	pub, _ := s.PublicKey()
	key, id, err := tufrepo.TUFKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return holder{s, key, id}
}

// ceremony has every holder sign their own copy of staged, then combines
// the copies.
func ceremony(t *testing.T, staged []byte, holders ...holder) []byte {
	t.Helper()
	var copies [][]byte
	for _, h := range holders {
		signed, err := tufrepo.SignStaged(t.Context(), staged, h.s)
		if err != nil {
			t.Fatalf("SignStaged: %v", err)
		}
		copies = append(copies, signed)
	}
	out, err := tufrepo.CombineStaged(copies...)
	if err != nil {
		t.Fatalf("CombineStaged: %v", err)
	}
	return out
}

func keysOf(hs []holder) []*metadata.Key {
	var out []*metadata.Key
	for _, h := range hs {
		out = append(out, h.key)
	}
	return out
}

func idsOf(hs []holder) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.id)
	}
	return out
}

// TestRootRotated30TimesStillUpdatesClientTrustingV1: root is rotated 30
// times, between single keys and 2-of-3 thresholds, each root N+1 signed
// by a threshold of root N's keys and of its own; the timestamp and
// snapshot keys are rotated along the way (the server holding old and new
// during the switch). A device that only ever trusted root 1 walks all 31
// roots and installs a release published after the last rotation; a device
// that followed along partway does too.
func TestRootRotated30TimesStillUpdatesClientTrustingV1(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("before rotations"), fwCustom)
	v1Device := f.newDevice()
	midDevice := f.newDevice()
	midDevice.refresh()

	rootHolders := []holder{holderOf(t, f.keys.Root)}
	f.keys.Root = nil // root keys are offline, with their holders
	rootThreshold := 1
	for i := 1; i <= 30; i++ {
		var next []holder
		n, thr := 1, 1
		if i%3 == 0 {
			n, thr = 3, 2
		}
		for range n {
			next = append(next, newHolder(t))
		}
		ch := tufrepo.RootChange{
			Add:       map[string][]*metadata.Key{"root": keysOf(next)},
			Remove:    map[string][]string{"root": idsOf(rootHolders)},
			Threshold: map[string]int{"root": thr},
		}
		keys := f.keys
		if i%10 == 5 { // rotate the online timestamp and snapshot keys too
			nk := ed25519Keys(t)
			keys.Extra = []signature.Signer{nk.Timestamp, nk.Snapshot}
			ch.Add["timestamp"] = []*metadata.Key{holderOf(t, nk.Timestamp).key}
			ch.Add["snapshot"] = []*metadata.Key{holderOf(t, nk.Snapshot).key}
			ch.Remove["timestamp"] = []string{holderOf(t, f.keys.Timestamp).id}
			ch.Remove["snapshot"] = []string{holderOf(t, f.keys.Snapshot).id}
			r, err := tufrepo.Open(t.Context(), f.store, keys, f.opts)
			if err != nil {
				t.Fatal(err)
			}
			f.repo = r
			f.keys.Timestamp, f.keys.Snapshot = nk.Timestamp, nk.Snapshot
		}
		staged, err := tufrepo.StageRoot(f.repo.RootJSON(), ch, f.clock.Now())
		if err != nil {
			t.Fatalf("rotation %d: StageRoot: %v", i, err)
		}
		// A threshold of the old holders and of the new ones, each on their own copy.
		signed := ceremony(t, staged, append(rootHolders[:rootThreshold:rootThreshold], next[:thr]...)...)
		if err := f.repo.PublishStaged(t.Context(), signed, nil); err != nil {
			t.Fatalf("rotation %d: PublishStaged: %v", i, err)
		}
		if rv, _, _, _ := f.repo.Versions(); rv != int64(i+1) {
			t.Fatalf("rotation %d: root version %d", i, rv)
		}
		rootHolders, rootThreshold = next, thr
		if i == 15 {
			midDevice.refresh()
		}
	}
	// The repository reopens with the final keys only.
	r, err := tufrepo.Open(t.Context(), f.store, f.keys, f.opts)
	if err != nil {
		t.Fatalf("Open after rotations: %v", err)
	}
	f.repo = r
	f.add("edge-gw/2.0.0/fw.bin", []byte("after rotations"), custom("edge-gw", "2.0.0", 2))
	for _, d := range []*client{v1Device, midDevice} {
		up := d.refresh()
		if got := up.GetTrustedMetadataSet().Root.Signed.Version; got != 31 {
			t.Fatalf("device trusts root %d, want 31", got)
		}
		if data, err := d.download(up, "edge-gw/2.0.0/fw.bin"); err != nil || string(data) != "after rotations" {
			t.Fatalf("device after 30 rotations: %q, %v", data, err)
		}
	}
}

// TestRootCeremonyRefusesShortThresholds: a staged root lacking the old
// threshold, its own threshold, or the right version is refused, and the
// repository is unchanged.
func TestRootCeremonyRefusesShortThresholds(t *testing.T) {
	f := newFixture(t, nil)
	old := holderOf(t, f.keys.Root)
	next := []holder{newHolder(t), newHolder(t), newHolder(t)}
	staged, err := tufrepo.StageRoot(f.repo.RootJSON(), tufrepo.RootChange{
		Add: map[string][]*metadata.Key{"root": keysOf(next)}, Remove: map[string][]string{"root": {old.id}},
		Threshold: map[string]int{"root": 2},
	}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	before := versionsOf(f.repo)
	for name, signers := range map[string][]holder{
		"unsigned":                    nil,
		"only the new keys":           next,
		"old key and 1 of 2 new":      {old, next[0]},
		"only the old key":            {old},
		"someone else and 2 new":      {newHolder(t), next[0], next[1]},
		"old key and a duplicate new": {old, next[0], next[0]},
	} {
		raw := staged
		if len(signers) > 0 {
			raw = ceremony(t, staged, signers...)
		}
		if err := f.repo.PublishStaged(t.Context(), raw, nil); !errors.Is(err, tufrepo.ErrStaged) {
			t.Errorf("%s: PublishStaged = %v, want ErrStaged", name, err)
		}
	}
	info, err := tufrepo.Inspect(ceremony(t, staged, old, next[0]), f.repo.RootJSON())
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Checks) != 2 || !info.Checks[0].Met || info.Checks[1].Met || info.Checks[1].Have != 1 || len(info.Checks[1].Missing) != 2 {
		t.Fatalf("Inspect = %+v", info)
	}
	if got := versionsOf(f.repo); got != before {
		t.Fatalf("refused ceremonies changed versions %v -> %v", before, got)
	}
	if keys := f.list("tuf/2.root.json"); len(keys) != 0 {
		t.Fatal("a refused root was written")
	}
	// Copies staged separately (different content) do not combine.
	other, _ := tufrepo.StageRoot(f.repo.RootJSON(), tufrepo.RootChange{Add: map[string][]*metadata.Key{"root": {next[0].key}}}, f.clock.Now())
	a, _ := tufrepo.SignStaged(t.Context(), staged, old.s)
	b, _ := tufrepo.SignStaged(t.Context(), other, next[0].s)
	if _, err := tufrepo.CombineStaged(a, b); !errors.Is(err, tufrepo.ErrStaged) {
		t.Fatalf("CombineStaged of different content: %v", err)
	}
	// Published correctly, a second publish of the same root is stale.
	good := ceremony(t, staged, old, next[1], next[2])
	if err := f.repo.PublishStaged(t.Context(), good, nil); err != nil {
		t.Fatalf("PublishStaged: %v", err)
	}
	if err := f.repo.PublishStaged(t.Context(), good, nil); !errors.Is(err, tufrepo.ErrStaged) {
		t.Fatalf("republishing: %v", err)
	}
}

// TestTargetsCeremonies: with the targets key offline, a targets ceremony
// delegates a new model (whose online key then releases), rotates the
// targets key together with root, and re-keys a model (its role and bins
// are re-signed by the new model key).
func TestTargetsCeremonies(t *testing.T) {
	f := newFixture(t, nil)
	modelKey := ed25519Keys(t).Targets
	online := tufrepo.Keys{Snapshot: f.keys.Snapshot, Timestamp: f.keys.Timestamp, Models: func(string) signature.Signer { return modelKey }}
	opts := f.opts
	opts.RecentTargets, opts.TargetsPerBin = 2, 2
	r, err := tufrepo.Open(t.Context(), f.store, online, opts)
	if err != nil {
		t.Fatal(err)
	}
	add := func(r *tufrepo.Repo, v string, n int) error {
		_, err := r.AddTarget(t.Context(), "cam-x/"+v+"/app.img", strings.NewReader("app "+v), int64(len("app "+v)), []byte(custom("cam-x", v, n)))
		return err
	}
	if err := add(r, "1.0.0", 1); !errors.Is(err, tufrepo.ErrKeyUnavailable) {
		t.Fatalf("release of an undelegated model: %v", err)
	}

	// 1. Delegate cam-x to its online key in a targets ceremony.
	targetsHolder := holderOf(t, f.keys.Targets)
	staged, err := tufrepo.StageTargets(r.CurrentTargets(), tufrepo.TargetsChange{
		Delegate: []tufrepo.ModelDelegation{{Model: "cam-x", Keys: []*metadata.Key{holderOf(t, modelKey).key}, Threshold: 1}},
	}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.PublishStaged(t.Context(), nil, staged); !errors.Is(err, tufrepo.ErrStaged) {
		t.Fatalf("unsigned targets: %v", err)
	}
	if err := r.PublishStaged(t.Context(), nil, ceremony(t, staged, targetsHolder)); err != nil {
		t.Fatalf("publishing delegation: %v", err)
	}
	for i := 1; i <= 7; i++ { // past RecentTargets: bins appear
		if err := add(r, fmt.Sprintf("1.0.%d", i), i); err != nil {
			t.Fatalf("release %d with the targets key offline: %v", i, err)
		}
	}
	dev := f.newDevice()
	if got := newest(t, dev.refresh(), "cam-x"); got != "cam-x/1.0.7/app.img" {
		t.Fatalf("newest = %q", got)
	}

	// 2. Rotate the targets key: root N+1 names the new key, targets N+1 is
	// signed by it; published together.
	newTargets := newHolder(t)
	rootStaged, err := tufrepo.StageRoot(r.RootJSON(), tufrepo.RootChange{
		Add: map[string][]*metadata.Key{"targets": {newTargets.key}}, Remove: map[string][]string{"targets": {targetsHolder.id}},
	}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	tStaged, err := tufrepo.StageTargets(r.CurrentTargets(), tufrepo.TargetsChange{}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	rootSigned := ceremony(t, rootStaged, holderOf(t, f.keys.Root))
	if err := r.PublishStaged(t.Context(), rootSigned, ceremony(t, tStaged, targetsHolder)); !errors.Is(err, tufrepo.ErrStaged) {
		t.Fatalf("targets signed by the rotated-out key: %v", err)
	}
	if err := r.PublishStaged(t.Context(), rootSigned, ceremony(t, tStaged, newTargets)); err != nil {
		t.Fatalf("rotating the targets key: %v", err)
	}
	if got := newest(t, dev.refresh(), "cam-x"); got != "cam-x/1.0.7/app.img" {
		t.Fatalf("after targets rotation newest = %q", got)
	}

	// 3. Re-key cam-x: the server holds the new model key, the targets
	// holder signs the new delegation; the model role and its bins are
	// re-signed by the new key.
	newModel := ed25519Keys(t).Targets
	online.Models = func(string) signature.Signer { return newModel }
	online.Extra = []signature.Signer{newModel}
	if r, err = tufrepo.Open(t.Context(), f.store, online, opts); err != nil {
		t.Fatal(err)
	}
	tStaged, err = tufrepo.StageTargets(r.CurrentTargets(), tufrepo.TargetsChange{
		Delegate: []tufrepo.ModelDelegation{{Model: "cam-x", Keys: []*metadata.Key{holderOf(t, newModel).key}, Threshold: 1}},
	}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.PublishStaged(t.Context(), nil, ceremony(t, tStaged, newTargets)); err != nil {
		t.Fatalf("re-keying cam-x: %v", err)
	}
	if err := add(r, "1.1.0", 8); err != nil {
		t.Fatalf("release with the new model key: %v", err)
	}
	up := dev.refresh()
	for _, v := range []string{"1.0.1", "1.0.6", "1.1.0"} { // archived and recent
		if _, err := up.GetTargetInfo("cam-x/" + v + "/app.img"); err != nil {
			t.Fatalf("%s after re-keying: %v", v, err)
		}
	}
	for name, md := range up.GetTrustedMetadataSet().Targets {
		if name == metadata.TARGETS {
			continue
		}
		if len(md.Signatures) != 1 || md.Signatures[0].KeyID != holderOf(t, newModel).id {
			t.Fatalf("%s is signed by %v, want only the new model key", name, md.Signatures)
		}
	}
	// The old model key alone no longer publishes.
	online.Models, online.Extra = func(string) signature.Signer { return modelKey }, nil
	if r, err = tufrepo.Open(t.Context(), f.store, online, opts); err != nil {
		t.Fatal(err)
	}
	if err := add(r, "1.2.0", 9); !errors.Is(err, tufrepo.ErrKeyUnavailable) {
		t.Fatalf("release with the rotated-out model key: %v", err)
	}
}

// timestampSigners returns the key IDs that signed the timestamp.json r
// serves.
func timestampSigners(t *testing.T, r *tufrepo.Repo) []string {
	t.Helper()
	raw, _, _, err := r.Metadata(t.Context(), "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	md, err := new(metadata.Metadata[metadata.TimestampType]).FromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range md.Signatures {
		ids = append(ids, s.KeyID)
	}
	return ids
}

// TestTimestampKeyRotatedWithoutReopening: a running repository takes a new
// timestamp key with SetKeys (held alongside the old one), publishes the
// root that swaps them (both sign the timestamp of that publish, so clients
// on either root accept it), then drops the old key: later timestamps are
// signed by the new key alone, and a device trusting root 1 still updates.
// Keys that root does not trust for their role are refused and change
// nothing.
func TestTimestampKeyRotatedWithoutReopening(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("before"), fwCustom)
	device := f.newDevice()
	device.refresh()
	old, next := holderOf(t, f.keys.Timestamp), newHolder(t)

	stranger := newHolder(t)
	wrong := f.keys
	wrong.Timestamp = stranger.s
	if err := f.repo.SetKeys(t.Context(), wrong); !errors.Is(err, tufrepo.ErrKeyMismatch) {
		t.Fatalf("SetKeys with a timestamp key root does not trust: %v", err)
	}
	if got := timestampSigners(t, f.repo); len(got) != 1 || got[0] != old.id {
		t.Fatalf("a refused SetKeys changed the signers: %v", got)
	}

	held := f.keys
	held.Extra = []signature.Signer{next.s}
	if err := f.repo.SetKeys(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	staged, err := tufrepo.StageRoot(f.repo.RootJSON(), tufrepo.RootChange{
		Add:    map[string][]*metadata.Key{"timestamp": {next.key}},
		Remove: map[string][]string{"timestamp": {old.id}},
	}, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.repo.PublishStaged(t.Context(), ceremony(t, staged, holderOf(t, f.keys.Root)), nil); err != nil {
		t.Fatal(err)
	}
	if got := timestampSigners(t, f.repo); len(got) != 2 {
		t.Fatalf("the timestamp published with the new root is signed by %v, want the old and the new key", got)
	}

	// The new key becomes the configured one; the old one is dropped.
	promoted := f.keys
	promoted.Timestamp = next.s
	if err := f.repo.SetKeys(t.Context(), promoted); err != nil {
		t.Fatal(err)
	}
	f.add("edge-gw/2.0.0/fw.bin", []byte("after"), custom("edge-gw", "2.0.0", 2))
	if got := timestampSigners(t, f.repo); len(got) != 1 || got[0] != next.id {
		t.Fatalf("timestamp after the rotation signed by %v, want only %s", got, next.id)
	}
	// Back to the old key alone: root no longer trusts it.
	if err := f.repo.SetKeys(t.Context(), f.keys); !errors.Is(err, tufrepo.ErrKeyMismatch) {
		t.Fatalf("SetKeys back to the rotated-out key: %v", err)
	}
	up := device.refresh()
	if data, err := device.download(up, "edge-gw/2.0.0/fw.bin"); err != nil || string(data) != "after" {
		t.Fatalf("device that trusted root 1: %q %v", data, err)
	}
	fresh := f.newDevice()
	fresh.refresh()
}
