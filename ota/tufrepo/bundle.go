package tufrepo

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/offline"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Offline bundles (pkg/offline, docs/OFFLINE.md) carry a repository view
// that must stay verifiable longer than fosterd's one-day timestamp and
// one-week snapshot. Bundle signs, with the online timestamp and snapshot
// keys, a timestamp and (when its expiry is too short) a snapshot that
// carry the CURRENT versions with a longer expiry. They are never written
// to the store or served: they exist only in the bundle.
//
// Why that is safe (the argument docs/OFFLINE.md makes in full):
//   - same versions: no client is ever rolled back by them, and no client
//     that holds a newer timestamp accepts them (go-tuf refuses a lower
//     version and keeps its own copy of an equal one);
//   - the snapshot's content is the current one (only expiry changes), so
//     whichever copy of that version a device holds lists the same roles;
//   - the expiries are never earlier than the online ones of the same
//     versions, so a device that adopted the bundle's copy is never worse
//     off than with fosterd's when it comes back online;
//   - the timestamp carries offline.SignedAtField, so the agent takes the
//     signing time as evidence of the time instead of "expiry minus one
//     day", which the longer expiry would push into the future;
//   - the cost: whoever holds a bundle can show a device that already
//     trusts an older timestamp this view of the repository until the
//     bundle expires (a freeze of at most the bundle's lifetime instead of
//     one day). Lifetimes are bounded (offline.MaxLifetime, and fosterd's
//     tuf_lifetimes.bundle_max) and every export is in the audit trail.

// BundleFile is one metadata file of a bundle: its blob key (tuf/...) and bytes.
type BundleFile struct {
	Key  string
	Data []byte
}

// Bundle is the TUF part of an offline bundle for one target.
type Bundle struct {
	// Files: root 1..N, timestamp, snapshot, top-level targets, the
	// model's role and the hashed bins the target needs (all of the
	// model's bins when the release carries rollout terms: a device finds
	// its signed groups in the bin its serial hashes to).
	Files    []BundleFile
	Target   Target
	Role     string // the role that lists Target
	Versions offline.Versions
	SignedAt time.Time
	// Expires is the earliest expiry among Files: the bundle's end of life.
	Expires time.Time
	// Staged is true when the release's signed rollout terms do not offer
	// it to every device of its model.
	Staged bool
}

// Bundle returns the metadata of an offline bundle of targetPath whose
// timestamp and snapshot stay valid for lifetime (at least until fosterd's
// own of the same versions expire). It publishes nothing.
func (r *Repo) Bundle(ctx context.Context, targetPath string, lifetime time.Duration) (*Bundle, error) {
	if lifetime < offline.MinLifetime || lifetime > offline.MaxLifetime {
		return nil, fmt.Errorf("bundle lifetime %s: want between %s and %s", lifetime, offline.MinLifetime, offline.MaxLifetime)
	}
	if err := r.Sync(ctx); err != nil {
		return nil, err
	}
	st, err := r.fresh(ctx)
	if err != nil {
		return nil, err
	}
	role, tf := lookupIn(st.get, targetPath)
	if role == "" {
		return nil, fmt.Errorf("%w: %s", ErrTargetNotFound, targetPath)
	}
	model, err := ModelOf(targetPath)
	if err != nil {
		return nil, err
	}
	now := r.opts.Now().UTC().Truncate(time.Second)
	until := now.Add(lifetime)
	b := &Bundle{Target: fromTargetFiles(targetPath, tf), Role: role, SignedAt: now}
	b.Staged = tf.Custom != nil && !offeredToAll(*tf.Custom)

	// The root chain from version 1: a device may hold any of them.
	rootV := st.root.Signed.Version
	if rootV > offline.MaxMembers/2 {
		return nil, fmt.Errorf("%d root versions do not fit in a bundle", rootV)
	}
	for v := int64(1); v < rootV; v++ {
		raw, err := readBounded(ctx, r.store, rootKey(v), MaxRootSize)
		if err != nil {
			return nil, fmt.Errorf("reading root version %d: %w", v, err)
		}
		b.Files = append(b.Files, BundleFile{rootKey(v), raw})
	}
	b.Files = append(b.Files, BundleFile{rootKey(rootV), clone(st.rootRaw)})
	expires := []time.Time{st.root.Signed.Expires}

	// Snapshot: the current one, re-signed only if it expires too soon.
	snapRaw, snap := st.snapshotRaw, st.snapshot
	if snap.Signed.Expires.Before(until) {
		sn, err := copyMeta[metadata.SnapshotType](st.snapshotRaw)
		if err != nil {
			return nil, err
		}
		sn.Signed.Expires = until
		if snapRaw, err = signMeta(ctx, st.root, sn, metadata.SNAPSHOT, r.onlineSigners(st, metadata.SNAPSHOT), MaxSnapshotSize); err != nil {
			return nil, fmt.Errorf("signing the bundle's snapshot: %w", err)
		}
		snap = sn
	}
	ts, err := copyMeta[metadata.TimestampType](st.timestampRaw)
	if err != nil {
		return nil, err
	}
	ts.Signed.Expires = until
	if st.timestamp.Signed.Expires.After(until) {
		ts.Signed.Expires = st.timestamp.Signed.Expires
	}
	ts.Signed.Meta["snapshot.json"] = metaFile(snap.Signed.Version, snapRaw, true)
	if ts.Signed.UnrecognizedFields == nil {
		ts.Signed.UnrecognizedFields = map[string]any{}
	}
	ts.Signed.UnrecognizedFields[offline.SignedAtField] = now.Format(time.RFC3339)
	tsRaw, err := signMeta(ctx, st.root, ts, metadata.TIMESTAMP, r.onlineSigners(st, metadata.TIMESTAMP), MaxTimestampSize)
	if err != nil {
		return nil, fmt.Errorf("signing the bundle's timestamp: %w", err)
	}
	b.Files = append(b.Files, BundleFile{timestampKey, tsRaw}, BundleFile{snapshotKey(snap.Signed.Version), snapRaw})
	expires = append(expires, ts.Signed.Expires, snap.Signed.Expires)

	roles := []string{metadata.TARGETS}
	if st.roles[ModelRole(model)] != nil {
		roles = append(roles, ModelRole(model))
	}
	if b.Staged {
		for _, n := range slices.Sorted(maps.Keys(st.roles)) {
			if strings.HasPrefix(n, binPrefix(model)+"-") {
				roles = append(roles, n)
			}
		}
	} else if !slices.Contains(roles, role) {
		roles = append(roles, role)
	}
	for _, n := range roles {
		rl := st.roles[n]
		if rl == nil {
			return nil, fmt.Errorf("%w: role %s is not loaded", ErrInconsistent, n)
		}
		if m := snap.Signed.Meta[n+".json"]; m == nil || m.Version != rl.md.Signed.Version {
			return nil, fmt.Errorf("%w: snapshot does not list %s version %d", ErrInconsistent, n, rl.md.Signed.Version)
		}
		b.Files = append(b.Files, BundleFile{roleKey(n, rl.md.Signed.Version), clone(rl.raw)})
		expires = append(expires, rl.md.Signed.Expires)
	}
	b.Expires = slices.MinFunc(expires, func(a, b time.Time) int { return a.Compare(b) }).UTC()
	if !b.Expires.After(now) {
		return nil, fmt.Errorf("%w: the repository's metadata expired at %s", ErrExpired, b.Expires.Format(time.RFC3339))
	}
	b.Versions = offline.Versions{Root: rootV, Timestamp: ts.Signed.Version, Snapshot: snap.Signed.Version, Targets: st.targets().Signed.Version}
	return b, nil
}

// onlineSigners are the held keys the current root trusts for role.
func (r *Repo) onlineSigners(st *state, role string) []signature.Signer {
	return r.sig.Load().ring.forRole(role, st.root.Signed.Roles[role].KeyIDs)
}
