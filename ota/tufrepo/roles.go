package tufrepo

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Delegation layout (doc.go):
//
//	targets                      top-level; delegates "<model>/*/*" to models/<model> (terminating)
//	models/<model>               the model's newest Options.RecentTargets targets;
//	                             delegates the rest to succinct hashed bins (TAP 15)
//	models/<model>/bins-<hex>    2^bit_length bins, a target in the one its path hashes to
const (
	modelRolePrefix = "models/"
	// maxBinBits caps a model's bins at 2^14 (16,384): 4 million targets at
	// the default 256 per bin.
	maxBinBits = 14
)

// ModelRole is the name of model's delegated targets role.
func ModelRole(model string) string { return modelRolePrefix + model }

func binPrefix(model string) string { return ModelRole(model) + "/bins" }

// ModelOf returns the model of a Foster target path <model>/<version>/<file>.
// The error wraps ErrInvalidTarget.
func ModelOf(targetPath string) (string, error) {
	if err := ValidTargetPath(targetPath); err != nil {
		return "", err
	}
	segs := strings.Split(targetPath, "/")
	if len(segs) != 3 {
		return "", fmt.Errorf("%w: target path %q is not <model>/<version>/<file>", ErrInvalidTarget, targetPath)
	}
	return segs[0], nil
}

// modelPattern is the path pattern delegated to a model's role; go-tuf
// matches it segment by segment, so it covers exactly <model>/<v>/<file>.
func modelPattern(model string) string { return model + "/*/*" }

// releaseCounter reads the release counter from a target's custom metadata
// (0 if none): the order in which a model's targets are kept newest-first.
func releaseCounter(tf *metadata.TargetFiles) int64 {
	if tf.Custom == nil {
		return 0
	}
	var c struct {
		N int64 `json:"release_counter"`
	}
	json.Unmarshal(*tf.Custom, &c)
	return c.N
}

type entry struct {
	path string
	tf   *metadata.TargetFiles
	n    int64
}

func entries(m map[string]*metadata.TargetFiles) []entry {
	out := make([]entry, 0, len(m))
	for p, tf := range m {
		out = append(out, entry{p, tf, releaseCounter(tf)})
	}
	// Oldest first: lowest counter, then path.
	slices.SortFunc(out, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.n, b.n), strings.Compare(a.path, b.path))
	})
	return out
}

// lookupIn finds targetPath in the role that clients would find it in:
// top-level targets, then the model's role, then the model's bin.
func lookupIn(get func(string) *metadata.Metadata[metadata.TargetsType], targetPath string) (string, *metadata.TargetFiles) {
	if top := get(metadata.TARGETS); top != nil {
		if tf := top.Signed.Targets[targetPath]; tf != nil {
			return metadata.TARGETS, tf
		}
	}
	model, err := ModelOf(targetPath)
	if err != nil {
		return "", nil
	}
	mr := get(ModelRole(model))
	if mr == nil {
		return "", nil
	}
	if tf := mr.Signed.Targets[targetPath]; tf != nil {
		return ModelRole(model), tf
	}
	if d := mr.Signed.Delegations; d != nil && d.SuccinctRoles != nil {
		bin := d.SuccinctRoles.GetRolesForTarget(targetPath)[0].Name
		if b := get(bin); b != nil {
			if tf := b.Signed.Targets[targetPath]; tf != nil {
				return bin, tf
			}
		}
	}
	return "", nil
}

func (s *state) get(name string) *metadata.Metadata[metadata.TargetsType] {
	if rl := s.roles[name]; rl != nil {
		return rl.md
	}
	return nil
}

// hasModel reports whether top-level targets delegates model's role.
func hasModel(top *metadata.Metadata[metadata.TargetsType], model string) bool {
	return delegation(top, ModelRole(model)) != nil
}

// ensureModel delegates "<model>/*/*" to models/<model>, signed by the
// model's key, if targets does not delegate it yet. That changes top-level
// targets, so it needs the targets key; with the targets key offline, a
// targets ceremony delegates the model instead (foster tuf stage targets
// --delegate-model).
func (t *txn) ensureModel(model string) error {
	if hasModel(t.get(metadata.TARGETS), model) {
		return nil
	}
	if len(t.topSigners(metadata.TARGETS)) == 0 {
		return fmt.Errorf("model %s has no delegated role yet and creating one needs the targets key, which is offline: delegate it in a targets ceremony (foster tuf stage targets --delegate-model %s --model-key PUBKEY): %w", model, model, ErrKeyUnavailable)
	}
	hk, err := t.r.ring.modelKey(t.ctx, model)
	if err != nil {
		return err
	}
	if hk == nil {
		return fmt.Errorf("no key configured for role %s: %w", ModelRole(model), ErrKeyUnavailable)
	}
	top, err := t.edit(metadata.TARGETS)
	if err != nil {
		return err
	}
	if err := DelegateModel(top, model, []*metadata.Key{hk.key}, 1); err != nil {
		return err
	}
	_, err = t.edit(ModelRole(model))
	return err
}

// DelegateModel adds (or replaces) the delegation of model's role in
// top-level targets metadata md: paths "<model>/*/*", terminating, signed
// by threshold of keys.
func DelegateModel(md *metadata.Metadata[metadata.TargetsType], model string, keys []*metadata.Key, threshold int) error {
	if threshold < 1 || threshold > len(keys) {
		return fmt.Errorf("threshold %d with %d keys", threshold, len(keys))
	}
	d := md.Signed.Delegations
	if d == nil {
		d = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
		md.Signed.Delegations = d
	}
	if d.SuccinctRoles != nil {
		return fmt.Errorf("%w: top-level targets uses succinct delegations", ErrInconsistent)
	}
	if d.Keys == nil {
		d.Keys = map[string]*metadata.Key{}
	}
	dr := metadata.DelegatedRole{Name: ModelRole(model), Threshold: threshold, Terminating: true, Paths: []string{modelPattern(model)}}
	for _, k := range keys {
		id, err := k.ID()
		if err != nil {
			return err
		}
		d.Keys[id] = k
		if !slices.Contains(dr.KeyIDs, id) {
			dr.KeyIDs = append(dr.KeyIDs, id)
		}
	}
	if i := slices.IndexFunc(d.Roles, func(r metadata.DelegatedRole) bool { return r.Name == dr.Name }); i >= 0 {
		d.Roles[i] = dr
	} else {
		d.Roles = append(d.Roles, dr)
	}
	pruneKeys(d)
	return nil
}

// pruneKeys drops delegation keys no role uses.
func pruneKeys(d *metadata.Delegations) {
	used := map[string]bool{}
	for _, r := range d.Roles {
		for _, id := range r.KeyIDs {
			used[id] = true
		}
	}
	if d.SuccinctRoles != nil {
		for _, id := range d.SuccinctRoles.KeyIDs {
			used[id] = true
		}
	}
	for id := range d.Keys {
		if !used[id] {
			delete(d.Keys, id)
		}
	}
}

// addTarget puts tf into the model's role and moves the oldest targets out
// to the bins when the role holds more than Options.RecentTargets.
func (t *txn) addTarget(targetPath string, tf *metadata.TargetFiles) error {
	model, err := ModelOf(targetPath)
	if err != nil {
		return err
	}
	if name, _ := lookupIn(t.get, targetPath); name != "" {
		return fmt.Errorf("%w: %s", ErrTargetExists, targetPath)
	}
	if err := t.ensureModel(model); err != nil {
		return err
	}
	mr, err := t.edit(ModelRole(model))
	if err != nil {
		return err
	}
	mr.Signed.Targets[targetPath] = tf
	if over := len(mr.Signed.Targets) - t.r.opts.RecentTargets; over > 0 {
		evict := entries(mr.Signed.Targets)[:over]
		for _, e := range evict {
			delete(mr.Signed.Targets, e.path)
		}
		return t.archive(model, evict)
	}
	return nil
}

// bins returns the names of model's bins in this txn, nil if it has none.
func (t *txn) bins(model string) []string {
	mr := t.get(ModelRole(model))
	if mr == nil || mr.Signed.Delegations == nil || mr.Signed.Delegations.SuccinctRoles == nil {
		return nil
	}
	return mr.Signed.Delegations.SuccinctRoles.GetRoles()
}

func (t *txn) archived(model string) []entry {
	var out []entry
	for _, b := range t.bins(model) {
		if md := t.get(b); md != nil {
			out = append(out, entries(md.Signed.Targets)...)
		}
	}
	return out
}

func (t *txn) archivedCount(model string) int {
	n := 0
	for _, b := range t.bins(model) {
		if md := t.get(b); md != nil {
			n += len(md.Signed.Targets)
		}
	}
	return n
}

// binBits is the bit length that keeps n targets at about perBin per bin.
func binBits(n, perBin int) int {
	b := 1
	for b < maxBinBits && (1<<b)*perBin < n {
		b++
	}
	return b
}

// archive moves targets into model's hashed bins, creating the succinct
// delegation on first use and doubling the bins (one re-signing of all of
// them, amortised over the targets that filled them) when they average more
// than Options.TargetsPerBin.
func (t *txn) archive(model string, add []entry) error {
	name := ModelRole(model)
	mr, err := t.edit(name)
	if err != nil {
		return err
	}
	total := t.archivedCount(model) + len(add)
	want := binBits(total, t.r.opts.TargetsPerBin)
	d := mr.Signed.Delegations
	if d == nil || d.SuccinctRoles == nil || d.SuccinctRoles.BitLength < want {
		moved := t.archived(model)
		top := t.get(metadata.TARGETS)
		var ids []string
		threshold := 1
		keys := map[string]*metadata.Key{}
		for _, r := range top.Signed.Delegations.Roles {
			if r.Name == name {
				ids, threshold = slices.Clone(r.KeyIDs), r.Threshold
				for _, id := range ids {
					keys[id] = top.Signed.Delegations.Keys[id]
				}
			}
		}
		if d == nil {
			d = &metadata.Delegations{}
			mr.Signed.Delegations = d
		}
		d.Keys, d.Roles = keys, nil
		d.SuccinctRoles = &metadata.SuccinctRoles{KeyIDs: ids, Threshold: threshold, BitLength: want, NamePrefix: binPrefix(model)}
		for _, b := range d.SuccinctRoles.GetRoles() {
			md, err := t.edit(b)
			if err != nil {
				return err
			}
			clear(md.Signed.Targets) // a reused bin name starts empty
		}
		add = append(moved, add...)
	}
	for _, e := range add {
		bin := d.SuccinctRoles.GetRolesForTarget(e.path)[0].Name
		md, err := t.edit(bin)
		if err != nil {
			return err
		}
		md.Signed.Targets[e.path] = e.tf
	}
	return nil
}

// removeTarget drops targetPath from the role that holds it. A model's role
// keeps listing its newest targets: the newest archived one moves up.
func (t *txn) removeTarget(targetPath string) (*metadata.TargetFiles, error) {
	name, tf := lookupIn(t.get, targetPath)
	if name == "" {
		return nil, fmt.Errorf("%w: %s", ErrTargetNotFound, targetPath)
	}
	if name == metadata.TARGETS && len(t.topSigners(metadata.TARGETS)) == 0 {
		return nil, fmt.Errorf("%s is listed in top-level targets, whose key is offline: %w", targetPath, ErrKeyUnavailable)
	}
	md, err := t.edit(name)
	if err != nil {
		return nil, err
	}
	delete(md.Signed.Targets, targetPath)
	if !strings.HasPrefix(name, modelRolePrefix) || strings.Count(name, "/") != 1 {
		return tf, nil
	}
	model := strings.TrimPrefix(name, modelRolePrefix)
	arch := t.archived(model)
	if len(arch) == 0 {
		return tf, nil
	}
	newest := arch[0]
	for _, e := range arch[1:] {
		if cmp.Or(cmp.Compare(e.n, newest.n), strings.Compare(e.path, newest.path)) > 0 {
			newest = e
		}
	}
	bin, _ := lookupIn(t.get, newest.path)
	bmd, err := t.edit(bin)
	if err != nil {
		return nil, err
	}
	delete(bmd.Signed.Targets, newest.path)
	md.Signed.Targets[newest.path] = newest.tf
	return tf, nil
}

// Lookup returns the published target at targetPath, if any, and the role
// that signs it.
func (r *Repo) Lookup(targetPath string) (Target, string, bool) {
	st := r.cur.Load()
	name, tf := lookupIn(st.get, targetPath)
	if name == "" {
		return Target{}, "", false
	}
	return fromTargetFiles(targetPath, tf), name, true
}

// RemoveTarget publishes the repository without targetPath (a revoked
// release): devices stop being offered it on their next refresh. The blobs
// stay, for devices midway through a download and for audits.
func (r *Repo) RemoveTarget(ctx context.Context, targetPath string) (Target, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.begin(ctx)
	tf, err := t.removeTarget(targetPath)
	if err != nil {
		return Target{}, err
	}
	if err := t.commit(); err != nil {
		return Target{}, fmt.Errorf("publishing removal of %s: %w", targetPath, err)
	}
	return fromTargetFiles(targetPath, tf), nil
}

// Models returns the models whose roles top-level targets delegates.
func (r *Repo) Models() []string {
	top := r.cur.Load().targets()
	var out []string
	if top.Signed.Delegations != nil {
		for _, d := range top.Signed.Delegations.Roles {
			if m, ok := strings.CutPrefix(d.Name, modelRolePrefix); ok {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return out
}

// RoleInfo describes one signed targets role.
type RoleInfo struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Targets int    `json:"targets"`
	Bytes   int    `json:"bytes"`
	Expires string `json:"expires"`
}

// Roles describes every targets role, sorted by name.
func (r *Repo) Roles() []RoleInfo {
	st := r.cur.Load()
	out := make([]RoleInfo, 0, len(st.roles))
	for n, rl := range st.roles {
		out = append(out, RoleInfo{Name: n, Version: rl.md.Signed.Version, Targets: len(rl.md.Signed.Targets), Bytes: len(rl.raw), Expires: rl.md.Signed.Expires.UTC().Format("2006-01-02T15:04:05Z")})
	}
	slices.SortFunc(out, func(a, b RoleInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}
