package tufrepo_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

func custom(model, version string, counter int) string {
	return fmt.Sprintf(`{"model":%q,"version":%q,"release_counter":%d,"hardware_ids":[]}`, model, version, counter)
}

// newest does what the agent's target selection (client/internal/tufclient)
// does: probe "<model>/0/probe" so go-tuf loads the model's role, then pick
// the highest release counter among the roles it loaded, confirmed through
// go-tuf's delegation walk.
func newest(t *testing.T, up *updater.Updater, model string) string {
	t.Helper()
	if _, err := up.GetTargetInfo(model + "/0/probe"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("probe: %v", err)
	}
	best, bestN := "", int64(-1)
	for _, role := range up.GetTrustedMetadataSet().Targets {
		for name, tf := range role.Signed.Targets {
			var c struct {
				Model string `json:"model"`
				N     int64  `json:"release_counter"`
			}
			json.Unmarshal(*tf.Custom, &c)
			if c.Model == model && c.N > bestN {
				best, bestN = name, c.N
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

func roleInfo(r *tufrepo.Repo, name string) (tufrepo.RoleInfo, bool) {
	for _, ri := range r.Roles() {
		if ri.Name == name {
			return ri, true
		}
	}
	return tufrepo.RoleInfo{}, false
}

func countPrefix(r *tufrepo.Repo, prefix string) (roles, targets int) {
	for _, ri := range r.Roles() {
		if strings.HasPrefix(ri.Name, prefix) {
			roles++
			targets += ri.Targets
		}
	}
	return roles, targets
}

// TestModelRolesAndHashedBins: each model gets its own delegated role; once
// a model has more than RecentTargets releases, the older ones move to
// succinct hashed bins, which double as they fill. Stock clients find every
// target through the delegation walk; the agent's selection finds the
// newest in the model role alone; a restarted repository loads it all.
func TestModelRolesAndHashedBins(t *testing.T) {
	f := newFixture(t, nil)
	var err error
	f.opts.RecentTargets, f.opts.TargetsPerBin = 4, 2
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	dev := f.newDevice()
	const n = 40
	bodies := map[string][]byte{}
	for i := 1; i <= n; i++ {
		p := fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i)
		bodies[p] = randomBytes(100+i, uint64(i))
		f.add(p, bodies[p], custom("edge-gw", fmt.Sprintf("1.0.%d", i), i))
		if i == 3 {
			f.add("cam-x/2.0.0/app.img", []byte("camera"), custom("cam-x", "2.0.0", 1))
		}
		if i%9 == 0 { // a device polling along the way keeps up across rebins
			if got := newest(t, dev.refresh(), "edge-gw"); got != p {
				t.Fatalf("after %d releases the agent's selection finds %q, want %q", i, got, p)
			}
		}
	}
	if got := f.repo.Models(); fmt.Sprint(got) != "[cam-x edge-gw]" {
		t.Fatalf("Models = %v", got)
	}
	// Top-level targets changed twice (one delegation per model), never for a release.
	if _, tv, _, _ := f.repo.Versions(); tv != 3 {
		t.Fatalf("targets version %d, want 3 (1 + one delegation per model)", tv)
	}
	mr, ok := roleInfo(f.repo, "models/edge-gw")
	if !ok || mr.Targets != 4 {
		t.Fatalf("models/edge-gw lists %d targets, want 4 (RecentTargets)", mr.Targets)
	}
	bins, archived := countPrefix(f.repo, "models/edge-gw/bins-")
	if archived != n-4 || bins != 32 { // 36 archived at <= 2 per bin: 2^5 bins
		t.Fatalf("bins: %d roles holding %d targets, want 32 holding %d", bins, archived, n-4)
	}
	if _, ok := roleInfo(f.repo, "models/cam-x/bins-0"); ok {
		t.Fatal("a model with few releases has bins")
	}

	up := dev.refresh()
	if got := newest(t, up, "edge-gw"); got != fmt.Sprintf("edge-gw/1.0.%d/fw.bin", n) {
		t.Fatalf("newest = %s", got)
	}
	if got := newest(t, up, "cam-x"); got != "cam-x/2.0.0/app.img" {
		t.Fatalf("newest cam-x = %s", got)
	}
	// The agent's selection loaded the model role and, for its probe path,
	// one bin, not the archive.
	loaded := 0
	for name := range up.GetTrustedMetadataSet().Targets {
		if strings.Contains(name, "/bins-") {
			loaded++
		}
	}
	if loaded > 2 { // the probes of edge-gw and cam-x (which has no bins)
		t.Fatalf("selection loaded %d bins", loaded)
	}
	// Every target, archived or not, verifies and downloads with a stock client.
	for p, body := range bodies {
		data, err := dev.download(up, p)
		if err != nil || !bytes.Equal(data, body) {
			t.Fatalf("%s: %v", p, err)
		}
	}
	// A path another model's role would claim is not found through this one.
	if _, err := up.GetTargetInfo("cam-x/1.0.1/fw.bin"); err == nil {
		t.Fatal("found a target under the wrong model")
	}

	restarted, err := tufrepo.Open(t.Context(), f.store, f.keys, f.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	a, _ := f.repo.Targets(t.Context())
	b, _ := restarted.Targets(t.Context())
	if len(a) != n+1 || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("restarted repository has %d targets, want %d (same as before)", len(b), len(a))
	}
	f.repo = restarted
	f.add("edge-gw/1.1.0/fw.bin", []byte("after restart"), custom("edge-gw", "1.1.0", n+1))
	if got := newest(t, dev.refresh(), "edge-gw"); got != "edge-gw/1.1.0/fw.bin" {
		t.Fatalf("after restart newest = %s", got)
	}
}

// TestRemoveTargetStopsOffering: a revoked release disappears from the
// signed metadata; the model role keeps listing the newest remaining
// releases (an archived one moves up), so the agent's selection falls back
// to the previous release.
func TestRemoveTargetStopsOffering(t *testing.T) {
	f := newFixture(t, nil)
	var err error
	f.opts.RecentTargets, f.opts.TargetsPerBin = 2, 4
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		f.add(fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i), []byte{byte(i)}, custom("edge-gw", fmt.Sprintf("1.0.%d", i), i))
	}
	dev := f.newDevice()
	for _, revoke := range []string{"edge-gw/1.0.6/fw.bin", "edge-gw/1.0.5/fw.bin", "edge-gw/1.0.2/fw.bin"} {
		before, _, _, _ := f.repo.Versions()
		if _, err := f.repo.RemoveTarget(t.Context(), revoke); err != nil {
			t.Fatalf("RemoveTarget(%s): %v", revoke, err)
		}
		if after, _, _, _ := f.repo.Versions(); after != before {
			t.Fatal("root changed")
		}
		up := dev.refresh()
		if _, err := up.GetTargetInfo(revoke); err == nil {
			t.Fatalf("%s still offered after removal", revoke)
		}
		if _, _, ok := f.repo.Lookup(revoke); ok {
			t.Fatalf("Lookup finds removed %s", revoke)
		}
	}
	if got := newest(t, dev.refresh(), "edge-gw"); got != "edge-gw/1.0.4/fw.bin" {
		t.Fatalf("after revoking 1.0.6 and 1.0.5 the newest offered is %s, want 1.0.4", got)
	}
	if mr, _ := roleInfo(f.repo, "models/edge-gw"); mr.Targets != 2 {
		t.Fatalf("model role lists %d targets after removals, want 2", mr.Targets)
	}
	if _, err := f.repo.RemoveTarget(t.Context(), "edge-gw/1.0.6/fw.bin"); !errors.Is(err, tufrepo.ErrTargetNotFound) {
		t.Fatalf("removing twice: %v", err)
	}
	ts, _ := f.repo.Targets(t.Context())
	if len(ts) != 3 {
		t.Fatalf("%d targets left, want 3", len(ts))
	}
}

// TestModelKeysReleaseWithoutOfflineKeys: a model's role is signed by its
// own key, so once targets delegates the model, a process holding only the
// model, snapshot and timestamp keys (online or KMS) publishes releases; a
// new model needs the targets key (or a targets ceremony).
func TestModelKeysReleaseWithoutOfflineKeys(t *testing.T) {
	f := newFixture(t, nil)
	modelKeys := map[string]signature.Signer{"edge-gw": ed25519Keys(t).Targets, "cam-x": ed25519Keys(t).Targets}
	f.keys.Models = func(m string) signature.Signer { return modelKeys[m] }
	var err error
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	f.add(fwPath, []byte("v1"), fwCustom) // delegates edge-gw with the targets key online

	online := tufrepo.Keys{Snapshot: f.keys.Snapshot, Timestamp: f.keys.Timestamp, Models: f.keys.Models}
	r, err := tufrepo.Open(t.Context(), f.store, online, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddTarget(t.Context(), "edge-gw/1.0.2/fw.bin", strings.NewReader("v2"), 2, []byte(custom("edge-gw", "1.0.2", 2))); err != nil {
		t.Fatalf("release with the targets key offline: %v", err)
	}
	_, err = r.AddTarget(t.Context(), "cam-x/1.0.0/fw.bin", strings.NewReader("c"), 1, nil)
	if !errors.Is(err, tufrepo.ErrKeyUnavailable) || !strings.Contains(err.Error(), "--delegate-model cam-x") {
		t.Fatalf("new model with the targets key offline: %v, want ErrKeyUnavailable naming the ceremony", err)
	}
	if staged, _ := f.fs.List(t.Context(), "targets/cam-x/"); len(staged) != 0 {
		t.Fatalf("refused release left blobs: %q", staged)
	}
	// A process without the model's key cannot sign its role.
	noModel := tufrepo.Keys{Snapshot: f.keys.Snapshot, Timestamp: f.keys.Timestamp}
	r2, err := tufrepo.Open(t.Context(), f.store, noModel, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.AddTarget(t.Context(), "edge-gw/1.0.3/fw.bin", strings.NewReader("v3"), 2, nil); !errors.Is(err, tufrepo.ErrKeyUnavailable) {
		t.Fatalf("release without the model key: %v, want ErrKeyUnavailable", err)
	}
	up := f.newDevice().refresh()
	if _, err := up.GetTargetInfo("edge-gw/1.0.2/fw.bin"); err != nil {
		t.Fatalf("device: %v", err)
	}
	// The model role is signed by the model key, not the targets key.
	top := up.GetTrustedMetadataSet().Targets[metadata.TARGETS]
	ids := top.Signed.Delegations.Roles[0].KeyIDs
	want, _ := modelKeys["edge-gw"].PublicKey()
	_, wantID, _ := tufrepo.TUFKey(want)
	if len(ids) != 1 || ids[0] != wantID {
		t.Fatalf("models/edge-gw delegated to %v, want the model key %s", ids, wantID)
	}
}

// TestMetadataNeverServesExpired: if the periodic refresh fell behind (the
// host slept past the timestamp expiry), serving timestamp.json re-signs it
// first; if it cannot, it refuses rather than serve expired metadata.
func TestMetadataNeverServesExpired(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("fw"), fwCustom)
	f.clock.Set(f.clock.Now().Add(3 * 24 * time.Hour)) // no Refresh ran
	raw, etag, ok, err := f.repo.Metadata(t.Context(), "timestamp.json")
	if err != nil || !ok {
		t.Fatalf("Metadata: %v", err)
	}
	ts, err := new(metadata.Metadata[metadata.TimestampType]).FromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !ts.Signed.Expires.After(f.clock.Now().Add(23 * time.Hour)) {
		t.Fatalf("served timestamp expires %v, clock is %v", ts.Signed.Expires, f.clock.Now())
	}
	if etag == "" || etag[0] != '"' {
		t.Fatalf("etag %q", etag)
	}
	if err := f.newDevice().updater(f.clock.Now()).Refresh(); err != nil {
		t.Fatalf("client at the jumped clock: %v", err)
	}
	// Same bytes, same ETag, until something changes.
	_, etag2, _, _ := f.repo.Metadata(t.Context(), "timestamp.json")
	if etag2 != etag {
		t.Fatal("ETag changed without a publish")
	}
	// Current versioned files come from memory; others are not.
	_, _, sv, _ := f.repo.Versions()
	if _, _, ok, _ := f.repo.Metadata(t.Context(), fmt.Sprintf("%d.snapshot.json", sv)); !ok {
		t.Fatal("current snapshot not served from memory")
	}
	if _, _, ok, _ := f.repo.Metadata(t.Context(), "1.models/edge-gw.json"); !ok {
		t.Fatal("current model role not served from memory")
	}
	if _, _, ok, _ := f.repo.Metadata(t.Context(), "1.snapshot.json"); ok {
		t.Fatal("old snapshot served from memory")
	}

	// Without the timestamp key it cannot renew: it refuses.
	r, err := tufrepo.Open(t.Context(), f.store, tufrepo.Keys{Snapshot: f.keys.Snapshot}, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Set(f.clock.Now().Add(3 * 24 * time.Hour))
	if _, _, _, err := r.Metadata(t.Context(), "timestamp.json"); !errors.Is(err, tufrepo.ErrExpired) {
		t.Fatalf("Metadata with an expired timestamp and no key: %v, want ErrExpired", err)
	}
}

func TestUploadRefusesDeclaredHashMismatch(t *testing.T) {
	f := newFixture(t, nil)
	body := randomBytes(1000, 4)
	before := f.list("")
	for _, length := range []int64{-1, 1000} {
		_, err := f.repo.Upload(t.Context(), tufrepo.Upload{Path: fwPath, Body: bytes.NewReader(body), Length: length, SHA256: strings.Repeat("ab", 32)})
		if !errors.Is(err, tufrepo.ErrHashMismatch) {
			t.Fatalf("length %d: %v, want ErrHashMismatch", length, err)
		}
	}
	if after := f.list(""); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused upload changed the store: %q -> %q", before, after)
	}
	for _, bad := range []string{"edge-gw/fw.bin", "edge-gw/1.0.0/x/fw.bin"} {
		if _, err := f.repo.Upload(t.Context(), tufrepo.Upload{Path: bad, Body: bytes.NewReader(body), Length: -1}); !errors.Is(err, tufrepo.ErrInvalidTarget) {
			t.Fatalf("path %s: %v", bad, err)
		}
	}
}
