package tufrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Staged rollouts (pkg/rollout, docs/ROLLOUTS.md) are signed data in this
// repository:
//
//   - a release's rollout terms are the "rollout" member of its target's
//     custom metadata, so the role that lists the release signs them with its
//     hashes. Widening, halting or completing a wave re-signs that one role
//     (usually the model's role, small: its newest releases and stepping
//     stones), then snapshot and timestamp (SetTerms).
//   - a device's groups are a target rollout.MembershipPath(model, serial)
//     whose custom metadata, and whose (unserved) file, is the canonical JSON
//     {"groups":[...]}. Membership records are always in the model's hashed
//     bins, never in its role: a device fetches the one bin its path hashes
//     to through the ordinary delegation walk. They count towards the bins'
//     size (so bins double as they fill), but never as releases: they are not
//     among a model's newest releases or stepping stones, and Targets does
//     not list them.

// MaxMembershipBatch bounds the devices SetMemberships publishes in one
// call: one publish re-signs every bin the batch touches.
const MaxMembershipBatch = 1000

// offeredToAll reports whether a release's signed custom metadata offers
// it to every device: no rollout terms, or terms with the whole share and
// no group restriction. Only such releases are stepping stones.
func offeredToAll(custom []byte) bool {
	if !bytes.Contains(custom, []byte(`"rollout"`)) {
		return true // most releases: no terms, and no JSON parse needed
	}
	t, ok, err := rollout.FromCustom(custom)
	if err != nil {
		return false // invalid terms offer nothing
	}
	return !ok || (t.Share == rollout.Scale && len(t.Groups) == 0)
}

// SetTerms re-signs the one targets role that lists targetPath (the model's
// role or one of its hashed bins) with t in the target's custom metadata
// (nil removes the terms: offered to every device), then snapshot and
// timestamp. Only the custom "rollout" member changes (hashes, length,
// other custom members stay). Returns the updated target. Setting the terms
// a target already has publishes nothing.
//
// A release that stops or starts being offered to every device may also
// move between the model's role and its bins (stepping stones are releases
// offered to all); widening or halting a wave in progress does not.
func (r *Repo) SetTerms(ctx context.Context, targetPath string, t *rollout.Terms) (Target, error) {
	if rollout.IsMembershipPath(targetPath) {
		return Target{}, fmt.Errorf("%w: %s is a group membership record, not a release", ErrInvalidTarget, targetPath)
	}
	if t != nil {
		if err := t.Validate(); err != nil {
			return Target{}, fmt.Errorf("%w: %w", ErrInvalidTarget, err)
		}
	}
	if k := r.sig.Load().keys; k.Snapshot == nil || k.Timestamp == nil {
		return Target{}, fmt.Errorf("setting rollout terms: snapshot and timestamp keys needed: %w", ErrKeyUnavailable)
	}
	var out *metadata.TargetFiles
	err := r.locked(ctx, nil, func() error {
		tx := r.begin(ctx)
		var err error
		if out, err = tx.setTerms(targetPath, t); err != nil {
			return err
		}
		if len(tx.edits) == 0 {
			return nil // unchanged
		}
		if err := tx.commit(); err != nil {
			return fmt.Errorf("publishing rollout terms of %s: %w", targetPath, err)
		}
		return nil
	})
	if err != nil {
		return Target{}, err
	}
	return fromTargetFiles(targetPath, out), nil
}

func (t *txn) setTerms(targetPath string, terms *rollout.Terms) (*metadata.TargetFiles, error) {
	name, tf := lookupIn(t.get, targetPath)
	if name == "" {
		return nil, fmt.Errorf("%w: %s", ErrTargetNotFound, targetPath)
	}
	var cur []byte
	if tf.Custom != nil {
		cur = *tf.Custom
	}
	custom, err := rollout.WithTerms(cur, terms)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidTarget, targetPath, err)
	}
	if custom, err = normalizeCustom(custom); err != nil {
		return nil, err
	}
	if bytes.Equal(custom, cur) {
		return tf, nil
	}
	if name == metadata.TARGETS && len(t.topSigners(metadata.TARGETS)) == 0 {
		return nil, fmt.Errorf("%s is listed in top-level targets, whose key is offline: %w", targetPath, ErrKeyUnavailable)
	}
	md, err := t.edit(name)
	if err != nil {
		return nil, err
	}
	next := *md.Signed.Targets[targetPath]
	raw := json.RawMessage(custom)
	next.Custom = &raw
	md.Signed.Targets[targetPath] = &next
	if name == metadata.TARGETS {
		return &next, nil
	}
	model, err := ModelOf(targetPath)
	if err != nil {
		return nil, err
	}
	before, after := entryOf(targetPath, tf), entryOf(targetPath, &next)
	inRole := name == ModelRole(model)
	switch {
	case !t.placed(model):
		// Laid out by an earlier version or another Repo: from all of it.
	case before.full == after.full, !inRole && !after.full:
		// Same place: an archived release is neither recent nor a stone.
		return &next, nil
	case after.full:
		// It may now be a stepping stone: the role holds every other one.
		mr, err := t.edit(ModelRole(model))
		if err != nil {
			return nil, err
		}
		es := entries(mr.Signed.Targets)
		if !inRole {
			es = append(es, after)
			slices.SortFunc(es, compareEntries)
		}
		return &next, t.placeTargets(model, es)
	}
	if t.placed(model) && !wasStone(md, targetPath, before) {
		return &next, nil // a recent release, not a stone: it stays
	}
	// A stone no longer offered to all: the stone before it may be in a bin.
	return &next, t.placeTargets(model, t.modelEntries(model))
}

// wasStone reports whether targetPath, as before, was a stepping stone
// among the releases of the model role mr (which holds every stone).
func wasStone(mr *metadata.Metadata[metadata.TargetsType], targetPath string, before entry) bool {
	es := entries(mr.Signed.Targets)
	for i := range es {
		if es[i].path == targetPath {
			es[i] = before
		}
	}
	slices.SortFunc(es, compareEntries)
	return steppingStones(es)[targetPath]
}

// membershipTarget is the signed record of a device's groups (sorted,
// without duplicates): the canonical JSON {"groups":[...]} as both its
// custom metadata and its file's length and hash.
func membershipTarget(targetPath string, groups []string) (*metadata.TargetFiles, error) {
	groups = slices.Compact(slices.Sorted(slices.Values(groups)))
	raw, err := json.Marshal(rollout.Membership{Groups: groups})
	if err != nil {
		return nil, err
	}
	if _, err := rollout.ParseMembership(raw); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidTarget, targetPath, err)
	}
	sum := sha256.Sum256(raw)
	c := json.RawMessage(raw)
	return &metadata.TargetFiles{Path: targetPath, Length: int64(len(raw)), Hashes: metadata.Hashes{"sha256": sum[:]}, Custom: &c}, nil
}

// SetMemberships publishes the signed groups of devices of model in one
// publish: serial -> groups; an empty or nil groups slice removes the
// device's record (the device is then in rollout.DefaultGroup). At most
// MaxMembershipBatch devices per call (ErrTooLarge); a bad serial or group
// name (ErrInvalidTarget) publishes nothing. Records that already say the
// same are left alone, so a call that changes nothing publishes nothing.
func (r *Repo) SetMemberships(ctx context.Context, model string, members map[string][]string) error {
	if len(members) > MaxMembershipBatch {
		return fmt.Errorf("%w: %d devices in one membership publish, max %d", ErrTooLarge, len(members), MaxMembershipBatch)
	}
	if len(members) == 0 {
		return nil
	}
	recs := make(map[string]*metadata.TargetFiles, len(members))
	for _, serial := range slices.Sorted(maps.Keys(members)) {
		p := rollout.MembershipPath(model, serial)
		if m, err := ModelOf(p); err != nil || m != model {
			return fmt.Errorf("%w: model %q, serial %q: not a valid membership path", ErrInvalidTarget, model, serial)
		}
		if len(members[serial]) == 0 {
			recs[p] = nil
			continue
		}
		tf, err := membershipTarget(p, members[serial])
		if err != nil {
			return err
		}
		recs[p] = tf
	}
	if k := r.sig.Load().keys; k.Snapshot == nil || k.Timestamp == nil {
		return fmt.Errorf("publishing group memberships: snapshot and timestamp keys needed: %w", ErrKeyUnavailable)
	}
	return r.locked(ctx, nil, func() error {
		tx := r.begin(ctx)
		if err := tx.setMemberships(model, recs); err != nil {
			return err
		}
		if len(tx.edits) == 0 {
			return nil
		}
		if err := tx.commit(); err != nil {
			return fmt.Errorf("publishing group memberships of model %s: %w", model, err)
		}
		return nil
	})
}

func (t *txn) setMemberships(model string, recs map[string]*metadata.TargetFiles) error {
	if err := t.ensureModel(model); err != nil {
		return err
	}
	var add []entry
	for _, p := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[p]
		if name, cur := lookupIn(t.get, p); name != "" {
			if !strings.HasPrefix(name, binPrefix(model)) {
				return fmt.Errorf("%w: membership record %s is in %s, not in a bin of %s", ErrInconsistent, p, name, ModelRole(model))
			}
			if rec != nil && cur.Custom != nil && bytes.Equal(*cur.Custom, *rec.Custom) {
				continue
			}
			md, err := t.edit(name)
			if err != nil {
				return err
			}
			delete(md.Signed.Targets, p)
		}
		if rec != nil {
			add = append(add, entry{path: p, tf: rec})
		}
	}
	if len(add) == 0 {
		return nil
	}
	return t.archive(model, add)
}

// Membership returns the signed groups of a device of model as published
// (ok false: no record, the device is in rollout.DefaultGroup).
func (r *Repo) Membership(model, serial string) (groups []string, ok bool) {
	st := r.cur.Load()
	name, tf := lookupIn(st.get, rollout.MembershipPath(model, serial))
	if name == "" || tf.Custom == nil {
		return nil, false
	}
	m, err := rollout.ParseMembership(*tf.Custom)
	if err != nil {
		return nil, false
	}
	return m.Groups, true
}
