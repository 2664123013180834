package tufrepo_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// dbArbiter is fosterd's Arbiter (ota/instance repoArbiter): the store's
// publish record.
type dbArbiter struct {
	db *store.DB
	// failRecord, if set, makes the next Record fail (a database that
	// drops the connection after the publish was written).
	failRecord atomic.Bool
}

func (a *dbArbiter) Publish(ctx context.Context, fn func(tufrepo.Lease) error) error {
	return a.db.PublishTUF(ctx, func(l *store.TUFLock) error { return fn(leaseOf{l, a}) })
}

func (a *dbArbiter) Published(ctx context.Context) (int64, string, error) {
	return a.db.PublishedTUF(ctx)
}

type leaseOf struct {
	*store.TUFLock
	a *dbArbiter
}

func (l leaseOf) Record(ctx context.Context, v int64, etag string) error {
	if l.a.failRecord.CompareAndSwap(true, false) {
		return errors.New("injected: connection lost")
	}
	return l.TUFLock.Record(ctx, v, etag)
}

// replicas are fosterd replicas: Repos on one blob store, each with its own
// connection pool to one PostgreSQL database.
type replicas struct {
	*fixture // replica 0 is the fixture's repo
	repos    []*tufrepo.Repo
	dbs      []*store.DB
	arbs     []*dbArbiter
}

func newReplicas(t *testing.T, bs blob.Store, n int) *replicas {
	t.Helper()
	dsn := storetest.PostgresDSN(t)
	f := &fixture{t: t, store: bs, keys: ed25519Keys(t), clock: newClock()}
	if fs, ok := bs.(*blob.FS); ok {
		f.fs = fs
	}
	f.opts = tufrepo.Options{Now: f.clock.Now}
	var err error
	if f.root, err = tufrepo.Init(t.Context(), bs, f.keys, f.opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	rs := &replicas{fixture: f}
	for range n {
		db, err := store.Open(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		arb := &dbArbiter{db: db}
		opts := f.opts
		opts.Arbiter = arb
		repo, err := tufrepo.Open(t.Context(), bs, f.keys, opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		rs.repos, rs.dbs, rs.arbs = append(rs.repos, repo), append(rs.dbs, db), append(rs.arbs, arb)
	}
	f.repo = rs.repos[0]
	f.srv = serveStore(t, bs)
	return rs
}

func fileStore(t *testing.T) blob.Store {
	fs, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// timestampVersion reads the published timestamp.json's version.
func (rs *replicas) published() (int64, string) {
	rs.t.Helper()
	v, etag, err := rs.dbs[0].PublishedTUF(rs.t.Context())
	if err != nil {
		rs.t.Fatal(err)
	}
	return v, etag
}

// TestReplicasConcurrentPublishesDoNotClobber: two fosterd replicas on one
// database and one blob store publish releases (half through the store
// transaction that records the release, as fosterd's release add does, half
// on their own), revoke one and refresh, all at once. Every publish gets its
// own timestamp version (none written twice over another), every release
// is in the result, and go-tuf's stock client verifies it all.
func TestReplicasConcurrentPublishesDoNotClobber(t *testing.T) {
	stores := map[string]func(*testing.T) blob.Store{
		"file": fileStore,
		"s3": func(t *testing.T) blob.Store {
			if testing.Short() {
				t.Skip("real S3 server: not in -short mode")
			}
			bs, err := blob.Open(context.Background(), s3test.Start(t))
			if err != nil {
				t.Fatal(err)
			}
			return bs
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			rs := newReplicas(t, open(t), 2)
			ctx := t.Context()
			const perReplica = 20 // per replica: 10 recorded releases, 10 plain publishes
			var wg sync.WaitGroup
			errs := make(chan error, 2*perReplica)
			var paths []string
			for r := range 2 {
				repo, db := rs.repos[r], rs.dbs[r]
				// Recorded releases, one at a time per replica as fosterd's
				// release add does, of a model of the replica's own (the
				// store refuses counters not above the model's latest).
				model := fmt.Sprintf("m%d", r)
				if _, err := db.CreateModel(ctx, store.Model{Name: model}); err != nil {
					t.Fatal(err)
				}
				var recorded []string
				for i := range perReplica / 2 {
					recorded = append(recorded, fmt.Sprintf("%s/1.0.%d/fw.bin", model, i))
				}
				paths = append(paths, recorded...)
				wg.Go(func() {
					for i, p := range recorded {
						version := fmt.Sprintf("1.0.%d", i)
						custom := fmt.Sprintf(`{"model":%q,"version":%q,"release_counter":%d,"hardware_ids":[]}`, model, version, i+1)
						pend, err := repo.Upload(ctx, tufrepo.Upload{Path: p, Body: strings.NewReader(p), Length: int64(len(p)), Custom: []byte(custom)})
						if err != nil {
							errs <- err
							return
						}
						_, err = db.PublishRelease(ctx, store.Release{Model: model, Version: version, Counter: int64(i + 1),
							TargetPath: p, SHA256: pend.Target().SHA256, Length: int64(len(p)), CreatedBy: "test"},
							func(l *store.TUFLock, _ store.Release, _ *store.Release) error {
								_, err := repo.CommitLeased(ctx, pend, l)
								return err
							})
						repo.Discard(ctx, pend)
						errs <- err
					}
				})
				// Plain publishes of one shared model, all at once.
				for i := range perReplica / 2 {
					p := fmt.Sprintf("edge-gw/%d.%d.0/fw.bin", r+1, i)
					paths = append(paths, p)
					custom := fmt.Sprintf(`{"model":"edge-gw","version":"%d.%d.0","release_counter":%d,"hardware_ids":[]}`, r+1, i, 2*i+r+1)
					wg.Go(func() {
						_, err := repo.AddTarget(ctx, p, strings.NewReader(p), int64(len(p)), []byte(custom))
						errs <- err
					})
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			for r, db := range rs.dbs {
				if rels, err := db.ListReleases(ctx, fmt.Sprintf("m%d", r)); err != nil || len(rels) != perReplica/2 {
					t.Fatalf("replica %d recorded %d releases, %v", r, len(rels), err)
				}
			}

			// Each replica serves what it last published until it syncs.
			for i, repo := range rs.repos {
				if err := repo.Sync(ctx); err != nil {
					t.Fatalf("replica %d Sync: %v", i, err)
				}
			}
			_, _, _, ts0 := rs.repos[0].Versions()
			_, _, _, ts1 := rs.repos[1].Versions()
			v, _ := rs.published()
			// Every publish moved timestamp by exactly one from version 1:
			// none was written twice at one version.
			if want := int64(1 + 2*perReplica); ts0 != want || ts1 != want || v != want {
				t.Fatalf("after %d publishes from version 1, replicas serve timestamp %d and %d and the database records %d; want %d", 2*perReplica, ts0, ts1, v, want)
			}

			// A fresh process (the repository's own verification) and
			// go-tuf's stock client see every release.
			fresh, err := tufrepo.Open(ctx, rs.store, rs.keys, rs.opts)
			if err != nil {
				t.Fatalf("reopening: %v", err)
			}
			up := rs.newDevice().refresh()
			for _, p := range paths {
				if _, _, ok := fresh.Lookup(p); !ok {
					t.Errorf("%s is not in the repository", p)
				}
				if _, err := up.GetTargetInfo(p); err != nil {
					t.Errorf("client: %s: %v", p, err)
				}
			}
			publishes := int64(2 * perReplica)

			// A refresh on either replica goes on from the newest version.
			rs.clock.Set(time.Now().Add(20 * time.Hour))
			if err := rs.repos[1].Refresh(ctx, 6*time.Hour); err != nil {
				t.Fatal(err)
			}
			if v, _ := rs.published(); v != 2+publishes {
				t.Fatalf("refresh recorded timestamp %d, want %d", v, 2+publishes)
			}
			rs.clock.Set(time.Now())
		})
	}
}

// TestReplicaServesWhatAnotherPublished: a replica that does not publish
// follows the database's record and serves the other's new timestamp
// within its sync interval, as a whole new state.
func TestReplicaServesWhatAnotherPublished(t *testing.T) {
	rs := newReplicas(t, fileStore(t), 2)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	const interval = 20 * time.Millisecond
	go rs.repos[1].Follow(ctx, interval, func(err error) { t.Errorf("Follow: %v", err) })

	// Readers of the follower never see a timestamp whose snapshot it does
	// not serve from memory (no mix of two states).
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _, snap, _ := rs.repos[1].Versions()
			if _, _, ok, err := rs.repos[1].Metadata(ctx, fmt.Sprintf("%d.snapshot.json", snap)); err != nil {
				t.Error(err)
			} else if !ok {
				// Versions and Metadata are two loads: a swap between them
				// is fine, but the newer state must then hold a newer snapshot.
				if _, _, now, _ := rs.repos[1].Versions(); now == snap {
					t.Errorf("snapshot %d not served by the state that names it", snap)
				}
			}
		}
	})

	for i := range 3 {
		p := fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i)
		custom := fmt.Sprintf(`{"model":"edge-gw","version":"1.0.%d","release_counter":%d,"hardware_ids":[]}`, i, i+1)
		rs.add(p, []byte(p), custom)
		want, wantETag, _, _ := rs.repos[0].Metadata(ctx, "timestamp.json")
		published := time.Now()
		for {
			got, etag, _, err := rs.repos[1].Metadata(ctx, "timestamp.json")
			if err != nil {
				t.Fatal(err)
			}
			if etag == wantETag && string(got) == string(want) {
				break
			}
			if time.Since(published) > 5*time.Second {
				t.Fatalf("follower still serves an old timestamp 5 s after the other replica published (sync interval %v)", interval)
			}
			time.Sleep(time.Millisecond)
		}
		if _, _, ok := rs.repos[1].Lookup(p); !ok {
			t.Fatalf("follower serves the new timestamp but not the release %s", p)
		}
	}
	close(stop)
	readers.Wait()
}

// TestReplicaDoesNotOverwriteUnrecordedPublish: a replica wrote a publish
// to the store and then failed to record it in the database. The other
// replica, whose record says nothing changed, still must not publish over
// it at the same version: it checks the store's timestamp under the lock.
func TestReplicaDoesNotOverwriteUnrecordedPublish(t *testing.T) {
	rs := newReplicas(t, fileStore(t), 2)
	ctx := t.Context()
	rs.arbs[0].failRecord.Store(true)
	const p1 = "edge-gw/1.0.1/fw.bin"
	if _, err := rs.repos[0].AddTarget(ctx, p1, strings.NewReader("one"), 3, []byte(fwCustom)); err == nil || !strings.Contains(err.Error(), "recording it") {
		t.Fatalf("AddTarget with a failing record: %v, want a recording error", err)
	}
	if v, _ := rs.published(); v != 0 { // nothing recorded yet: a fresh database
		t.Fatalf("recorded %d after a failed record", v)
	}
	const p2 = "edge-gw/1.0.2/fw.bin"
	if _, err := rs.repos[1].AddTarget(ctx, p2, strings.NewReader("two"), 3, []byte(`{"model":"edge-gw","version":"1.0.2","release_counter":2,"hardware_ids":[]}`)); err != nil {
		t.Fatal(err)
	}
	up := rs.newDevice().refresh()
	for _, p := range []string{p1, p2} {
		if _, err := up.GetTargetInfo(p); err != nil {
			t.Errorf("%s lost: %v", p, err)
		}
	}
	if _, _, _, ts := rs.repos[1].Versions(); ts != 3 {
		t.Fatalf("timestamp %d, want 3", ts)
	}
	if v, _ := rs.published(); v != 3 {
		t.Fatalf("recorded %d, want 3", v)
	}
}

// TestReplicaRefusesRollbackOfStore: timestamp.json in the store went back
// to an older version (a bucket restored from a backup, an attacker with
// write access): a replica refuses to publish over it rather than re-use
// version numbers devices have already seen.
func TestReplicaRefusesRollbackOfStore(t *testing.T) {
	rs := newReplicas(t, fileStore(t), 1)
	ctx := t.Context()
	old, _, _, err := rs.repo.Metadata(ctx, "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	rs.add(fwPath, []byte("one"), fwCustom)
	if err := rs.store.Put(ctx, "tuf/timestamp.json", strings.NewReader(string(old)), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	_, err = rs.repo.AddTarget(ctx, "edge-gw/1.0.2/fw.bin", strings.NewReader("two"), 3, []byte(`{"model":"edge-gw","version":"1.0.2","release_counter":2,"hardware_ids":[]}`))
	if !errors.Is(err, tufrepo.ErrInconsistent) || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("publish over a rolled-back store: %v, want ErrInconsistent (rollback)", err)
	}
}

// BenchmarkPublishArbiter measures what the PostgreSQL arbiter adds to one
// publish (lock, read timestamp.json back, record), against a lone writer.
func BenchmarkPublishArbiter(b *testing.B) {
	for _, bs := range []string{"file", "s3"} {
		for _, arb := range []bool{false, true} {
			b.Run(fmt.Sprintf("store=%s/arbiter=%v", bs, arb), func(b *testing.B) {
				ctx := context.Background()
				var st blob.Store
				if bs == "file" {
					fs, err := blob.NewFS(filepath.Join(b.TempDir(), "blobs"))
					if err != nil {
						b.Fatal(err)
					}
					st = fs
				} else {
					var err error
					if st, err = blob.Open(context.Background(), s3test.Start(b)); err != nil {
						b.Fatal(err)
					}
				}
				keys := ed25519Keys(b)
				if _, err := tufrepo.Init(ctx, st, keys, tufrepo.Options{}); err != nil {
					b.Fatal(err)
				}
				var opts tufrepo.Options
				if arb {
					db, err := store.Open(ctx, storetest.PostgresDSN(b))
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { db.Close() })
					opts.Arbiter = &dbArbiter{db: db}
				}
				r, err := tufrepo.Open(ctx, st, keys, opts)
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := range b.N {
					p := fmt.Sprintf("edge-gw/1.0.%d/fw.bin", i)
					custom := fmt.Sprintf(`{"model":"edge-gw","version":"1.0.%d","release_counter":%d,"hardware_ids":[]}`, i, i+1)
					if _, err := r.AddTarget(ctx, p, strings.NewReader(p), int64(len(p)), []byte(custom)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
