package tlog_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

const origin = "foster.test/log"

type keys struct {
	signer   note.Signer
	verifier note.Verifier
}

func newKeys(t testing.TB, name string) keys {
	t.Helper()
	skey, vkey, err := tlog.GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return keys{s, v}
}

func open(t testing.TB, d *store.DB, k keys) *tlog.Log {
	t.Helper()
	l, err := tlog.Open(context.Background(), d, origin, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func parse(t testing.TB, k keys, signed []byte) tlogverify.Checkpoint {
	t.Helper()
	cp, err := tlogverify.ParseCheckpoint(signed, k.verifier)
	if err != nil {
		t.Fatalf("checkpoint %q: %v", signed, err)
	}
	return cp
}

func leaf(i int) []byte { return fmt.Appendf(nil, "attestation-%d", i) }

// appendN appends leaves [from, to) in one call.
func appendN(t testing.TB, l *tlog.Log, from, to int) []byte {
	t.Helper()
	var leaves [][]byte
	for i := from; i < to; i++ {
		leaves = append(leaves, leaf(i))
	}
	first, cp, err := l.Append(context.Background(), leaves)
	if err != nil {
		t.Fatal(err)
	}
	if first != int64(from) {
		t.Fatalf("first index %d, want %d", first, from)
	}
	return cp
}

func TestAppendProveVerify(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		l := open(t, d, k)

		empty := parse(t, k, must(l.Checkpoint(ctx)))
		if empty.Size != 0 {
			t.Fatalf("new log has size %d", empty.Size)
		}
		appendN(t, l, 0, 1)
		appendN(t, l, 1, 7)
		signed := appendN(t, l, 7, 13)
		if latest := must(l.Checkpoint(ctx)); string(latest) != string(signed) {
			t.Fatalf("Checkpoint is not the one Append returned:\n%s\n%s", latest, signed)
		}
		cp := parse(t, k, signed)
		if cp.Size != 13 || cp.Origin != origin {
			t.Fatalf("checkpoint %+v", cp)
		}
		for i := range 13 {
			p, err := l.InclusionProof(ctx, int64(i), cp.Size)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlogverify.VerifyInclusion(leaf(i), int64(i), cp, p); err != nil {
				t.Fatalf("leaf %d: %v", i, err)
			}
			idx, err := l.LeafIndex(ctx, rfc6962.DefaultHasher.HashLeaf(leaf(i)))
			if err != nil || idx != int64(i) {
				t.Fatalf("LeafIndex(%d) = %d, %v", i, idx, err)
			}
		}
		entries := must(l.Entries(ctx, 0, 100))
		if len(entries) != 13 {
			t.Fatalf("%d entries", len(entries))
		}
		for i, e := range entries {
			if string(e) != string(leaf(i)) {
				t.Fatalf("entry %d = %q", i, e)
			}
		}
		p := must(l.ConsistencyProof(ctx, 0, 13))
		if err := tlogverify.VerifyConsistency(empty, cp, p); err != nil {
			t.Fatal(err)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestForgedCheckpoint(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		k := newKeys(t, origin)
		l := open(t, d, k)
		signed := appendN(t, l, 0, 5)
		cp := parse(t, k, signed)

		// An attacker holding their own key of the same name re-signs the
		// log's view with a different root.
		attacker := newKeys(t, origin)
		forgedLog := open(t, storetest.SQLite(t), attacker)
		appendN(t, forgedLog, 0, 4)
		forgedCP := must2(forgedLog.Append(context.Background(), [][]byte{[]byte("evil")}))
		if _, err := tlogverify.ParseCheckpoint(forgedCP, k.verifier); !errors.Is(err, tlogverify.ErrBadCheckpointSignature) {
			t.Fatalf("checkpoint signed by another key accepted: %v", err)
		}
		// Altered size or root on the real signed checkpoint.
		for _, edit := range []struct{ from, to string }{
			{"\n5\n", "\n6\n"},
			{"\n5\n", "\n4\n"},
			{"\n" + b64(cp.Root) + "\n", "\n" + b64(rfc6962.DefaultHasher.HashLeaf(nil)) + "\n"},
		} {
			altered := []byte(strings.Replace(string(signed), edit.from, edit.to, 1))
			if string(altered) == string(signed) {
				t.Fatalf("edit %q did not apply", edit.from)
			}
			if _, err := tlogverify.ParseCheckpoint(altered, k.verifier); !errors.Is(err, tlogverify.ErrBadCheckpointSignature) {
				t.Fatalf("altered checkpoint (%q -> %q) accepted: %v", edit.from, edit.to, err)
			}
		}
	})
}

func TestSplitView(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		// A dishonest operator runs two copies of the log with the same key
		// and shows each party a different history after leaf 5.
		k := newKeys(t, origin)
		honest, fork := open(t, d, k), open(t, storetest.SQLite(t), k)
		appendN(t, honest, 0, 5)
		appendN(t, fork, 0, 5)
		old := parse(t, k, must(honest.Checkpoint(ctx)))
		if string(old.Root) != string(parse(t, k, must(fork.Checkpoint(ctx))).Root) {
			t.Fatal("identical prefixes differ")
		}
		a := parse(t, k, appendN(t, honest, 5, 9))
		b := parse(t, k, must2(fork.Append(ctx, [][]byte{[]byte("x"), []byte("y"), []byte("z"), []byte("w")})))
		if a.Size != b.Size {
			t.Fatalf("sizes %d, %d", a.Size, b.Size)
		}

		// Same size, different roots: no proof can reconcile them.
		for _, p := range [][][]byte{nil, must(honest.ConsistencyProof(ctx, 9, 9))} {
			if err := tlogverify.VerifyConsistency(a, b, p); !errors.Is(err, tlogverify.ErrInconsistent) {
				t.Fatalf("split view not detected: %v", err)
			}
		}
		// Each branch is consistent with the shared prefix...
		if err := tlogverify.VerifyConsistency(old, a, must(honest.ConsistencyProof(ctx, 5, 9))); err != nil {
			t.Fatal(err)
		}
		if err := tlogverify.VerifyConsistency(old, b, must(fork.ConsistencyProof(ctx, 5, 9))); err != nil {
			t.Fatal(err)
		}
		// ...but once either grows, it cannot be shown to extend the other.
		c := parse(t, k, appendN(t, honest, 9, 12))
		if err := tlogverify.VerifyConsistency(b, c, must(honest.ConsistencyProof(ctx, 9, 12))); !errors.Is(err, tlogverify.ErrInconsistent) {
			t.Fatalf("fork passed as a prefix of the honest log: %v", err)
		}
	})
}

func must2(_ int64, cp []byte, err error) []byte { return must(cp, err) }

func TestProofForDifferentLeafRefused(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		l := open(t, d, k)
		cp := parse(t, k, appendN(t, l, 0, 10))
		p3 := must(l.InclusionProof(ctx, 3, cp.Size))
		if err := tlogverify.VerifyInclusion(leaf(3), 3, cp, p3); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name  string
			leaf  []byte
			index int64
		}{
			{"another logged leaf", leaf(4), 3},
			{"a leaf never logged", leaf(99), 3},
			{"the leaf at another index", leaf(3), 4},
		} {
			if err := tlogverify.VerifyInclusion(tc.leaf, tc.index, cp, p3); !errors.Is(err, tlogverify.ErrNotInLog) {
				t.Fatalf("%s: %v", tc.name, err)
			}
		}
		if _, err := l.LeafIndex(ctx, rfc6962.DefaultHasher.HashLeaf(leaf(99))); !errors.Is(err, tlog.ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("LeafIndex of an unlogged leaf: %v", err)
		}
	})
}

// TestConsistencyAcrossManySizes appends batches of random sizes and checks
// every checkpoint, inclusion proof and consistency proof against a tree
// built from scratch in memory by the merkle library.
func TestConsistencyAcrossManySizes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		k := newKeys(t, origin)
		l := open(t, d, k)
		ref := testonly.New(rfc6962.DefaultHasher)
		cps := []tlogverify.Checkpoint{parse(t, k, must(l.Checkpoint(ctx)))}
		n := 0
		for n < 300 {
			batch := 1 + rng.IntN(20)
			if rng.IntN(4) == 0 {
				batch = 1
			}
			cp := parse(t, k, appendN(t, l, n, n+batch))
			for i := n; i < n+batch; i++ {
				ref.AppendData(leaf(i))
			}
			n += batch
			if cp.Size != int64(n) || string(cp.Root) != string(ref.Hash()) {
				t.Fatalf("checkpoint %d: root %x, from scratch %x", cp.Size, cp.Root, ref.Hash())
			}
			cps = append(cps, cp)
		}
		// Every pair of signed checkpoints is provably consistent.
		for i, older := range cps {
			for _, newer := range cps[i:] {
				p := must(l.ConsistencyProof(ctx, older.Size, newer.Size))
				if err := tlogverify.VerifyConsistency(older, newer, p); err != nil {
					t.Fatalf("%d -> %d: %v", older.Size, newer.Size, err)
				}
			}
		}
		// Arbitrary sizes: the stored tree's proofs are exactly the library's.
		for range 300 {
			to := 1 + rng.Uint64N(uint64(n))
			from := rng.Uint64N(to + 1)
			got := must(l.ConsistencyProof(ctx, int64(from), int64(to)))
			want := must(ref.ConsistencyProof(from, to))
			if !equal(got, want) {
				t.Fatalf("consistency %d -> %d differs from the reference", from, to)
			}
			idx := rng.Uint64N(to)
			got = must(l.InclusionProof(ctx, int64(idx), int64(to)))
			want = must(ref.InclusionProof(idx, to))
			if !equal(got, want) {
				t.Fatalf("inclusion %d in %d differs from the reference", idx, to)
			}
			if err := tlogverify.VerifyInclusion(leaf(int(idx)), int64(idx), tlogverify.Checkpoint{Origin: origin, Size: int64(to), Root: ref.HashAt(to)}, got); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func equal(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if string(a[i]) != string(b[i]) {
			return false
		}
	}
	return true
}

type appended struct {
	first  int64
	leaves [][]byte
	cp     []byte
}

// TestConcurrentAppends: 16 goroutines append at once; every leaf lands at
// exactly one index, each caller's leaves are contiguous and in order, each
// returned checkpoint covers them, and the final root is the root of the
// leaves in index order.
func TestConcurrentAppends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		concurrentAppends(t, []*tlog.Log{open(t, d, newKeysShared(t))})
	})
}

// TestReplicasShareOneLog: two Logs (two fosterd replicas) append to one
// database concurrently without forking the tree.
func TestReplicasShareOneLog(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		k := newKeysShared(t)
		concurrentAppends(t, []*tlog.Log{open(t, d, k), open(t, d, k)})
	})
}

var sharedKeys struct {
	once sync.Once
	k    keys
}

func newKeysShared(t *testing.T) keys {
	sharedKeys.once.Do(func() { sharedKeys.k = newKeys(t, origin) })
	return sharedKeys.k
}

func concurrentAppends(t *testing.T, logs []*tlog.Log) {
	ctx := context.Background()
	k := newKeysShared(t)
	const workers, calls = 16, 25
	var mu sync.Mutex
	var got []appended
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := logs[w%len(logs)]
			for c := range calls {
				var leaves [][]byte
				for j := range 1 + (w+c)%3 {
					leaves = append(leaves, fmt.Appendf(nil, "w%d-c%d-l%d", w, c, j))
				}
				first, cp, err := l.Append(ctx, leaves)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				got = append(got, appended{first, leaves, cp})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Distinct, contiguous indexes covering [0, total).
	sort.Slice(got, func(i, j int) bool { return got[i].first < got[j].first })
	byIndex := map[int64][]byte{}
	next := int64(0)
	for _, a := range got {
		if a.first != next {
			t.Fatalf("append at %d, expected %d (gap or overlap)", a.first, next)
		}
		for i, lf := range a.leaves {
			byIndex[a.first+int64(i)] = lf
		}
		next += int64(len(a.leaves))
		cp := parse(t, k, a.cp)
		if cp.Size < next {
			t.Fatalf("checkpoint of size %d returned for leaves up to %d", cp.Size, next)
		}
		last := a.first + int64(len(a.leaves)) - 1
		p := must(logs[0].InclusionProof(ctx, last, cp.Size))
		if err := tlogverify.VerifyInclusion(a.leaves[len(a.leaves)-1], last, cp, p); err != nil {
			t.Fatalf("leaf %d against its own checkpoint: %v", last, err)
		}
	}
	total := next

	// What the log stores is what each caller was told.
	ref := testonly.New(rfc6962.DefaultHasher)
	for start := int64(0); start < total; {
		page := must(logs[len(logs)-1].Entries(ctx, start, total))
		for i, e := range page {
			if string(e) != string(byIndex[start+int64(i)]) {
				t.Fatalf("entry %d is %q, its caller appended %q", start+int64(i), e, byIndex[start+int64(i)])
			}
			ref.AppendData(e)
		}
		start += int64(len(page))
	}
	final := parse(t, k, must(logs[0].Checkpoint(ctx)))
	if final.Size != total || string(final.Root) != string(ref.Hash()) {
		t.Fatalf("final checkpoint %d/%x, want %d/%x", final.Size, final.Root, total, ref.Hash())
	}
	for _, a := range got {
		older := parse(t, k, a.cp)
		if err := tlogverify.VerifyConsistency(older, final, must(logs[0].ConsistencyProof(ctx, older.Size, final.Size))); err != nil {
			t.Fatal(err)
		}
	}
}

// failingSigner is the log key when the HSM/KMS is down.
type failingSigner struct{ note.Signer }

func (failingSigner) Sign([]byte) ([]byte, error) { return nil, errors.New("kms unavailable") }

func TestAppendIsAtomic(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		l := open(t, d, k)
		before := appendN(t, l, 0, 3)

		broken, err := tlog.Open(ctx, d, origin, failingSigner{k.signer})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := broken.Append(ctx, [][]byte{leaf(3), leaf(4)}); err == nil {
			t.Fatal("append without a checkpoint signature succeeded")
		}
		if got := must(l.Checkpoint(ctx)); string(got) != string(before) {
			t.Fatal("failed append changed the checkpoint")
		}
		if _, err := l.Entries(ctx, 3, 5); !errors.Is(err, tlog.ErrOutOfRange) {
			t.Fatalf("failed append left leaves behind: %v", err)
		}
		if _, err := l.LeafIndex(ctx, rfc6962.DefaultHasher.HashLeaf(leaf(3))); !errors.Is(err, tlog.ErrNotFound) {
			t.Fatalf("failed append left leaves behind: %v", err)
		}
		// The log carries on where it was.
		cp := parse(t, k, appendN(t, l, 3, 5))
		if cp.Size != 5 {
			t.Fatalf("size %d", cp.Size)
		}
		// A canceled caller appends nothing.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, _, err := l.Append(cctx, [][]byte{leaf(5)}); !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled append: %v", err)
		}
		if parse(t, k, must(l.Checkpoint(ctx))).Size != 5 {
			t.Fatal("canceled append changed the log")
		}
	})
}

func TestReopenAndIdentity(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		appendN(t, open(t, d, k), 0, 6)
		// Reopening (restart, or key rotation to a new key of the same name)
		// continues the same tree.
		rotated := newKeys(t, origin)
		l := open(t, d, rotated)
		cp := parse(t, rotated, appendN(t, l, 6, 7))
		if cp.Size != 7 {
			t.Fatalf("size %d after reopen", cp.Size)
		}
		other := newKeys(t, "other.log")
		if _, err := tlog.Open(ctx, d, "other.log", other.signer); !errors.Is(err, tlog.ErrInvalid) {
			t.Fatalf("opened the database's log under another origin: %v", err)
		}
		if _, err := tlog.Open(ctx, d, origin, other.signer); !errors.Is(err, tlog.ErrInvalid) {
			t.Fatalf("opened with a key named for another log: %v", err)
		}
		for _, bad := range []string{"", "has space", "a+b", "new\nline"} {
			if _, _, err := tlog.GenerateKey(bad); !errors.Is(err, tlog.ErrInvalid) {
				t.Fatalf("GenerateKey(%q): %v", bad, err)
			}
		}
	})
}

func TestTamperedTreeRefused(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		appendN(t, open(t, d, k), 0, 6)
		// Someone with database access rewrites history under leaves 0-3.
		if _, err := d.SQL().ExecContext(ctx, d.Rebind(`UPDATE tlog_nodes SET hash = ? WHERE level = 2 AND idx = 0`),
			rfc6962.DefaultHasher.HashLeaf([]byte("rewritten"))); err != nil {
			t.Fatal(err)
		}
		if _, err := tlog.Open(ctx, d, origin, k.signer); !errors.Is(err, tlog.ErrCorrupt) {
			t.Fatalf("opened a tampered tree: %v", err)
		}
	})
}

func TestTamperedLeafNotServed(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		l := open(t, d, newKeys(t, origin))
		appendN(t, l, 0, 6)
		// The stored attestation is swapped for another one; its hash is not.
		if _, err := d.SQL().ExecContext(ctx, d.Rebind(`UPDATE tlog_leaves SET data = ? WHERE idx = 4`), []byte("swapped")); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Entries(ctx, 0, 6); !errors.Is(err, tlog.ErrCorrupt) {
			t.Fatalf("served a swapped leaf: %v", err)
		}
		if got := must(l.Entries(ctx, 0, 4)); len(got) != 4 {
			t.Fatalf("%d untouched entries", len(got))
		}
	})
}

func TestBounds(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		k := newKeys(t, origin)
		l := open(t, d, k)
		var big [][]byte
		for i := range tlog.MaxAppendLeaves {
			big = append(big, leaf(i))
		}
		appendN(t, l, 0, tlog.MaxAppendLeaves)
		appendN(t, l, tlog.MaxAppendLeaves, tlog.MaxAppendLeaves+500)

		tests := []struct {
			name    string
			call    func() error
			wantErr error
		}{
			{"empty append", func() error { _, _, err := l.Append(ctx, nil); return err }, tlog.ErrInvalid},
			{"too many leaves", func() error { _, _, err := l.Append(ctx, append(big, leaf(0))); return err }, tlog.ErrInvalid},
			{"oversized leaf", func() error {
				_, _, err := l.Append(ctx, [][]byte{make([]byte, tlog.MaxLeafSize+1)})
				return err
			}, tlog.ErrInvalid},
			{"inclusion beyond the tree", func() error { _, err := l.InclusionProof(ctx, 0, 1501); return err }, tlog.ErrOutOfRange},
			{"inclusion index >= size", func() error { _, err := l.InclusionProof(ctx, 5, 5); return err }, tlog.ErrInvalid},
			{"negative index", func() error { _, err := l.InclusionProof(ctx, -1, 5); return err }, tlog.ErrInvalid},
			{"consistency backwards", func() error { _, err := l.ConsistencyProof(ctx, 6, 5); return err }, tlog.ErrInvalid},
			{"consistency beyond the tree", func() error { _, err := l.ConsistencyProof(ctx, 5, 1501); return err }, tlog.ErrOutOfRange},
			{"entries past the end", func() error { _, err := l.Entries(ctx, 1500, 1600); return err }, tlog.ErrOutOfRange},
			{"entries empty range", func() error { _, err := l.Entries(ctx, 5, 5); return err }, tlog.ErrInvalid},
			{"leaf hash of wrong size", func() error { _, err := l.LeafIndex(ctx, []byte("short")); return err }, tlog.ErrInvalid},
		}
		for _, tt := range tests {
			if err := tt.call(); !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: got %v, want %v", tt.name, err, tt.wantErr)
			}
		}
		page := must(l.Entries(ctx, 100, 5000))
		if len(page) != tlog.MaxEntries || string(page[0]) != string(leaf(100)) {
			t.Fatalf("Entries returned %d leaves", len(page))
		}
		if tail := must(l.Entries(ctx, 1400, 5000)); len(tail) != 100 {
			t.Fatalf("tail has %d leaves", len(tail))
		}
	})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
