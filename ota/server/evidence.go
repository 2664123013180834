package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/cache"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/tufwalk"
)

// tufEvidence finds and caches the signed TUF metadata a bundle carries.
// Consistent snapshots make every N.<role>.json immutable, so the caches
// never go stale; releases are immutable too. Safe for concurrent use.
type tufEvidence struct {
	blobs  blobOpener
	repo   repoVersions
	lookup releaseLookup

	releases  *cache.Cache[string, store.Release] // by target path
	roots     *cache.Cache[int64, json.RawMessage]
	snapshots *cache.Cache[int64, *metadata.Metadata[metadata.SnapshotType]]
	targets   *cache.Cache[string, *targetsDoc] // by blob key "tuf/<version>.<role>.json"
}

type targetsDoc struct {
	raw  json.RawMessage
	meta *metadata.Metadata[metadata.TargetsType]
}

// repoVersions reports the repository's current top-level versions
// (tufrepo.Repo).
type repoVersions interface {
	Versions() (root, targets, snapshot, timestamp int64)
}

// releaseLookup finds the release published as a target path (*store.DB).
type releaseLookup interface {
	ReleaseByTarget(ctx context.Context, path string) (store.Release, error)
}

// blobOpener reads signed metadata (blob.Store).
type blobOpener interface {
	// Open returns an error wrapping blob.ErrNotFound if key is missing.
	Open(ctx context.Context, key string) (blob.ReadSeekCloser, blob.Info, error)
}

const evidenceCache = 256 // entries per cache

func newTUFEvidence(blobs blobOpener, repo repoVersions, lookup releaseLookup) *tufEvidence {
	return &tufEvidence{
		blobs: blobs, repo: repo, lookup: lookup,
		releases:  cache.New[string, store.Release](evidenceCache),
		roots:     cache.New[int64, json.RawMessage](evidenceCache),
		snapshots: cache.New[int64, *metadata.Metadata[metadata.SnapshotType]](evidenceCache),
		targets:   cache.New[string, *targetsDoc](evidenceCache),
	}
}

// forTarget returns the evidence that t is signed for model: root versions
// 2..current, and the targets metadata chain (top-level targets, then the
// delegated roles down to the one listing t, found by the same search a
// device makes: pkg/tufwalk) of snapshot version claimed (the one the device
// says it used) if the repository has it and it lists t, else of the current
// snapshot. A target that no snapshot signs is bundle.ErrTargetNotSigned.
func (e *tufEvidence) forTarget(ctx context.Context, claimed int64, t attest.Target, model string) (bundle.TUFEvidence, error) {
	rootV, _, snapV, _ := e.repo.Versions()
	candidates := []int64{snapV}
	if claimed >= 1 && claimed < snapV {
		candidates = []int64{claimed, snapV}
	}
	var ev bundle.TUFEvidence
	notSigned := fmt.Errorf("%w: %q is not in signed targets metadata", bundle.ErrTargetNotSigned, t.Name)
	found := false
	for _, v := range candidates {
		snap, err := e.snapshotAt(ctx, v)
		if errors.Is(err, blob.ErrNotFound) {
			continue // a claimed snapshot this repository never had
		}
		if err != nil {
			return ev, err
		}
		docs := map[string]*targetsDoc{}
		f, err := tufwalk.Find(t.Name, bundle.MaxDelegations, func(role, _ string) (*tufwalk.Targets, error) {
			mf, ok := snap.Signed.Meta[role+".json"]
			if !ok {
				return nil, fmt.Errorf("role %s is not in snapshot v%d", role, v)
			}
			d, err := e.targetsAt(ctx, role, mf.Version)
			if err != nil {
				return nil, err
			}
			docs[role] = d
			return d.meta, nil
		})
		if errors.Is(err, tufwalk.ErrNotFound) {
			continue
		}
		if err != nil {
			return ev, err
		}
		last := f.Chain[len(f.Chain)-1]
		if err := bundle.CheckTarget(last.Meta, t, model); err != nil {
			notSigned = err
			continue
		}
		ev.Targets = docs[metadata.TARGETS].raw
		for _, st := range f.Chain[1:] {
			ev.Delegations = append(ev.Delegations, bundle.DelegatedRole{Name: st.Role, Metadata: docs[st.Role].raw})
		}
		found = true
		break
	}
	if !found {
		return bundle.TUFEvidence{}, notSigned
	}
	ev.Roots = []json.RawMessage{}
	for v := int64(2); v <= rootV; v++ {
		raw, err := e.rootAt(ctx, v)
		if err != nil {
			return bundle.TUFEvidence{}, err
		}
		ev.Roots = append(ev.Roots, raw)
	}
	return ev, nil
}

// release is the store's release published as target path p.
func (e *tufEvidence) release(ctx context.Context, p string) (store.Release, error) {
	return e.releases.Get(ctx, p, func(ctx context.Context) (store.Release, error) {
		return e.lookup.ReleaseByTarget(ctx, p)
	})
}

func (e *tufEvidence) snapshotAt(ctx context.Context, v int64) (*metadata.Metadata[metadata.SnapshotType], error) {
	return e.snapshots.Get(ctx, v, func(ctx context.Context) (*metadata.Metadata[metadata.SnapshotType], error) {
		key := fmt.Sprintf("tuf/%d.snapshot.json", v)
		raw, err := e.read(ctx, key, bundle.MaxTargetsSize)
		if err != nil {
			return nil, err
		}
		s, err := metadata.Snapshot().FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", key, err)
		}
		return s, nil
	})
}

func (e *tufEvidence) targetsAt(ctx context.Context, role string, v int64) (*targetsDoc, error) {
	key := fmt.Sprintf("tuf/%d.%s.json", v, role)
	return e.targets.Get(ctx, key, func(ctx context.Context) (*targetsDoc, error) {
		raw, err := e.read(ctx, key, bundle.MaxTargetsSize)
		if err != nil {
			return nil, err
		}
		meta, err := metadata.Targets().FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", key, err)
		}
		return &targetsDoc{raw: raw, meta: meta}, nil
	})
}

func (e *tufEvidence) rootAt(ctx context.Context, v int64) (json.RawMessage, error) {
	return e.roots.Get(ctx, v, func(ctx context.Context) (json.RawMessage, error) {
		return e.read(ctx, fmt.Sprintf("tuf/%d.root.json", v), bundle.MaxRootSize)
	})
}

func (e *tufEvidence) read(ctx context.Context, key string, limit int64) ([]byte, error) {
	f, _, err := e.blobs.Open(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", key, limit)
	}
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%s is not JSON", key)
	}
	return raw, nil
}
