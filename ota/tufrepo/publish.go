package tufrepo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// txn is one publish: edits on top of the current repository, signed and
// written together. Writes go versioned files first, then snapshot, then
// timestamp.json (the only file clients poll), so a failure or a crash at any
// point leaves clients on the previous repository; the Repo's state changes
// only after every write succeeded. A txn is used under Repo.mu.
type txn struct {
	r   *Repo
	ctx context.Context
	cur *state
	// ring are the keys this txn signs with (Repo.SetKeys may replace the
	// Repo's, but not during a txn: both hold Repo.mu).
	ring *keyring
	// edits are modifiable copies of roles to re-sign (and new roles).
	edits map[string]*metadata.Metadata[metadata.TargetsType]
	// presigned are roles signed offline (a ceremony), published as given.
	presigned map[string]*role
	// newRoot, if set, is a root signed offline, published in this txn.
	newRoot *role0
	// snapshot forces a new snapshot even if no targets role changed.
	snapshot bool
	// laidOut are the models whose targets placeTargets laid out in this txn.
	laidOut map[string]bool
}

type role0 struct {
	md  *metadata.Metadata[metadata.RootType]
	raw []byte
}

func (r *Repo) begin(ctx context.Context) *txn {
	return &txn{
		r: r, ctx: ctx, cur: r.cur.Load(), ring: r.sig.Load().ring,
		edits:     map[string]*metadata.Metadata[metadata.TargetsType]{},
		presigned: map[string]*role{},
		laidOut:   map[string]bool{},
	}
}

// root is the root the published repository will have.
func (t *txn) root() *metadata.Metadata[metadata.RootType] {
	if t.newRoot != nil {
		return t.newRoot.md
	}
	return t.cur.root
}

// get returns role name as it stands in this txn (read-only), or nil.
func (t *txn) get(name string) *metadata.Metadata[metadata.TargetsType] {
	if md, ok := t.edits[name]; ok {
		return md
	}
	if p, ok := t.presigned[name]; ok {
		return p.md
	}
	if rl := t.cur.roles[name]; rl != nil {
		return rl.md
	}
	return nil
}

// edit returns a modifiable copy of role name, an empty role if it does not
// exist yet. The copy is re-signed (with a new version) on commit.
func (t *txn) edit(name string) (*metadata.Metadata[metadata.TargetsType], error) {
	if md, ok := t.edits[name]; ok {
		return md, nil
	}
	if _, ok := t.presigned[name]; ok {
		return nil, fmt.Errorf("%w: %s was signed offline in this publish and cannot be changed", ErrStaged, name)
	}
	var md *metadata.Metadata[metadata.TargetsType]
	if rl := t.cur.roles[name]; rl != nil {
		var err error
		if md, err = copyMeta[metadata.TargetsType](rl.raw); err != nil {
			return nil, err
		}
	} else {
		md = metadata.Targets(time.Time{})
	}
	if md.Signed.Targets == nil {
		md.Signed.Targets = map[string]*metadata.TargetFiles{}
	}
	t.edits[name] = md
	return md, nil
}

// parentOf names the delegator of a targets role: root for "targets",
// "targets" for "models/<m>", "models/<m>" for "models/<m>/bins-<n>".
func parentOf(name string) string {
	switch n := strings.Count(name, "/"); {
	case name == metadata.TARGETS:
		return metadata.ROOT
	case n <= 1:
		return metadata.TARGETS
	default:
		return name[:strings.LastIndexByte(name, '/')]
	}
}

func depth(name string) int {
	if name == metadata.TARGETS {
		return 0
	}
	return max(1, strings.Count(name, "/"))
}

// delegation returns the key IDs delegator trusts for role name, or nil.
func delegation(delegator *metadata.Metadata[metadata.TargetsType], name string) []string {
	d := delegator.Signed.Delegations
	if d == nil {
		return nil
	}
	for _, r := range d.Roles {
		if r.Name == name {
			return r.KeyIDs
		}
	}
	if d.SuccinctRoles != nil && d.SuccinctRoles.IsDelegatedRole(name) {
		return d.SuccinctRoles.KeyIDs
	}
	return nil
}

// nextVersion of role name: one above both its current version and any
// version a snapshot ever recorded for the name (a re-created role must not
// look like a rollback to clients).
func (t *txn) nextVersion(file string, current int64) int64 {
	v := current
	if m := t.cur.snapshot.Signed.Meta[file]; m != nil {
		v = max(v, m.Version)
	}
	return v + 1
}

// signersFor returns the held keys that may sign role name under the
// delegator's rules. During a root rotation, top-level roles are signed by
// keys trusted by the current and the new root, so they verify under both.
func (t *txn) signersFor(name string, delegator *metadata.Metadata[metadata.TargetsType]) ([]signature.Signer, error) {
	if name == metadata.TARGETS {
		return t.topSigners(metadata.TARGETS), nil
	}
	ids := delegation(delegator, name)
	model, _, _ := strings.Cut(strings.TrimPrefix(name, modelRolePrefix), "/")
	if strings.HasPrefix(name, modelRolePrefix) {
		return t.ring.forModel(t.ctx, model, ids)
	}
	return t.ring.forRole(name, ids), nil
}

func (t *txn) topSigners(role string) []signature.Signer {
	ids := slices.Clone(t.cur.root.Signed.Roles[role].KeyIDs)
	if t.newRoot != nil {
		ids = append(ids, t.newRoot.md.Signed.Roles[role].KeyIDs...)
	}
	return t.ring.forRole(role, ids)
}

// commit signs everything the txn changed, writes it, and makes it the
// Repo's state. Nothing changes in the Repo if it fails.
func (t *txn) commit() error {
	opts := t.r.opts
	ctx := t.ctx
	final := maps.Clone(t.cur.roles)
	changed := map[string]*role{}
	newRoot := t.root()

	// A new root may distrust the current targets key: re-sign (or fail).
	if t.newRoot != nil && t.get(metadata.TARGETS) == t.cur.targets() {
		if err := newRoot.VerifyDelegate(metadata.TARGETS, t.cur.targets()); err != nil {
			if _, err := t.edit(metadata.TARGETS); err != nil {
				return err
			}
		}
	}

	// Edits of roles that nothing delegates to any more (bins replaced by a
	// rebin in this txn) are dropped, not signed.
	t.pruneUnreachable()

	// Sign level by level: a delegator is final before its delegates are
	// signed and checked against it. A changed delegator whose delegate no
	// longer verifies (keys changed) or does not exist yet (new delegation)
	// gets that delegate re-signed or created.
	for level := 0; ; level++ {
		var names []string
		for n := range t.edits {
			if depth(n) == level {
				names = append(names, n)
			}
		}
		for n := range t.presigned {
			if depth(n) == level {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			if !t.hasDeeper(level) {
				break
			}
			continue
		}
		slices.Sort(names)
		for _, name := range names {
			var rl *role
			var err error
			if p, ok := t.presigned[name]; ok {
				rl, err = t.checkPresigned(name, p, final, newRoot)
			} else {
				rl, err = t.signRole(name, final, newRoot)
			}
			if err != nil {
				return err
			}
			final[name] = rl
			changed[name] = rl
		}
		// Delegates of roles whose delegations changed at this level: a
		// delegate that is new, or whose keys changed, is created or
		// re-signed. (Unchanged delegations are not re-verified: a model's
		// hundreds of bins would cost more than the publish.)
		for _, name := range names {
			var before *metadata.Delegations
			if rl := t.cur.roles[name]; rl != nil {
				before = rl.md.Signed.Delegations
			}
			after := final[name].md.Signed.Delegations
			for _, child := range childRoles(final[name].md) {
				if _, ok := t.edits[child]; ok {
					continue
				}
				if _, ok := t.presigned[child]; ok {
					continue
				}
				cur := final[child]
				if cur != nil && sameDelegation(before, after, child) {
					continue
				}
				if cur != nil && final[name].md.VerifyDelegate(child, cur.md) == nil {
					continue
				}
				md, err := t.edit(child)
				if err != nil {
					return err
				}
				syncBinKeys(child, md, final[name].md)
			}
		}
		if level > 64 {
			return errors.New("delegation tree deeper than 64 levels")
		}
	}
	// Drop roles no longer reachable (a removed delegation, a rebinned model).
	reach := map[string]bool{metadata.TARGETS: true}
	queue := []string{metadata.TARGETS}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		rl := final[n]
		if rl == nil {
			return fmt.Errorf("%w: role %s is delegated but has no metadata", ErrInconsistent, n)
		}
		for _, c := range childRoles(rl.md) {
			if !reach[c] {
				reach[c] = true
				queue = append(queue, c)
			}
		}
	}
	for n := range final {
		if !reach[n] {
			delete(final, n)
		}
	}

	next := &state{root: t.cur.root, rootRaw: t.cur.rootRaw, roles: final}
	if t.newRoot != nil {
		next.root, next.rootRaw = t.newRoot.md, t.newRoot.raw
	}
	var objs []object
	for _, n := range slices.Sorted(maps.Keys(changed)) {
		if reach[n] {
			objs = append(objs, object{roleKey(n, changed[n].md.Signed.Version), changed[n].raw})
		}
	}

	// Snapshot: new if any targets role changed, or asked, or rotating root.
	next.snapshot, next.snapshotRaw = t.cur.snapshot, t.cur.snapshotRaw
	if len(changed) > 0 || t.snapshot || t.newRoot != nil {
		sn, err := copyMeta[metadata.SnapshotType](t.cur.snapshotRaw)
		if err != nil {
			return err
		}
		sn.Signed.Version = t.cur.snapshot.Signed.Version + 1
		sn.Signed.Expires = opts.expiry(opts.SnapshotExpiry)
		for n, rl := range changed {
			if reach[n] {
				sn.Signed.Meta[n+".json"] = metaFile(rl.md.Signed.Version, rl.raw, n == metadata.TARGETS)
			}
		}
		raw, err := signMeta(ctx, newRoot, sn, metadata.SNAPSHOT, t.topSigners(metadata.SNAPSHOT), MaxSnapshotSize)
		if err != nil {
			return err
		}
		next.snapshot, next.snapshotRaw = sn, raw
		objs = append(objs, object{snapshotKey(sn.Signed.Version), raw})
	}

	ts, err := copyMeta[metadata.TimestampType](t.cur.timestampRaw)
	if err != nil {
		return err
	}
	ts.Signed.Version = t.cur.timestamp.Signed.Version + 1
	ts.Signed.Expires = opts.expiry(opts.TimestampExpiry)
	ts.Signed.Meta["snapshot.json"] = metaFile(next.snapshot.Signed.Version, next.snapshotRaw, true)
	if next.timestampRaw, err = signMeta(ctx, newRoot, ts, metadata.TIMESTAMP, t.topSigners(metadata.TIMESTAMP), MaxTimestampSize); err != nil {
		return err
	}
	next.timestamp = ts
	next.timestampETag = etagOf(next.timestampRaw)
	objs = append(objs, object{timestampKey, next.timestampRaw}) // this publishes

	if t.newRoot != nil {
		// Root last if clients still on the current root accept everything
		// else (dual-signed during a rotation): then no client ever sees a
		// root without matching metadata. Otherwise root first: clients see
		// the new root with the old timestamp for the moment between writes.
		rootObj := object{rootKey(next.root.Signed.Version), next.rootRaw}
		if t.verifiesUnder(t.cur.root, next) {
			objs = append(objs, rootObj)
		} else {
			objs = append([]object{rootObj}, objs...)
		}
	}
	if err := putAll(ctx, t.r.store, objs, opts.AfterWrite); err != nil {
		return err
	}
	t.r.cur.Store(next)
	maps.Copy(t.r.laidOut, t.laidOut)
	return nil
}

// syncBinKeys makes a re-keyed model role delegate its bins to its own new
// keys, so a rotated-out model key stops vouching for the bins too.
func syncBinKeys(name string, md, delegator *metadata.Metadata[metadata.TargetsType]) {
	d := md.Signed.Delegations
	if d == nil || d.SuccinctRoles == nil || delegator.Signed.Delegations == nil {
		return
	}
	for _, r := range delegator.Signed.Delegations.Roles {
		if r.Name != name {
			continue
		}
		d.SuccinctRoles.KeyIDs, d.SuccinctRoles.Threshold = slices.Clone(r.KeyIDs), r.Threshold
		d.Keys = map[string]*metadata.Key{}
		for _, id := range r.KeyIDs {
			d.Keys[id] = delegator.Signed.Delegations.Keys[id]
		}
	}
}

// sameDelegation reports whether before and after give child the same keys
// and threshold.
func sameDelegation(before, after *metadata.Delegations, child string) bool {
	if before == nil || after == nil {
		return false
	}
	ids := func(d *metadata.Delegations) ([]string, int, bool) {
		for _, r := range d.Roles {
			if r.Name == child {
				return r.KeyIDs, r.Threshold, true
			}
		}
		if d.SuccinctRoles != nil && d.SuccinctRoles.IsDelegatedRole(child) {
			return d.SuccinctRoles.KeyIDs, d.SuccinctRoles.Threshold, true
		}
		return nil, 0, false
	}
	bi, bt, bok := ids(before)
	ai, at, aok := ids(after)
	if !bok || !aok || bt != at || !slices.Equal(bi, ai) {
		return false
	}
	for _, id := range ai {
		bk, ak := before.Keys[id], after.Keys[id]
		if bk == nil || ak == nil || bk.Value.PublicKey != ak.Value.PublicKey {
			return false
		}
	}
	return true
}

// pruneUnreachable drops edits of roles not reachable from top-level
// targets as it stands in this txn.
func (t *txn) pruneUnreachable() {
	reach := map[string]bool{metadata.TARGETS: true}
	queue := []string{metadata.TARGETS}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		md := t.get(n)
		if md == nil {
			continue
		}
		for _, c := range childRoles(md) {
			if !reach[c] {
				reach[c] = true
				queue = append(queue, c)
			}
		}
	}
	for n := range t.edits {
		if !reach[n] {
			delete(t.edits, n)
		}
	}
}

func (t *txn) hasDeeper(level int) bool {
	for n := range t.edits {
		if depth(n) > level {
			return true
		}
	}
	for n := range t.presigned {
		if depth(n) > level {
			return true
		}
	}
	return false
}

// verifiesUnder reports whether next's timestamp, snapshot and top-level
// targets verify under root.
func (t *txn) verifiesUnder(root *metadata.Metadata[metadata.RootType], next *state) bool {
	return root.VerifyDelegate(metadata.TIMESTAMP, next.timestamp) == nil &&
		root.VerifyDelegate(metadata.SNAPSHOT, next.snapshot) == nil &&
		root.VerifyDelegate(metadata.TARGETS, next.targets()) == nil
}

// signRole versions, dates and signs the edited role name.
func (t *txn) signRole(name string, final map[string]*role, newRoot *metadata.Metadata[metadata.RootType]) (*role, error) {
	md := t.edits[name]
	var cur int64
	if rl := t.cur.roles[name]; rl != nil {
		cur = rl.md.Signed.Version
	}
	md.Signed.Version = t.nextVersion(name+".json", cur)
	if name == metadata.TARGETS {
		md.Signed.Expires = t.r.opts.expiry(t.r.opts.TargetsExpiry)
	} else {
		md.Signed.Expires = t.r.opts.expiry(t.r.opts.DelegatedExpiry)
	}
	var raw []byte
	var err error
	if name == metadata.TARGETS {
		raw, err = signMeta(t.ctx, newRoot, md, name, t.topSigners(metadata.TARGETS), MaxTargetsSize)
	} else {
		parent := final[parentOf(name)]
		if parent == nil {
			return nil, fmt.Errorf("%w: %s has no delegator", ErrInconsistent, name)
		}
		signers, serr := t.signersFor(name, parent.md)
		if serr != nil {
			return nil, serr
		}
		raw, err = signMeta(t.ctx, parent.md, md, name, signers, MaxTargetsSize)
	}
	if err != nil {
		return nil, err
	}
	return &role{md: md, raw: raw}, nil
}

// checkPresigned verifies an offline-signed role against its delegator as
// it will be published, and its version.
func (t *txn) checkPresigned(name string, p *role, final map[string]*role, newRoot *metadata.Metadata[metadata.RootType]) (*role, error) {
	var cur int64
	if rl := t.cur.roles[name]; rl != nil {
		cur = rl.md.Signed.Version
	}
	if want := t.nextVersion(name+".json", cur); p.md.Signed.Version != want {
		return nil, fmt.Errorf("%w: staged %s has version %d, the repository needs %d (re-stage from the current metadata)", ErrStaged, name, p.md.Signed.Version, want)
	}
	if !p.md.Signed.Expires.After(t.r.opts.Now()) {
		return nil, fmt.Errorf("%w: staged %s expired at %s", ErrStaged, name, p.md.Signed.Expires.Format(time.RFC3339))
	}
	var err error
	if name == metadata.TARGETS {
		err = newRoot.VerifyDelegate(name, p.md)
	} else if parent := final[parentOf(name)]; parent != nil {
		err = parent.md.VerifyDelegate(name, p.md)
	} else {
		err = errors.New("no delegator")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: staged %s is not signed by a threshold of its keys: %w", ErrStaged, name, err)
	}
	if len(p.raw) > MaxTargetsSize {
		return nil, fmt.Errorf("%w: staged %s is %d bytes, more than the %d clients accept", ErrTooLarge, name, len(p.raw), MaxTargetsSize)
	}
	return p, nil
}

// Refresh re-signs whatever expires within margin of now: timestamp;
// snapshot (and so timestamp); any targets role (top-level, model, bin)
// whose key this process holds (and so snapshot and timestamp). fosterd
// calls it periodically (hourly) with a margin (6 h) that must be shorter
// than the snapshot and timestamp expiries. If a targets role needs renewing
// but its key is offline, the rest is still renewed and the error wraps
// ErrKeyUnavailable.
func (r *Repo) Refresh(ctx context.Context, margin time.Duration) error {
	if margin < 0 || margin >= min(r.opts.SnapshotExpiry, r.opts.TimestampExpiry) {
		return fmt.Errorf("refresh margin %v must be >= 0 and shorter than the snapshot and timestamp expiries, or every call re-signs", margin)
	}
	return r.locked(ctx, nil, func() error { return r.refreshLocked(ctx, r.opts.Now().Add(margin)) })
}

func (r *Repo) refreshLocked(ctx context.Context, deadline time.Time) error {
	t := r.begin(ctx)
	cur := t.cur
	var keyErrs []error
	for _, name := range slices.Sorted(maps.Keys(cur.roles)) {
		rl := cur.roles[name]
		if !rl.md.Signed.Expires.Before(deadline) {
			continue
		}
		var signers []signature.Signer
		var err error
		if name == metadata.TARGETS {
			signers = t.topSigners(metadata.TARGETS)
		} else {
			signers, err = t.signersFor(name, cur.roles[parentOf(name)].md)
			if err != nil {
				return err
			}
		}
		if len(signers) == 0 {
			hint := ""
			if name == metadata.TARGETS {
				hint = "; its key is offline: renew it in a targets ceremony (foster tuf stage targets, sign, publish; docs/TUF.md)"
			}
			keyErrs = append(keyErrs, fmt.Errorf("refresh: %s metadata expires at %s%s: %w", name, rl.md.Signed.Expires.Format(time.RFC3339), hint, ErrKeyUnavailable))
			continue
		}
		if _, err := t.edit(name); err != nil {
			return err
		}
	}
	t.snapshot = cur.snapshot.Signed.Expires.Before(deadline)
	if len(t.edits) == 0 && !t.snapshot && !cur.timestamp.Signed.Expires.Before(deadline) {
		return errors.Join(keyErrs...)
	}
	if err := t.commit(); err != nil {
		return errors.Join(append([]error{fmt.Errorf("refresh: %w", err)}, keyErrs...)...)
	}
	return errors.Join(keyErrs...)
}
