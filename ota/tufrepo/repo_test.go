package tufrepo_test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

const fwPath = "edge-gw/1.0.1/fw.bin"
const fwCustom = `{"model":"edge-gw","version":"1.0.1","release_counter":1,"hardware_ids":[]}`

func TestStockClientVerifiesPublishedTarget(t *testing.T) {
	f := newFixture(t, nil)
	dev := f.newDevice()
	// An empty repository is valid for clients.
	if _, err := dev.refresh().GetTargetInfo(fwPath); err == nil {
		t.Fatal("target found in an empty repository")
	}

	body := randomBytes(1<<20+3, 1)
	tgt := f.add(fwPath, body, fwCustom)
	s256 := sha256.Sum256(body)
	if tgt.Path != fwPath || tgt.Length != int64(len(body)) || tgt.SHA256 != hex.EncodeToString(s256[:]) {
		t.Fatalf("AddTarget returned %+v", tgt)
	}
	if got := versionsOf(f.repo); got != (versions{1, 2, 2, 2}) {
		t.Fatalf("versions after one AddTarget = %v, want [1 2 2 2]", got)
	}
	// The blob is where docs/CONTRACTS.md says.
	want := "targets/edge-gw/1.0.1/" + tgt.SHA256 + ".fw.bin"
	if tufrepo.TargetKey(fwPath, tgt.SHA256) != want {
		t.Fatalf("TargetKey = %s, want %s", tufrepo.TargetKey(fwPath, tgt.SHA256), want)
	}
	if _, err := f.fs.Stat(t.Context(), want); err != nil {
		t.Fatalf("target blob not at %s: %v", want, err)
	}
	// SHA-256 is the only hash signed, so the target has one name and one copy.
	if blobs := f.list("targets/"); len(blobs) != 1 || blobs[0] != want {
		t.Fatalf("target blobs = %q, want only %s", blobs, want)
	}
	if staged := f.list("staging/"); len(staged) != 0 {
		t.Fatalf("staging objects left behind: %q", staged)
	}

	up := dev.refresh()
	info, err := up.GetTargetInfo(fwPath)
	if err != nil {
		t.Fatalf("GetTargetInfo: %v", err)
	}
	if info.Length != int64(len(body)) || info.Custom == nil {
		t.Fatalf("target info = length %d custom %v", info.Length, info.Custom)
	}
	var gotCustom, wantCustom any
	json.Unmarshal(*info.Custom, &gotCustom)
	json.Unmarshal([]byte(fwCustom), &wantCustom)
	if fmt.Sprint(gotCustom) != fmt.Sprint(wantCustom) {
		t.Fatalf("custom = %s, want %s", *info.Custom, fwCustom)
	}
	for range 2 {
		data, err := dev.download(up, fwPath)
		if err != nil {
			t.Fatalf("DownloadTarget: %v", err)
		}
		if !bytes.Equal(data, body) {
			t.Fatal("DownloadTarget returned different bytes")
		}
	}
	ts, err := f.repo.Targets(t.Context())
	if err != nil || len(ts) != 1 || ts[0].SHA256 != tgt.SHA256 || string(ts[0].Custom) != string(tgt.Custom) {
		t.Fatalf("Targets = %+v, %v", ts, err)
	}
}

func TestTamperedTargetRefusedByStockClient(t *testing.T) {
	f := newFixture(t, nil)
	body := randomBytes(64<<10, 2)
	tgt := f.add(fwPath, body, fwCustom)
	evil := bytes.Clone(body)
	evil[1000] ^= 0xff // same length, one flipped byte: a backdoored image
	if err := f.fs.Put(t.Context(), tufrepo.TargetKey(fwPath, tgt.SHA256), bytes.NewReader(evil), int64(len(evil))); err != nil {
		t.Fatal(err)
	}
	dev := f.newDevice()
	up := dev.refresh()
	for range 4 {
		_, err := dev.download(up, fwPath)
		if !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
			t.Fatalf("DownloadTarget of tampered blob: err = %v, want ErrLengthOrHashMismatch", err)
		}
	}
	// A longer blob (endless data) is refused too.
	long := append(bytes.Clone(body), 'x')
	if err := f.fs.Put(t.Context(), tufrepo.TargetKey(fwPath, tgt.SHA256), bytes.NewReader(long), int64(len(long))); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.download(up, fwPath); err == nil {
		t.Fatal("DownloadTarget accepted a blob longer than signed")
	}
}

func TestTamperedMetadataRefused(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("firmware"), fwCustom)
	// Swap in the model's targets metadata saying something else, without
	// re-signing (same file length, so only the signature can tell).
	const key = "tuf/1.models/edge-gw.json"
	raw := f.list(key)
	if len(raw) != 1 {
		t.Fatalf("%s missing: %q", key, raw)
	}
	rc, _, err := f.fs.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	b = bytes.Replace(b, []byte(`"length":8`), []byte(`"length":9`), 1)
	if !bytes.Contains(b, []byte(`"length":9`)) {
		t.Fatal("test did not tamper")
	}
	if err := f.fs.Put(t.Context(), key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	up := f.newDevice().updater(time.Time{})
	if err := up.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.GetTargetInfo(fwPath); !errors.Is(err, &metadata.ErrUnsignedMetadata{}) {
		t.Fatalf("client loading tampered model metadata: err = %v, want ErrUnsignedMetadata", err)
	}
	if _, err := tufrepo.Open(t.Context(), f.fs, f.keys, f.opts); !errors.Is(err, tufrepo.ErrInconsistent) {
		t.Fatalf("Open of tampered repository: err = %v, want ErrInconsistent", err)
	}
}

// TestPublishFailureMidwayKeepsPreviousRepository fails each write of an
// AddTarget in turn: devices and the Repo must stay on the previous
// repository, and a retry must publish the next version cleanly.
func TestPublishFailureMidwayKeepsPreviousRepository(t *testing.T) {
	// Writes of one AddTarget (of a model already delegated) through a store
	// without Copy: staging upload, the sha256-named copy,
	// N.models/edge-gw.json, N.snapshot.json, timestamp.json.
	const writes = 5
	for n := int64(1); n <= writes; n++ {
		t.Run(fmt.Sprintf("fail write %d", n), func(t *testing.T) {
			var fstore *failingStore
			f := newFixture(t, func(s blob.Store) blob.Store { fstore = &failingStore{Store: s}; return fstore })
			v1 := []byte("release one")
			f.add("edge-gw/1.0.0/fw.bin", v1, "")
			dev := f.newDevice()
			dev.refresh()
			before := versionsOf(f.repo)
			beforeTargets, _ := f.repo.Targets(t.Context())

			fstore.arm(n)
			v2 := randomBytes(100<<10, 3)
			_, err := f.repo.AddTarget(t.Context(), fwPath, bytes.NewReader(v2), int64(len(v2)), []byte(fwCustom))
			if !errors.Is(err, errInjected) {
				t.Fatalf("AddTarget with write %d failing: err = %v, want injected failure", n, err)
			}
			fstore.disarm()
			if got := versionsOf(f.repo); got != before {
				t.Fatalf("in-memory versions changed on failure: %v -> %v", before, got)
			}
			if got, _ := f.repo.Targets(t.Context()); !slices.EqualFunc(got, beforeTargets, func(a, b tufrepo.Target) bool { return a.Path == b.Path }) {
				t.Fatalf("in-memory targets changed on failure: %v", got)
			}
			if staged := f.list("staging/"); len(staged) != 0 {
				t.Fatalf("staging objects left behind: %q", staged)
			}
			// The store, reopened, is the previous repository.
			reopened, err := tufrepo.Open(t.Context(), f.fs, f.keys, f.opts)
			if err != nil {
				t.Fatalf("Open after failed publish: %v", err)
			}
			if got := versionsOf(reopened); got != before {
				t.Fatalf("stored versions after failed publish = %v, want %v", got, before)
			}
			// Devices, old and new, see the previous release and not the new one.
			for _, d := range []*client{dev, f.newDevice()} {
				up := d.refresh()
				if _, err := up.GetTargetInfo(fwPath); err == nil {
					t.Fatal("device sees a target whose publish failed")
				}
				if data, err := d.download(up, "edge-gw/1.0.0/fw.bin"); err != nil || !bytes.Equal(data, v1) {
					t.Fatalf("previous release: %v", err)
				}
			}

			// Retry publishes the next versions, and devices accept them.
			if _, err := f.repo.AddTarget(t.Context(), fwPath, bytes.NewReader(v2), int64(len(v2)), []byte(fwCustom)); err != nil {
				t.Fatalf("retry AddTarget: %v", err)
			}
			if got, want := versionsOf(f.repo), (versions{1, before[1], before[2] + 1, before[3] + 1}); got != want {
				t.Fatalf("versions after retry = %v, want %v", got, want)
			}
			up := dev.refresh()
			if data, err := dev.download(up, fwPath); err != nil || !bytes.Equal(data, v2) {
				t.Fatalf("device after retry: %v", err)
			}
		})
	}
	t.Run("write count", func(t *testing.T) {
		var fstore *failingStore
		f := newFixture(t, func(s blob.Store) blob.Store { fstore = &failingStore{Store: s}; return fstore })
		f.add("edge-gw/1.0.0/fw.bin", []byte("release one"), "")
		fstore.arm(1 << 40)
		f.add(fwPath, []byte("x"), "")
		if got := fstore.puts.Load(); got != writes {
			t.Fatalf("AddTarget made %d writes, the test above fails each of %d", got, writes)
		}
	})
}

func TestRefreshFailureMidwayKeepsPreviousRepository(t *testing.T) {
	for n := int64(1); n <= 2; n++ { // snapshot, timestamp
		var fstore *failingStore
		f := newFixture(t, func(s blob.Store) blob.Store { fstore = &failingStore{Store: s}; return fstore })
		before := versionsOf(f.repo)
		f.clock.Set(f.clock.Now().Add(7 * 24 * time.Hour))
		fstore.arm(n)
		if err := f.repo.Refresh(t.Context(), time.Hour); !errors.Is(err, errInjected) {
			t.Fatalf("Refresh with write %d failing: %v", n, err)
		}
		fstore.disarm()
		if got := versionsOf(f.repo); got != before {
			t.Fatalf("versions changed on failed Refresh: %v -> %v", before, got)
		}
		if err := f.repo.Refresh(t.Context(), time.Hour); err != nil {
			t.Fatalf("retry Refresh: %v", err)
		}
		if got := versionsOf(f.repo); got != (versions{1, 1, 2, 2}) {
			t.Fatalf("versions after Refresh = %v, want [1 1 2 2]", got)
		}
	}
}

func TestConcurrentAddTargetsAllLand(t *testing.T) {
	f := newFixture(t, nil)
	const n = 8
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		bodies[i] = randomBytes(32<<10+i*1000, uint64(10+i))
		wg.Go(func() {
			p := fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i)
			custom := fmt.Sprintf(`{"model":"edge-gw","version":"1.0.%d","release_counter":%d,"hardware_ids":[]}`, i, i)
			_, errs[i] = f.repo.AddTarget(t.Context(), p, bytes.NewReader(bodies[i]), -1, []byte(custom))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("AddTarget %d: %v", i, err)
		}
	}
	if got := versionsOf(f.repo); got != (versions{1, 2, 1 + n, 1 + n}) {
		t.Fatalf("versions = %v, want [1 2 %d %d]", got, 1+n, 1+n)
	}
	ts, _ := f.repo.Targets(t.Context())
	if len(ts) != n {
		t.Fatalf("Targets has %d entries, want %d", len(ts), n)
	}
	dev := f.newDevice()
	up := dev.refresh()
	for i := range n {
		data, err := dev.download(up, fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i))
		if err != nil || !bytes.Equal(data, bodies[i]) {
			t.Fatalf("target %d: %v", i, err)
		}
	}
}

// TestRefreshDefeatsFreeze: without Refresh a device whose clock passes the
// timestamp expiry refuses the repository (as it should: it may be frozen);
// Refresh re-signs whatever expires within the margin, and only that.
func TestRefreshDefeatsFreeze(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("fw"), fwCustom)
	base := f.clock.Now()
	dev := f.newDevice()

	later := base.Add(25 * time.Hour)
	if err := dev.updater(later).Refresh(); !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
		t.Fatalf("client 25h later before Refresh: err = %v, want ErrExpiredMetadata", err)
	}
	f.clock.Set(later)
	if err := f.repo.Refresh(t.Context(), time.Hour); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got := versionsOf(f.repo); got != (versions{1, 2, 2, 3}) {
		t.Fatalf("versions after timestamp refresh = %v, want [1 2 2 3]", got)
	}
	if err := dev.updater(later).Refresh(); err != nil {
		t.Fatalf("client 25h later after Refresh: %v", err)
	}
	// A margin as long as an expiry would re-sign on every call.
	if err := f.repo.Refresh(t.Context(), 24*time.Hour); err == nil {
		t.Fatal("Refresh accepted a margin as long as the timestamp expiry")
	}
	// Nothing expiring: nothing re-signed.
	if err := f.repo.Refresh(t.Context(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := versionsOf(f.repo); got != (versions{1, 2, 2, 3}) {
		t.Fatalf("idle Refresh changed versions to %v", got)
	}
	// Snapshot (7 days) expiring re-signs snapshot and timestamp.
	weekLater := base.Add(7*24*time.Hour - 30*time.Minute)
	f.clock.Set(weekLater)
	if err := f.repo.Refresh(t.Context(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := versionsOf(f.repo); got != (versions{1, 2, 3, 4}) {
		t.Fatalf("versions after snapshot refresh = %v, want [1 2 3 4]", got)
	}
	if err := dev.updater(weekLater.Add(time.Hour)).Refresh(); err != nil {
		t.Fatalf("client after snapshot refresh: %v", err)
	}
	_, te, se, tse := f.repo.Expiries()
	if !se.After(weekLater.Add(6*24*time.Hour)) || !tse.After(weekLater.Add(23*time.Hour)) || !te.After(weekLater) {
		t.Fatalf("expiries after refresh: targets %v snapshot %v timestamp %v", te, se, tse)
	}
	// Targets expiring, with its key online, is re-signed too.
	f.clock.Set(te.Add(-time.Minute))
	if err := f.repo.Refresh(t.Context(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := versionsOf(f.repo); got != (versions{1, 3, 4, 5}) {
		t.Fatalf("versions after targets refresh = %v, want [1 3 4 5]", got)
	}
}

func TestRefreshWithOfflineTargetsKey(t *testing.T) {
	f := newFixture(t, nil)
	online := tufrepo.Keys{Snapshot: f.keys.Snapshot, Timestamp: f.keys.Timestamp}
	r, err := tufrepo.Open(t.Context(), f.store, online, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AddTarget(t.Context(), fwPath, strings.NewReader("x"), 1, nil); !errors.Is(err, tufrepo.ErrKeyUnavailable) {
		t.Fatalf("AddTarget without targets key: %v, want ErrKeyUnavailable", err)
	}
	_, te, _, _ := r.Expiries()
	f.clock.Set(te.Add(-time.Minute))
	if err := r.Refresh(t.Context(), time.Hour); !errors.Is(err, tufrepo.ErrKeyUnavailable) {
		t.Fatalf("Refresh with expiring targets and no key: %v, want ErrKeyUnavailable", err)
	}
	if got := versionsOf(r); got != (versions{1, 1, 2, 2}) {
		t.Fatalf("versions = %v: snapshot and timestamp should still be renewed", got)
	}
}

func TestOpenAfterRestartContinuesVersions(t *testing.T) {
	f := newFixture(t, nil)
	f.add("edge-gw/1.0.0/fw.bin", []byte("one"), "")
	f.add("edge-gw/1.0.1/fw.bin", []byte("two"), fwCustom)
	dev := f.newDevice()
	dev.refresh()

	restarted, err := tufrepo.Open(t.Context(), f.store, f.keys, f.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if versionsOf(restarted) != versionsOf(f.repo) {
		t.Fatalf("reopened versions %v, want %v", versionsOf(restarted), versionsOf(f.repo))
	}
	if !bytes.Equal(restarted.RootJSON(), f.root) {
		t.Fatal("reopened RootJSON differs from Init's")
	}
	a, _ := f.repo.Targets(t.Context())
	b, _ := restarted.Targets(t.Context())
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("reopened targets %v, want %v", b, a)
	}
	f.repo = restarted
	f.add("edge-gw/1.0.2/fw.bin", []byte("three"), "")
	if got := versionsOf(restarted); got != (versions{1, 2, 4, 4}) {
		t.Fatalf("versions after restart + AddTarget = %v, want [1 2 4 4]", got)
	}
	// A device that saw version 3 accepts 4 (no rollback error) and gets it.
	up := dev.refresh()
	if data, err := dev.download(up, "edge-gw/1.0.2/fw.bin"); err != nil || string(data) != "three" {
		t.Fatalf("device after restart: %q, %v", data, err)
	}
}

func TestOpenRefusesKeysRootDoesNotTrust(t *testing.T) {
	f := newFixture(t, nil)
	other := ed25519Keys(t)
	for _, tc := range []struct {
		name string
		keys tufrepo.Keys
	}{
		{"timestamp", tufrepo.Keys{Root: f.keys.Root, Targets: f.keys.Targets, Snapshot: f.keys.Snapshot, Timestamp: other.Timestamp}},
		{"snapshot", tufrepo.Keys{Snapshot: other.Snapshot, Timestamp: f.keys.Timestamp}},
		{"targets", tufrepo.Keys{Targets: other.Targets}},
		{"targets key as timestamp", tufrepo.Keys{Timestamp: f.keys.Targets}},
	} {
		if _, err := tufrepo.Open(t.Context(), f.store, tc.keys, f.opts); !errors.Is(err, tufrepo.ErrKeyMismatch) {
			t.Errorf("Open with wrong %s key: err = %v, want ErrKeyMismatch", tc.name, err)
		}
	}
	// A root key rotated out by a ceremony does not stop a server: it never
	// signs root itself.
	if _, err := tufrepo.Open(t.Context(), f.store, tufrepo.Keys{Root: other.Root, Snapshot: f.keys.Snapshot, Timestamp: f.keys.Timestamp}, f.opts); err != nil {
		t.Errorf("Open with a stale root key: %v", err)
	}
	empty, _ := blob.NewFS(t.TempDir())
	if _, err := tufrepo.Open(t.Context(), empty, f.keys, f.opts); !errors.Is(err, tufrepo.ErrNotInitialized) {
		t.Errorf("Open of empty store: err = %v, want ErrNotInitialized", err)
	}
}

func TestInitRefusesExistingRepository(t *testing.T) {
	f := newFixture(t, nil)
	f.add(fwPath, []byte("fw"), "")
	before := f.list("")
	if _, err := tufrepo.Init(t.Context(), f.store, ed25519Keys(t), f.opts); !errors.Is(err, tufrepo.ErrExists) {
		t.Fatalf("second Init: err = %v, want ErrExists", err)
	}
	if after := f.list(""); !slices.Equal(before, after) {
		t.Fatalf("refused Init changed the store: %q -> %q", before, after)
	}
	if _, err := f.newDevice().refresh().GetTargetInfo(fwPath); err != nil {
		t.Fatalf("repository unusable after refused Init: %v", err)
	}
}

func TestInitKeyTypes(t *testing.T) {
	t.Run("P-256 works end to end", func(t *testing.T) {
		store, _ := blob.NewFS(t.TempDir())
		k := tufrepo.Keys{Root: ecdsaSigner(t, elliptic.P256()), Targets: ecdsaSigner(t, elliptic.P256()),
			Snapshot: ecdsaSigner(t, elliptic.P256()), Timestamp: ecdsaSigner(t, elliptic.P256())}
		root, err := tufrepo.Init(t.Context(), store, k, tufrepo.Options{})
		if err != nil {
			t.Fatalf("Init with P-256 keys: %v", err)
		}
		f := &fixture{t: t, fs: store, store: store, keys: k, root: root, srv: serveStore(t, store)}
		if f.repo, err = tufrepo.Open(t.Context(), store, k, tufrepo.Options{}); err != nil {
			t.Fatal(err)
		}
		f.add(fwPath, []byte("p256"), "")
		dev := f.newDevice()
		if data, err := dev.download(dev.refresh(), fwPath); err != nil || string(data) != "p256" {
			t.Fatalf("P-256 repository: %q, %v", data, err)
		}
	})
	t.Run("mislabelled or missing keys refused", func(t *testing.T) {
		good := ed25519Keys(t)
		for name, k := range map[string]tufrepo.Keys{
			"P-384 timestamp": {Root: good.Root, Targets: good.Targets, Snapshot: good.Snapshot, Timestamp: ecdsaSigner(t, elliptic.P384())},
			"P-521 root":      {Root: ecdsaSigner(t, elliptic.P521()), Targets: good.Targets, Snapshot: good.Snapshot, Timestamp: good.Timestamp},
			"no targets key":  {Root: good.Root, Snapshot: good.Snapshot, Timestamp: good.Timestamp},
		} {
			store, _ := blob.NewFS(t.TempDir())
			if _, err := tufrepo.Init(t.Context(), store, k, tufrepo.Options{}); err == nil {
				t.Errorf("Init with %s succeeded", name)
			}
			if keys, _ := store.List(t.Context(), ""); len(keys) != 0 {
				t.Errorf("refused Init with %s wrote %q", name, keys)
			}
		}
	})
}

// TestAddTargetRefusesBadUploads: path traversal, URL tricks, empty and
// mis-declared bodies, oversize bodies, bad custom metadata and duplicate
// releases are refused and publish nothing.
func TestAddTargetRefusesBadUploads(t *testing.T) {
	f := newFixture(t, nil)
	f.opts.MaxTargetLength = 1 << 20
	var err error
	if f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts); err != nil {
		t.Fatal(err)
	}
	f.add(fwPath, []byte("published"), fwCustom)
	before := versionsOf(f.repo)
	beforeKeys := f.list("")

	tests := []struct {
		name    string
		path    string
		body    io.Reader
		length  int64
		custom  string
		wantErr error
	}{
		{"traversal", "../../etc/passwd", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"inner traversal", "edge-gw/../../../tuf/timestamp.json", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"absolute", "/edge-gw/1.0/fw.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"double slash", "edge-gw//fw.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"trailing slash", "edge-gw/1.0/", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"dot segment", "edge-gw/./fw.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"hidden", "edge-gw/1.0/.fw.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"backslash", `edge-gw\..\fw.bin`, strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"url query", "edge-gw/1.0/fw.bin?x=1", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"percent escape", "edge-gw/%2e%2e/fw.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"space", "edge-gw/1.0/fw bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"NUL", "edge-gw/1.0/fw\x00.bin", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"empty path", "", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"long path", strings.Repeat("a/", 300) + "fw", strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"long segment", "m/1/" + strings.Repeat("f", tufrepo.MaxTargetPathSegment+1), strings.NewReader("x"), 1, "", tufrepo.ErrInvalidTarget},
		{"empty body declared", "m/1/a.bin", strings.NewReader(""), 0, "", tufrepo.ErrInvalidTarget},
		{"empty body unknown length", "m/1/a.bin", strings.NewReader(""), -1, "", tufrepo.ErrInvalidTarget},
		{"short body", "m/1/a.bin", strings.NewReader("12345"), 10, "", tufrepo.ErrLengthMismatch},
		{"long body", "m/1/a.bin", strings.NewReader("1234567890"), 5, "", tufrepo.ErrLengthMismatch},
		{"negative length", "m/1/a.bin", strings.NewReader("x"), -5, "", tufrepo.ErrInvalidTarget},
		{"declared too large", "m/1/a.bin", strings.NewReader("x"), 1<<20 + 1, "", tufrepo.ErrTooLarge},
		{"endless body", "m/1/a.bin", endless{}, -1, "", tufrepo.ErrTooLarge},
		{"custom not JSON", "m/1/a.bin", strings.NewReader("x"), 1, `{"model":`, tufrepo.ErrInvalidTarget},
		{"custom not object", "m/1/a.bin", strings.NewReader("x"), 1, `["edge-gw"]`, tufrepo.ErrInvalidTarget},
		{"custom null", "m/1/a.bin", strings.NewReader("x"), 1, `null`, tufrepo.ErrInvalidTarget},
		{"custom float", "m/1/a.bin", strings.NewReader("x"), 1, `{"release_counter":1.5}`, tufrepo.ErrInvalidTarget},
		{"custom trailing data", "m/1/a.bin", strings.NewReader("x"), 1, `{"a":1}{"b":2}`, tufrepo.ErrInvalidTarget},
		{"custom too large", "m/1/a.bin", strings.NewReader("x"), 1, `{"a":"` + strings.Repeat("x", tufrepo.MaxCustomSize) + `"}`, tufrepo.ErrTooLarge},
		{"duplicate release", fwPath, strings.NewReader("other firmware"), -1, "", tufrepo.ErrTargetExists},
		{"duplicate release same bytes", fwPath, strings.NewReader("published"), 9, fwCustom, tufrepo.ErrTargetExists},
	}
	for _, tc := range tests {
		var custom json.RawMessage
		if tc.custom != "" {
			custom = json.RawMessage(tc.custom)
		}
		_, err := f.repo.AddTarget(t.Context(), tc.path, tc.body, tc.length, custom)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.wantErr)
		}
		if got := versionsOf(f.repo); got != before {
			t.Fatalf("%s: versions changed %v -> %v", tc.name, before, got)
		}
		if keys := f.list(""); !slices.Equal(keys, beforeKeys) {
			t.Fatalf("%s: store changed:\n%q\n->\n%q", tc.name, beforeKeys, keys)
		}
	}
	if data, err := f.newDevice().download(f.newDevice().refresh(), fwPath); err != nil || string(data) != "published" {
		t.Fatalf("published release after refusals: %q, %v", data, err)
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestCustomMetadataNormalized: duplicate keys cannot make the published
// bytes differ from what was signed; whitespace is dropped.
func TestCustomMetadataNormalized(t *testing.T) {
	f := newFixture(t, nil)
	tgt := f.add(fwPath, []byte("fw"), `{ "release_counter": 1, "model": "edge-gw", "release_counter": 7 }`)
	if string(tgt.Custom) != `{"model":"edge-gw","release_counter":7}` {
		t.Fatalf("custom = %s", tgt.Custom)
	}
	info, err := f.newDevice().refresh().GetTargetInfo(fwPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(*info.Custom) != string(tgt.Custom) {
		t.Fatalf("device sees custom %s, repo recorded %s", *info.Custom, tgt.Custom)
	}
}

func TestValidTargetPath(t *testing.T) {
	for _, p := range []string{"fw.bin", "edge-gw/1.0.1/fw.bin", "edge-gw/1.0.1-rc.1+build.5/fw_v2.img", "a/b/c/d~e"} {
		if err := tufrepo.ValidTargetPath(p); err != nil {
			t.Errorf("ValidTargetPath(%q) = %v", p, err)
		}
		if err := blob.ValidKey(tufrepo.TargetKey(p, strings.Repeat("f", 128))); err != nil {
			t.Errorf("TargetKey(%q) is not a valid blob key: %v", p, err)
		}
	}
}

// FuzzValidTargetPath: every accepted path maps to a valid blob key under
// targets/ for both hash lengths (SHA-256, and SHA-512 in older repositories).
func FuzzValidTargetPath(f *testing.F) {
	for _, s := range []string{fwPath, "../x", "a//b", "a/.b", "a/b/", strings.Repeat("a/", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if tufrepo.ValidTargetPath(p) != nil {
			return
		}
		for _, n := range []int{64, 128} {
			k := tufrepo.TargetKey(p, strings.Repeat("0", n))
			if err := blob.ValidKey(k); err != nil || !strings.HasPrefix(k, "targets/") {
				t.Fatalf("accepted path %q gives blob key %q: %v", p, k, err)
			}
		}
	})
}
