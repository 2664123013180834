package tufrepo_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/offline"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestBundleOutlivesOnlineMetadataAndIsNeverPublished: an offline bundle
// carries the current versions with a 30-day timestamp and snapshot, signed
// by the online keys, and the whole root chain; a device that holds root 1
// and an older timestamp verifies it with go-tuf's stock updater 20 days
// later, when fosterd's own timestamp has long expired. Nothing of it
// reaches the store or what fosterd serves.
func TestBundleOutlivesOnlineMetadataAndIsNeverPublished(t *testing.T) {
	f := newFixture(t, nil)
	f.add("edge-gw/1.0.0/fw.bin", []byte("v1"), custom("edge-gw", "1.0.0", 1))
	dev := f.newDevice()
	dev.refresh() // trusts root 1 and the timestamp of 1.0.0

	for range 2 { // two root rotations (expiry only), signed by the root key
		staged, err := tufrepo.StageRoot(f.repo.RootJSON(), tufrepo.RootChange{}, f.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := f.repo.PublishStaged(t.Context(), ceremony(t, staged, holderOf(t, f.keys.Root)), nil); err != nil {
			t.Fatal(err)
		}
	}
	body := []byte("release 2.0.0")
	f.add("edge-gw/2.0.0/fw.bin", body, custom("edge-gw", "2.0.0", 2))

	storedTS := read(t, f.fs, "tuf/timestamp.json")
	servedTS, _, _, err := f.repo.Metadata(t.Context(), "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	before := versionsOf(f.repo)
	b, err := f.repo.Bundle(t.Context(), "edge-gw/2.0.0/fw.bin", 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if versionsOf(f.repo) != before || !bytes.Equal(read(t, f.fs, "tuf/timestamp.json"), storedTS) {
		t.Fatal("exporting a bundle published something")
	}
	if served, _, _, _ := f.repo.Metadata(t.Context(), "timestamp.json"); !bytes.Equal(served, servedTS) {
		t.Fatal("fosterd serves the bundle's timestamp")
	}
	if b.Versions.Timestamp != before[3] || b.Versions.Snapshot != before[2] || b.Versions.Root != 3 {
		t.Fatalf("bundle versions %+v, repository %v", b.Versions, before)
	}
	if want := f.clock.Now().Add(30 * 24 * time.Hour); b.Expires.Before(want.Add(-2*time.Second)) || b.Expires.After(want) {
		t.Fatalf("bundle expires %s, want ~%s", b.Expires, want)
	}
	var keys []string
	for _, bf := range b.Files {
		keys = append(keys, bf.Key)
	}
	for _, want := range []string{"tuf/1.root.json", "tuf/2.root.json", "tuf/3.root.json", "tuf/timestamp.json",
		"tuf/" + itoa(before[2]) + ".snapshot.json", "tuf/" + itoa(before[1]) + ".targets.json"} {
		if !slices.Contains(keys, want) {
			t.Errorf("bundle lacks %s (has %v)", want, keys)
		}
	}
	if !slices.ContainsFunc(keys, func(k string) bool { return strings.HasSuffix(k, ".models/edge-gw.json") }) {
		t.Errorf("bundle lacks the model's role (has %v)", keys)
	}

	// The bundle as a mirror: a store holding only its files and the image.
	mfs, err := blob.NewFS(filepath.Join(t.TempDir(), "mirror"))
	if err != nil {
		t.Fatal(err)
	}
	for _, bf := range b.Files {
		if err := mfs.Put(t.Context(), bf.Key, bytes.NewReader(bf.Data), int64(len(bf.Data))); err != nil {
			t.Fatal(err)
		}
	}
	img := tufrepo.TargetKey(b.Target.Path, b.Target.SHA256)
	if err := mfs.Put(t.Context(), img, bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	later := f.clock.Now().Add(20 * 24 * time.Hour)
	if err := dev.updater(later).Refresh(); err == nil {
		t.Fatal("fosterd's own metadata verified 20 days later")
	}
	mirror := &fixture{t: t, fs: mfs, store: mfs, root: f.root, srv: serveStore(t, mfs)}
	offlineDev := &client{f: mirror, metaDir: dev.metaDir}
	up := offlineDev.updater(later)
	if err := up.Refresh(); err != nil {
		t.Fatalf("the bundle does not verify 20 days later: %v", err)
	}
	if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 3 {
		t.Fatalf("device walked to root %d, want 3", v)
	}
	ts := up.GetTrustedMetadataSet().Timestamp
	if at, ok := ts.Signed.UnrecognizedFields[offline.SignedAtField].(string); !ok || at != b.SignedAt.Format(time.RFC3339) {
		t.Fatalf("timestamp %s = %v, want %s", offline.SignedAtField, ts.Signed.UnrecognizedFields[offline.SignedAtField], b.SignedAt)
	}
	got, err := offlineDev.download(up, "edge-gw/2.0.0/fw.bin")
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("download from the bundle: %q, %v", got, err)
	}
	// Past the bundle's lifetime it is refused (freeze).
	if err := (&client{f: mirror, metaDir: t.TempDir()}).updater(b.Expires.Add(time.Minute)).Refresh(); !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
		t.Fatalf("expired bundle: err = %v, want expired metadata", err)
	}
}

func TestBundleRefusesUnknownTargetAndUnboundedLifetime(t *testing.T) {
	f := newFixture(t, nil)
	f.add("edge-gw/1.0.0/fw.bin", []byte("v1"), custom("edge-gw", "1.0.0", 1))
	if _, err := f.repo.Bundle(t.Context(), "edge-gw/9.9.9/fw.bin", 24*time.Hour); !errors.Is(err, tufrepo.ErrTargetNotFound) {
		t.Fatalf("unknown target: err = %v", err)
	}
	for _, d := range []time.Duration{0, time.Minute, offline.MaxLifetime + time.Hour} {
		if _, err := f.repo.Bundle(t.Context(), "edge-gw/1.0.0/fw.bin", d); err == nil {
			t.Fatalf("lifetime %s accepted", d)
		}
	}
}

func read(t *testing.T, s blob.Store, key string) []byte {
	t.Helper()
	rc, _, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	return buf.Bytes()
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// A bundle carries the role that lists its release: the model's role for a
// recent one, plus its bin for an archived one; and every bin of the model
// for a release whose rollout terms restrict it, since a device finds its
// signed groups in the bin its own serial hashes to.
func TestBundleCarriesTheBinsItsDevicesNeed(t *testing.T) {
	f := newBinnedFixture(t, 4, 2)
	for i := 1; i <= 12; i++ {
		f.add(fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i), []byte(fmt.Sprint(i)), custom("edge-gw", fmt.Sprintf("1.0.%d", i), i))
	}
	bins := func(b *tufrepo.Bundle) (out []string) {
		for _, bf := range b.Files {
			if strings.Contains(bf.Key, "/bins-") {
				out = append(out, bf.Key)
			}
		}
		return out
	}
	recent, err := f.repo.Bundle(t.Context(), "edge-gw/1.0.12/fw.bin", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := bins(recent); len(got) != 0 || recent.Staged {
		t.Fatalf("a recent release's bundle carries bins %v (staged %v)", got, recent.Staged)
	}
	_, role, _ := f.repo.Lookup("edge-gw/1.0.2/fw.bin")
	archived, err := f.repo.Bundle(t.Context(), "edge-gw/1.0.2/fw.bin", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := bins(archived); len(got) != 1 || !strings.Contains(got[0], role+".json") {
		t.Fatalf("an archived release's bundle carries bins %v, want its own %s", got, role)
	}
	if _, err := f.repo.SetTerms(t.Context(), "edge-gw/1.0.12/fw.bin", &rollout.Terms{ID: "r-1", Seed: testSeed, Share: 2500, State: "running"}); err != nil {
		t.Fatal(err)
	}
	staged, err := f.repo.Bundle(t.Context(), "edge-gw/1.0.12/fw.bin", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	all := 0
	for _, ri := range f.repo.Roles() {
		if strings.HasPrefix(ri.Name, "models/edge-gw/bins-") {
			all++
		}
	}
	if got := bins(staged); !staged.Staged || all < 2 || len(got) != all {
		t.Fatalf("a staged release's bundle carries %d bins (staged %v), want all %d", len(got), staged.Staged, all)
	}
}
