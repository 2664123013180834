package tufrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// legacyAdd publishes targets the way Foster did before stepping stones:
// the model role keeps only the RecentTargets newest, whatever they are.
func legacyAdd(t *testing.T, r *Repo, targets map[string]*metadata.TargetFiles) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin(t.Context())
	for _, e := range entries(targets) {
		model, _ := ModelOf(e.path)
		if err := tx.ensureModel(model); err != nil {
			t.Fatal(err)
		}
		mr, err := tx.edit(ModelRole(model))
		if err != nil {
			t.Fatal(err)
		}
		mr.Signed.Targets[e.path] = e.tf
		if over := len(mr.Signed.Targets) - r.opts.RecentTargets; over > 0 {
			evict := entries(mr.Signed.Targets)[:over]
			for _, ev := range evict {
				delete(mr.Signed.Targets, ev.path)
			}
			if err := tx.archive(model, evict); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tx.commit(); err != nil {
		t.Fatal(err)
	}
}

func stoneTarget(version string, counter int, minFrom string) (string, *metadata.TargetFiles) {
	p := "edge-gw/" + version + "/fw.bin"
	c := map[string]any{"model": "edge-gw", "version": version, "release_counter": counter, "hardware_ids": []string{}}
	if minFrom != "" {
		c["min_from_version"] = minFrom
	}
	b, _ := json.Marshal(c)
	raw := json.RawMessage(b)
	s := sha256.Sum256([]byte(p))
	return p, &metadata.TargetFiles{Path: p, Length: 1, Hashes: metadata.Hashes{"sha256": s[:]}, Custom: &raw}
}

// TestUpgradedRepositoryPromotesStrandedFullImage: a repository published
// before stepping stones has its only full image archived in a bin, out of
// devices' sight. The first publish of an upgraded fosterd, a release or a
// revocation, lays the model out again from all its bins and moves the
// full image up into the model role; later releases keep it there without
// reading the bins again.
func TestUpgradedRepositoryPromotesStrandedFullImage(t *testing.T) {
	for _, first := range []string{"release", "revocation"} {
		t.Run(first, func(t *testing.T) {
			ctx := context.Background()
			st, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
			if err != nil {
				t.Fatal(err)
			}
			keys := benchKeys(t)
			opts := Options{RecentTargets: 4, TargetsPerBin: 2}
			if _, err := Init(ctx, st, keys, opts); err != nil {
				t.Fatal(err)
			}
			old, err := Open(ctx, st, keys, opts)
			if err != nil {
				t.Fatal(err)
			}
			targets := map[string]*metadata.TargetFiles{}
			full, ftf := stoneTarget("1.0.0", 1, "")
			targets[full] = ftf
			for i := 2; i <= 12; i++ {
				p, tf := stoneTarget(fmt.Sprintf("1.1.%d", i), i, "1.0.0")
				targets[p] = tf
			}
			legacyAdd(t, old, targets)
			if _, role, _ := old.Lookup(full); role == ModelRole("edge-gw") {
				t.Fatal("setup: the legacy layout already lists the full image in the model role")
			}

			r, err := Open(ctx, st, keys, opts) // the upgraded fosterd
			if err != nil {
				t.Fatal(err)
			}
			switch first {
			case "release":
				if _, err := r.AddTarget(ctx, "edge-gw/1.2.0/fw.bin", bytes.NewReader([]byte("d")), 1, []byte(`{"model":"edge-gw","version":"1.2.0","release_counter":13,"hardware_ids":[],"min_from_version":"1.0.0"}`)); err != nil {
					t.Fatal(err)
				}
			case "revocation":
				if _, err := r.RemoveTarget(ctx, "edge-gw/1.1.2/fw.bin"); err != nil { // archived, not the stone
					t.Fatal(err)
				}
			}
			if _, role, _ := r.Lookup(full); role != ModelRole("edge-gw") {
				t.Fatalf("after the first %s the full image is in %q, want the model role", first, role)
			}
			mr := r.cur.Load().roles[ModelRole("edge-gw")].md
			if len(mr.Signed.Targets) != 5 {
				t.Fatalf("model role lists %d targets, want 5 (4 newest + the full image)", len(mr.Signed.Targets))
			}
			for i := range 3 {
				v := fmt.Sprintf("1.3.%d", i)
				c := fmt.Sprintf(`{"model":"edge-gw","version":%q,"release_counter":%d,"hardware_ids":[],"min_from_version":"1.0.0"}`, v, 20+i)
				if _, err := r.AddTarget(ctx, "edge-gw/"+v+"/fw.bin", bytes.NewReader([]byte("d")), 1, []byte(c)); err != nil {
					t.Fatal(err)
				}
			}
			if _, role, _ := r.Lookup(full); role != ModelRole("edge-gw") {
				t.Fatalf("after more releases the full image is in %q, want the model role", role)
			}
			// Each target is in exactly one role.
			seen := map[string]string{}
			for name, rl := range r.cur.Load().roles {
				for p := range rl.md.Signed.Targets {
					if prev, dup := seen[p]; dup {
						t.Fatalf("%s is in both %s and %s", p, prev, name)
					}
					seen[p] = name
				}
			}
		})
	}
}
