package tufrepo

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func benchKeys(b testing.TB) Keys {
	gen := func() signature.Signer {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, err := signing.FromPrivateKey(priv)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	return Keys{Root: gen(), Targets: gen(), Snapshot: gen(), Timestamp: gen()}
}

// fakeTarget is a target entry as fosterd publishes it (SHA-256 only,
// Foster's custom metadata), for a blob that is not stored: publishing
// only reads metadata.
func fakeTarget(model string, i int) (string, *metadata.TargetFiles) {
	p := fmt.Sprintf("%s/1.%d.%d/firmware.bin", model, i/1000, i%1000)
	s256 := sha256.Sum256([]byte(p))
	c := []byte(fmt.Sprintf(`{"hardware_ids":["rev-a"],"model":%q,"release_counter":%d,"version":"1.%d.%d"}`, model, i+1, i/1000, i%1000))
	raw := json.RawMessage(c)
	return p, &metadata.TargetFiles{Length: 64 << 20, Hashes: metadata.Hashes{"sha256": s256[:]}, Custom: &raw}
}

// populate publishes n targets of model in one transaction (setup only:
// the benchmark then measures one more release on top).
func populate(b testing.TB, r *Repo, model string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.begin(context.Background())
	for i := range n {
		p, tf := fakeTarget(model, i)
		if err := t.addTarget(p, tf); err != nil {
			b.Fatal(err)
		}
	}
	if err := t.commit(); err != nil {
		b.Fatal(err)
	}
}

func benchStore(b *testing.B, kind string) blob.Store {
	switch kind {
	case "s3":
		s, err := blob.Open(context.Background(), s3test.Start(b))
		if err != nil {
			b.Fatal(err)
		}
		return s
	default:
		s, err := blob.NewFS(filepath.Join(b.TempDir(), "blobs"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
}

// BenchmarkPublishRelease: time to publish one release (a 4 KiB image,
// upload included) into a repository already holding N targets of the same
// model, and the metadata that results. Run:
//
//	go test -run '^$' -bench BenchmarkPublishRelease -benchtime 200x ./ota/tufrepo/
func BenchmarkPublishRelease(b *testing.B) {
	for _, store := range []string{"file", "s3"} {
		for _, n := range []int{1_000, 10_000, 100_000} {
			b.Run(fmt.Sprintf("store=%s/targets=%d", store, n), func(b *testing.B) {
				ctx := context.Background()
				st := benchStore(b, store)
				keys := benchKeys(b)
				if _, err := Init(ctx, st, keys, Options{}); err != nil {
					b.Fatal(err)
				}
				r, err := Open(ctx, st, keys, Options{})
				if err != nil {
					b.Fatal(err)
				}
				populate(b, r, "edge-gw", n)
				body := bytes.Repeat([]byte("x"), 4096)
				b.ResetTimer()
				for i := range b.N {
					_, tf := fakeTarget("edge-gw", n+i)
					p := fmt.Sprintf("edge-gw/9.%d.0/firmware.bin", i)
					if _, err := r.AddTarget(ctx, p, bytes.NewReader(body), int64(len(body)), *tf.Custom); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportSizes(b, r)
			})
		}
	}
}

func reportSizes(b *testing.B, r *Repo) {
	st := r.cur.Load()
	var bins, binBytes, maxBin int
	for n, rl := range st.roles {
		if strings.Contains(n, "/bins-") {
			bins++
			binBytes += len(rl.raw)
			maxBin = max(maxBin, len(rl.raw))
		}
	}
	b.ReportMetric(float64(len(st.roles["models/edge-gw"].raw)), "model-role-B")
	if bins > 0 {
		b.ReportMetric(float64(bins), "bins")
		b.ReportMetric(float64(binBytes/bins), "avg-bin-B")
		b.ReportMetric(float64(maxBin), "max-bin-B")
	}
	b.ReportMetric(float64(len(st.snapshotRaw)), "snapshot-B")
	b.ReportMetric(float64(len(st.timestampRaw)), "timestamp-B")
	b.ReportMetric(float64(len(st.roles[metadata.TARGETS].raw)), "targets-B")
}

// TestPublishScalesWithBinNotTotal is the benchmark's claim as a test (in
// short form): publishing into 20,000 targets costs about what it costs
// into 2,000, not ten times more.
func TestPublishScalesWithBinNotTotal(t *testing.T) {
	if testing.Short() {
		t.Skip("populates large repositories")
	}
	per := map[int]time.Duration{}
	for _, n := range []int{2_000, 20_000} {
		ctx := context.Background()
		st, _ := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
		keys := benchKeys(t)
		Init(ctx, st, keys, Options{})
		r, err := Open(ctx, st, keys, Options{})
		if err != nil {
			t.Fatal(err)
		}
		populate(t, r, "edge-gw", n)
		body := []byte("firmware")
		const releases = 20
		best := time.Hour
		for i := range releases {
			_, tf := fakeTarget("edge-gw", n+i)
			start := time.Now()
			if _, err := r.AddTarget(ctx, fmt.Sprintf("edge-gw/9.%d.0/firmware.bin", i), bytes.NewReader(body), int64(len(body)), *tf.Custom); err != nil {
				t.Fatal(err)
			}
			best = min(best, time.Since(start))
		}
		per[n] = best
		sum := sha256.Sum256(r.cur.Load().snapshotRaw)
		t.Logf("%d targets: best publish %v; snapshot %d bytes (%s...)", n, best, len(r.cur.Load().snapshotRaw), hex.EncodeToString(sum[:4]))
	}
	// 10x the targets: bins hold ~the same number each (they double), so
	// the publish must not cost anywhere near 10x. Generous bound for
	// noisy machines.
	if per[20_000] > 4*per[2_000]+20*time.Millisecond {
		t.Fatalf("publishing into 20,000 targets took %v, into 2,000 %v: growth with total size", per[20_000], per[2_000])
	}
}

// BenchmarkSetTerms: time to widen a staged rollout's wave (re-sign the
// newest release's terms: its model role, snapshot, timestamp) in a model
// already holding N releases, file store with fsync. "start" also measures
// the first terms on a release published without --hold when it is the
// model's stepping stone (the previous stone is looked up in the bins).
// Run:
//
//	go test -run '^$' -bench BenchmarkSetTerms -benchtime 50x -timeout 30m ./ota/tufrepo/
func BenchmarkSetTerms(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		ctx := context.Background()
		st := benchStore(b, "file")
		keys := benchKeys(b)
		if _, err := Init(ctx, st, keys, Options{}); err != nil {
			b.Fatal(err)
		}
		r, err := Open(ctx, st, keys, Options{})
		if err != nil {
			b.Fatal(err)
		}
		populate(b, r, "edge-gw", n)
		newest, _ := fakeTarget("edge-gw", n-1)
		seed := strings.Repeat("ab", rollout.SeedBytes)
		b.Run(fmt.Sprintf("widen/releases=%d", n), func(b *testing.B) {
			for i := range b.N {
				terms := &rollout.Terms{ID: "r1", Seed: seed, Share: 1 + i%(rollout.Scale-1), State: "running"}
				if _, err := r.SetTerms(ctx, newest, terms); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportSizes(b, r)
		})
		b.Run(fmt.Sprintf("start-on-stone/releases=%d", n), func(b *testing.B) {
			for i := range b.N {
				var terms *rollout.Terms // the stone again, then not
				if i%2 == 0 {
					terms = &rollout.Terms{ID: "r1", Seed: seed, Share: 100}
				}
				if _, err := r.SetTerms(ctx, newest, nil); err != nil && i == 0 {
					b.Fatal(err)
				}
				if _, err := r.SetTerms(ctx, newest, terms); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
