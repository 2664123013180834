// Package logreport rebuilds the fleet report (`foster audit report`) from
// evidence alone, for an auditor who does not trust the operator's
// database: the transparency log's entries, a checkpoint signed by the log
// key, and the firmware repository's signed TUF metadata.
//
// Threat model: the operator (fosterd, its API, an export it hands over) is
// untrusted beyond what it signed. The auditor holds three anchors obtained
// out of band (the CA root, a TUF root, the log key) and, optionally, a
// checkpoint verified earlier (say by `foster audit monitor`). Build then
// establishes, or refuses with a typed error:
//
//   - the checkpoint is signed by the log key (tlogverify.ErrBadCheckpointSignature);
//   - the entries are exactly the leaves the checkpoint commits to: Build
//     recomputes the RFC 6962 tree of all of them (transparency-dev/merkle's
//     compact range, streaming, O(log n) memory) and compares the root, so an
//     altered, removed, reordered or added entry fails (tlogverify.ErrNotInLog);
//   - the log extends the kept checkpoint: the root of its first kept.Size
//     leaves is the kept root (tlogverify.ErrInconsistent), so a history
//     rewritten and re-signed with the log key is caught too;
//   - every entry is an install attestation signed by a device whose
//     certificate chains to the CA root at the logged time and that names
//     that device (bundle.ErrUnknownCA, bundle.ErrBadSignature), with
//     sequence numbers that only grow per device (ErrReplay);
//   - which releases exist, with their counters and signed publication
//     times, comes from TUF metadata verified by go-tuf's client workflow
//     from the trusted root (ErrTUF).
//
// What the log cannot say, the report does not invent: devices that never
// attested are not in it (unknown, never "patched"), enrollment and
// revocation are not logged (docs/ATTESTATIONS.md lists every difference
// from the database report). Memory is bounded by the fleet (a few hundred
// bytes per device seen), not by the log: entries are streamed, verified on
// every core, and folded in index order.
package logreport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// Failure classes besides tlogverify's and bundle's.
var (
	// ErrTUF: the repository's metadata does not verify from the trusted root.
	ErrTUF = errors.New("TUF metadata does not verify")
	// ErrReplay: a device's attestation appears twice, or its sequence
	// numbers go back: fosterd accepts only increasing ones.
	ErrReplay = errors.New("replay")
)

// DefaultLeafCache is how many device certificate chains Build remembers
// as verified unless Options.LeafCache says otherwise (~500 bytes each).
const DefaultLeafCache = 1 << 17

// Options configure Build.
type Options struct {
	// CARoots, TUFRoot and LogKey are the auditor's trust anchors
	// (ca.pem, root.json, log.pub).
	CARoots *x509.CertPool
	TUFRoot []byte
	LogKey  note.Verifier
	// Kept is a checkpoint (signed note) the auditor verified before: the
	// log must extend it. Nil: none.
	Kept []byte
	// Model limits the report to one model ("" for all).
	Model string
	// StaleDays is the silence after which a device is an orphan candidate.
	StaleDays int
	// Now is the report's time (zero: the clock).
	Now time.Time
	// TUFTime is when TUF metadata expiry is judged (zero: Now).
	TUFTime time.Time
	// Expected lists the device URNs the auditor expects to exist (say,
	// from manufacturing records): those with no entry are reported as
	// unknown. Nil: no list.
	Expected []string
	// Workers verify entries in parallel (zero: GOMAXPROCS).
	Workers int
	// LeafCache bounds the certificate chains remembered (zero: DefaultLeafCache).
	LeafCache int
	// Progress, if set, is called with entries verified so far, now and then.
	Progress func(done, total int64)
}

// batchSize is how many entries a worker verifies at a time.
const batchSize = 256

// Build verifies the evidence src provides and computes the report.
func Build(ctx context.Context, src Source, opt Options) (*Report, error) {
	if opt.CARoots == nil || opt.LogKey == nil || len(opt.TUFRoot) == 0 {
		return nil, errors.New("logreport: a CA root, a TUF root and a log key are all required")
	}
	if opt.StaleDays < 0 {
		return nil, errors.New("logreport: stale days must not be negative")
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	if opt.TUFTime.IsZero() {
		opt.TUFTime = opt.Now
	}
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0)
	}
	if opt.LeafCache <= 0 {
		opt.LeafCache = DefaultLeafCache
	}

	raw, err := src.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("checkpoint from %s: %w", src, err)
	}
	cp, err := tlogverify.ParseCheckpoint(raw, opt.LogKey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint from %s: %w", src, err)
	}
	var kept *tlogverify.Checkpoint
	if opt.Kept != nil {
		k, err := tlogverify.ParseCheckpoint(opt.Kept, opt.LogKey)
		if err != nil {
			return nil, fmt.Errorf("the kept checkpoint: %w", err)
		}
		if k.Size > cp.Size {
			return nil, fmt.Errorf("%w: rollback: the log's checkpoint commits to %d entries, the kept one to %d", tlogverify.ErrInconsistent, cp.Size, k.Size)
		}
		kept = &k
	}

	f, base := src.TUF()
	view, err := LoadTUF(f, base, opt.TUFRoot, opt.TUFTime)
	if err != nil {
		return nil, fmt.Errorf("TUF metadata from %s: %w", src, err)
	}

	v, err := bundle.NewVerifier(bundle.TrustRoots{CARoots: opt.CARoots, TUFRoot: opt.TUFRoot, LogKey: opt.LogKey}, bundle.WithLeafCache(opt.LeafCache))
	if err != nil {
		return nil, err
	}
	a := newAggregate(opt, view)
	if err := stream(ctx, src, cp, kept, v, view, a, opt); err != nil {
		return nil, err
	}
	rep := a.report(opt, view)
	rep.Evidence = Evidence{
		Source: src.String(), LogOrigin: cp.Origin, TreeSize: cp.Size, RootHash: fmt.Sprintf("%x", cp.Root), Checkpoint: string(raw),
		EntriesVerified: cp.Size, DevicesSeen: len(a.devices),
		TUF: TUFVersions{Root: view.RootVersion, Timestamp: view.TimestampVersion, Snapshot: view.SnapshotVersion, Targets: view.TargetsVersion, CheckedAt: view.RefTime},
	}
	if kept != nil {
		rep.Evidence.Extends = &KeptCheckpoint{Size: kept.Size, RootHash: fmt.Sprintf("%x", kept.Root)}
	}
	return rep, nil
}

// batch is a run of consecutive entries, verified by one worker.
type batch struct {
	start  int64
	n      int
	leaves [batchSize][]byte
	buf    []byte // backs leaves
	items  [batchSize]item
	done   chan struct{}
}

// stream reads the cp.Size entries of src, verifies them on opt.Workers
// goroutines, and folds them into a and into the tree, in index order.
func stream(ctx context.Context, src Source, cp tlogverify.Checkpoint, kept *tlogverify.Checkpoint, v *bundle.Verifier, view *TUFView, a *aggregate, opt Options) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inflight := opt.Workers * 4
	free := make(chan *batch, inflight)
	for range inflight {
		free <- &batch{buf: make([]byte, 0, batchSize*4096)}
	}
	work := make(chan *batch, inflight)
	ordered := make(chan *batch, inflight)

	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				for i := 0; i < b.n; i++ {
					b.items[i] = verifyLeaf(v, view, b.leaves[i])
				}
				close(b.done)
			}
		}()
	}

	// Reader: fills batches in order.
	readErr := make(chan error, 1)
	go func() {
		defer close(ordered)
		defer close(work)
		var cur *batch
		next := int64(0)
		send := func() bool {
			if cur == nil || cur.n == 0 {
				return true
			}
			cur.done = make(chan struct{})
			select {
			case work <- cur:
			case <-ctx.Done():
				return false
			}
			select {
			case ordered <- cur:
			case <-ctx.Done():
				return false
			}
			cur = nil
			return true
		}
		err := src.Entries(ctx, 0, cp.Size, func(leaf []byte) error {
			if cur == nil {
				select {
				case cur = <-free:
				case <-ctx.Done():
					return ctx.Err()
				}
				cur.start, cur.n, cur.buf = next, 0, cur.buf[:0]
			}
			// leaf is only valid during the call: copy it into the batch.
			off := len(cur.buf)
			cur.buf = append(cur.buf, leaf...)
			cur.leaves[cur.n] = cur.buf[off:len(cur.buf):len(cur.buf)]
			cur.n++
			next++
			if cur.n == batchSize && !send() {
				return ctx.Err()
			}
			return nil
		})
		if err == nil && !send() {
			err = ctx.Err()
		}
		readErr <- err
	}()

	hasher := rfc6962.DefaultHasher
	rng := (&compact.RangeFactory{Hash: hasher.HashChildren}).NewEmptyRange(0)
	checkKept := func() error {
		if kept == nil || int64(rng.End()) != kept.Size {
			return nil
		}
		root, err := rootOf(rng)
		if err != nil {
			return err
		}
		if string(root) != string(kept.Root) {
			return fmt.Errorf("%w: the log's first %d entries hash to %x, the kept checkpoint of %d entries says %x: history was rewritten", tlogverify.ErrInconsistent, kept.Size, root, kept.Size, kept.Root)
		}
		return nil
	}
	fail := func(err error) error {
		cancel()
		for range ordered { // let the reader finish
		}
		wg.Wait()
		return err
	}
	if err := checkKept(); err != nil {
		return fail(err)
	}
	var done int64
	for b := range ordered {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		for i := 0; i < b.n; i++ {
			it := &b.items[i]
			idx := b.start + int64(i)
			if it.err != nil {
				return fail(fmt.Errorf("entry %d: %w", idx, it.err))
			}
			// The range keeps the slice it is given; items are reused.
			if err := rng.Append(append([]byte(nil), it.leafHash[:]...), nil); err != nil {
				return fail(err)
			}
			if err := checkKept(); err != nil {
				return fail(err)
			}
			if err := a.add(idx, it); err != nil {
				return fail(err)
			}
			*it = item{}
		}
		done += int64(b.n)
		free <- b
		if opt.Progress != nil && done%(64*batchSize) < batchSize {
			opt.Progress(done, cp.Size)
		}
	}
	wg.Wait()
	if err := <-readErr; err != nil {
		return fmt.Errorf("reading entries from %s: %w", src, err)
	}
	if opt.Progress != nil {
		opt.Progress(done, cp.Size)
	}
	if done != cp.Size {
		return fmt.Errorf("%w: %s holds %d entries, the checkpoint commits to %d", tlogverify.ErrNotInLog, src, done, cp.Size)
	}
	root, err := rootOf(rng)
	if err != nil {
		return err
	}
	if string(root) != string(cp.Root) {
		return fmt.Errorf("%w: the %d entries hash to %x, the signed checkpoint says %x", tlogverify.ErrNotInLog, cp.Size, root, cp.Root)
	}
	return nil
}

func rootOf(r *compact.Range) ([]byte, error) {
	if r.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot(), nil
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("computing the tree root: %w", err)
	}
	return root, nil
}

// item is one verified entry, reduced to what the report needs.
type item struct {
	err      error
	leafHash [32]byte
	device   string // URN
	model    string
	serial   string
	outcome  string
	target   string
	version  string
	counter  int64
	sequence int64
	at       int64 // integrated time, Unix seconds
	// signed: the target is a release the signed metadata lists for the
	// device's model with the attested digest and length.
	signed bool
	sha256 string
}

// verifyLeaf hashes and verifies one leaf.
func verifyLeaf(v *bundle.Verifier, view *TUFView, leaf []byte) item {
	var it item
	copy(it.leafHash[:], rfc6962.DefaultHasher.HashLeaf(leaf))
	e, err := bundle.ParseEntry(leaf)
	if err != nil {
		it.err = err
		return it
	}
	r, err := v.VerifyEntry(e)
	if err != nil {
		it.err = err
		return it
	}
	st := r.Statement
	it.device, it.model, it.serial = st.Device, r.Device.Model, r.Device.Name
	it.outcome, it.target, it.sha256 = st.Outcome, st.New.Name, st.New.SHA256
	it.version, it.counter, it.sequence, it.at = st.New.Version, st.New.ReleaseCounter, st.Sequence, e.IntegratedTime
	if rel, ok := view.Lookup(st.New.Name); ok && rel.Model == it.model && rel.SHA256 == st.New.SHA256 && rel.Length == st.New.Length &&
		(it.version == "" || it.version == rel.Version) && (it.counter == 0 || it.counter == rel.Counter) {
		it.signed, it.version, it.counter = true, rel.Version, rel.Counter
	}
	return it
}
