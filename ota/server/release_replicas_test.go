package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// TestConcurrentReleasesOfOneModelGetTheirOwnCounters: two `release add`
// of the same model, without --counter, overlap: the second is checked
// while the first is still publishing. On two fosterd replicas sharing
// PostgreSQL (and on one fosterd with SQLite) both land, the counter of
// each chosen under the publish lock, distinct and increasing in publish
// order, and signed as such for go-tuf's stock client. A counter given
// explicitly, or a version, that the overlapping publish made stale is
// still refused (409 stale_release) and publishes nothing.
func TestConcurrentReleasesOfOneModelGetTheirOwnCounters(t *testing.T) {
	// Each metadata write of a publish is followed by a 300 ms pause, so a
	// publish holds the lock for about a second. The second add starts
	// only once the first has written its first metadata object (it holds
	// the lock then), so the two overlap however loaded the machine is.
	t.Cleanup(env.TestPublishDelay.Override("300ms"))
	for _, backend := range []string{"sqlite, one fosterd", "postgres, two replicas"} {
		t.Run(backend, func(t *testing.T) {
			ov := instance.Overrides{PublicRepository: true}
			dir := t.TempDir()
			if _, err := instance.Init(context.Background(), dir, instance.InitOptions{}); err != nil {
				t.Fatal(err)
			}
			var a, b *fixture
			if backend == "sqlite, one fosterd" {
				a = serveInstance(t, dir, ov)
				b = a
			} else {
				ov.DB = storetest.PostgresDSN(t)
				a, b = serveInstance(t, dir, ov), serveInstance(t, dir, ov)
			}
			ctx := t.Context()
			a.mustJSON(a.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)

			// add posts a release to f; the answer goes to out.
			add := func(wg *sync.WaitGroup, f *fixture, query string, out *apiResp) {
				wg.Go(func() {
					req := "/v1/releases?model=edge-gw&name=fw.bin&" + query
					*out = f.do(f.admin, "POST", req, []byte("firmware "+query))
				})
			}
			// overlap runs two adds, the second (on b) once the first (on
			// a) is publishing: a new object under the shared blob store's
			// tuf/ shows it holds the publish lock.
			overlap := func(q1, q2 string) (apiResp, apiResp) {
				var wg sync.WaitGroup
				var r1, r2 apiResp
				before := tufObjects(t, dir)
				add(&wg, a, q1, &r1)
				deadline := time.Now().Add(60 * time.Second)
				for tufObjects(t, dir) == before && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				add(&wg, b, q2, &r2)
				wg.Wait()
				return r1, r2
			}

			const rounds = 3
			var versions []string
			for i := range rounds {
				v1, v2 := fmt.Sprintf("1.0.%d", 2*i+1), fmt.Sprintf("1.0.%d", 2*i+2)
				r1, r2 := overlap("version="+v1, "version="+v2)
				if r1.status != 201 || r2.status != 201 {
					t.Fatalf("round %d: %s: %d %s; %s: %d %s", i, v1, r1.status, r1.body, v2, r2.status, r2.body)
				}
				versions = append(versions, v1, v2)
			}

			// Recorded in publish order (ids) with counters 1, 2, 3...
			rels, err := a.in.Store.ListReleases(ctx, "edge-gw")
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(rels, func(x, y store.Release) int { return int(x.ID - y.ID) })
			if len(rels) != len(versions) {
				t.Fatalf("%d releases recorded, want %d", len(rels), len(versions))
			}
			for i, rel := range rels {
				if rel.Version != versions[i] || rel.Counter != int64(i+1) {
					t.Fatalf("release %d (in publish order) is %s counter %d, want %s counter %d", i, rel.Version, rel.Counter, versions[i], i+1)
				}
			}

			// Published with those counters signed, for go-tuf's client.
			for _, f := range []*fixture{a, b} {
				if err := f.in.Repo.Sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
			up := stockClient(t, a)
			for _, rel := range rels {
				ti, err := up.GetTargetInfo(rel.TargetPath)
				if err != nil {
					t.Fatalf("client: %s: %v", rel.TargetPath, err)
				}
				var c struct {
					ReleaseCounter int64 `json:"release_counter"`
				}
				if err := json.Unmarshal(*ti.Custom, &c); err != nil || c.ReleaseCounter != rel.Counter {
					t.Fatalf("%s: signed release_counter %d (%v), recorded %d", rel.TargetPath, c.ReleaseCounter, err, rel.Counter)
				}
			}

			// What the first of two overlapping adds publishes makes the
			// second stale: refused, nothing of it published.
			next := int64(len(rels) + 1)
			refusals := []struct{ name, first, second string }{
				{"explicit counter", "version=2.0.0", fmt.Sprintf("version=2.0.1&counter=%d", next)},
				{"version below", "version=3.0.1", "version=3.0.0"},
			}
			for _, tt := range refusals {
				r1, r2 := overlap(tt.first, tt.second)
				if r1.status != 201 || r2.status != 409 || r2.code() != "stale_release" {
					t.Fatalf("%s: first %d %s; second %d %s, want 409 stale_release", tt.name, r1.status, r1.body, r2.status, r2.body)
				}
				before := a.repoSnapshot()
				// A stale explicit counter without any overlap, too.
				if r := a.do(a.admin, "POST", "/v1/releases?model=edge-gw&name=fw.bin&version=9.0.0&counter=1", []byte("stale")); r.status != 409 || r.code() != "stale_release" {
					t.Fatalf("stale counter: %d %s", r.status, r.body)
				}
				if after := a.repoSnapshot(); after != before {
					t.Fatalf("refused release changed the repository:\n%s\n->\n%s", before, after)
				}
			}
			for _, f := range []*fixture{a, b} {
				if err := f.in.Repo.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				for _, p := range []string{"edge-gw/2.0.1/fw.bin", "edge-gw/3.0.0/fw.bin", "edge-gw/9.0.0/fw.bin"} {
					if _, _, ok := f.in.Repo.Lookup(p); ok {
						t.Fatalf("refused %s is published", p)
					}
				}
			}
			if rels, _ := a.in.Store.ListReleases(ctx, "edge-gw"); len(rels) != int(next)+1 {
				t.Fatalf("%d releases recorded, want %d", len(rels), next+1)
			}
		})
	}
}

// stockClient refreshes go-tuf's stock updater against f's public
// repository, trusting its first root.
func stockClient(t *testing.T, f *fixture) *updater.Updater {
	t.Helper()
	root, _, _, err := f.in.Repo.Metadata(t.Context(), "1.root.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.New(f.srv.URL+"/tuf", root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = f.srv.URL + "/targets"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = t.TempDir(), t.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(f.anon); err != nil {
		t.Fatal(err)
	}
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatalf("client refresh: %v", err)
	}
	return up
}

// tufObjects counts the metadata objects in dir's file blob store.
func tufObjects(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, "blobs", "tuf"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
