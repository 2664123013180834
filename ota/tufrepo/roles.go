package tufrepo

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Delegation layout (doc.go):
//
//	targets                      top-level; delegates "<model>/*/*" to models/<model> (terminating)
//	models/<model>               the model's newest Options.RecentTargets targets and
//	                             its stepping stones (steppingStones); delegates the
//	                             rest to succinct hashed bins (TAP 15)
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

// MaxSteppingStones bounds how many stepping stones (below) a model's role
// may keep besides its newest releases: one per hardware id at most, and
// fosterd allows 64 hardware ids per model.
const MaxSteppingStones = 256

// release is what publishing reads from a target's custom metadata
// (docs/CONTRACTS.md).
type release struct {
	Model       string   `json:"model"`
	Counter     int64    `json:"release_counter"`
	HardwareIDs []string `json:"hardware_ids"`
	MinFrom     string   `json:"min_from_version"`
}

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
	// full: a device of the path's model can install it from any version
	// (custom metadata names the model and no min_from_version), and every
	// device is offered it (no rollout terms restrict it: rollout.go).
	full bool
	hw   []string // hardware ids it is for; none: every hardware id
}

func entryOf(p string, tf *metadata.TargetFiles) entry {
	e := entry{path: p, tf: tf}
	if tf.Custom == nil {
		return e
	}
	var c release
	if json.Unmarshal(*tf.Custom, &c) != nil {
		e.n = releaseCounter(tf)
		return e
	}
	model, _, _ := strings.Cut(p, "/")
	e.n, e.hw = c.Counter, c.HardwareIDs
	e.full = c.Model == model && c.MinFrom == "" && offeredToAll(*tf.Custom)
	return e
}

// compareEntries orders oldest first: lowest counter, then path.
func compareEntries(a, b entry) int {
	return cmp.Or(cmp.Compare(a.n, b.n), strings.Compare(a.path, b.path))
}

func entries(m map[string]*metadata.TargetFiles) []entry {
	out := make([]entry, 0, len(m))
	for p, tf := range m {
		out = append(out, entryOf(p, tf))
	}
	slices.SortFunc(out, compareEntries)
	return out
}

// steppingStones returns the stepping stones among es (one model's
// targets, oldest first): for every hardware id, the newest full image (no
// min_from_version) a device of that hardware id can install. That is the
// newest full image listing no hardware ids (it applies to all), and, for
// each hardware id a full image lists, the newest full image listing it if
// that is newer. A device however far behind installs its stone, then
// the newer releases whose min_from_version the stone satisfies.
func steppingStones(es []entry) map[string]bool {
	universal := -1
	perHW := map[string]int{}
	for i, e := range es {
		switch {
		case !e.full:
		case len(e.hw) == 0:
			universal = i
		default:
			for _, h := range e.hw {
				perHW[h] = i
			}
		}
	}
	out := map[string]bool{}
	if universal >= 0 {
		out[es[universal].path] = true
	}
	for _, i := range perHW {
		if i > universal {
			out[es[i].path] = true
		}
	}
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
	hk, err := t.ring.modelKey(t.ctx, model)
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

// addTarget puts tf into the model's role and lays the model's targets out
// again (placeTargets): usually the oldest of its newest releases moves out
// to a bin, and a stepping stone the new release supersedes too.
func (t *txn) addTarget(targetPath string, tf *metadata.TargetFiles) error {
	model, err := ModelOf(targetPath)
	if err != nil {
		return err
	}
	if rollout.IsMembershipPath(targetPath) {
		return fmt.Errorf("%w: %s is reserved for a group membership record (SetMemberships)", ErrInvalidTarget, targetPath)
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
	if t.placed(model) {
		// The role holds the newest releases and every stepping stone, so
		// with one more target, what it must keep is among what it holds.
		return t.placeTargets(model, entries(mr.Signed.Targets))
	}
	return t.placeTargets(model, t.modelEntries(model))
}

// placed reports whether model's role is known to hold its newest releases
// and every stepping stone (laid out by this Repo, in this txn or an
// earlier one). A repository published before stepping stones existed, or
// with another RecentTargets, is laid out again from all its bins once.
func (t *txn) placed(model string) bool {
	return t.laidOut[model] || t.r.laidOut[model]
}

// modelEntries lists all of model's releases, its role's and its bins',
// oldest first (not the group membership records its bins also hold).
func (t *txn) modelEntries(model string) []entry {
	var es []entry
	if mr := t.get(ModelRole(model)); mr != nil {
		es = entries(mr.Signed.Targets)
	}
	for _, e := range t.archived(model) {
		if !rollout.IsMembershipPath(e.path) {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, compareEntries)
	return es
}

// placeTargets makes model's role list exactly its Options.RecentTargets
// newest targets and its stepping stones, moving the rest to the hashed
// bins and stones that are in a bin up into the role. es are oldest first
// and hold every target the role must keep. Each target stays in exactly
// one role, so clients walking the delegations find it where its bin or
// the role says.
func (t *txn) placeTargets(model string, es []entry) error {
	keep := steppingStones(es)
	if len(keep) > MaxSteppingStones {
		return fmt.Errorf("%w: model %s would keep %d stepping stones (the newest full image of each hardware id) in its role, max %d: use fewer hardware ids or a release listing none", ErrTooLarge, model, len(keep), MaxSteppingStones)
	}
	for _, e := range es[max(0, len(es)-t.r.opts.RecentTargets):] {
		keep[e.path] = true
	}
	mr, err := t.edit(ModelRole(model))
	if err != nil {
		return err
	}
	var evict []entry
	for _, e := range es {
		_, listed := mr.Signed.Targets[e.path]
		switch {
		case keep[e.path] && !listed:
			bin, _ := lookupIn(t.get, e.path)
			if !strings.HasPrefix(bin, binPrefix(model)) {
				return fmt.Errorf("%w: %s is in neither %s nor its bins", ErrInconsistent, e.path, ModelRole(model))
			}
			bmd, err := t.edit(bin)
			if err != nil {
				return err
			}
			delete(bmd.Signed.Targets, e.path)
			mr.Signed.Targets[e.path] = e.tf
		case !keep[e.path] && listed:
			delete(mr.Signed.Targets, e.path)
			evict = append(evict, e)
		}
	}
	t.laidOut[model] = true
	if len(evict) == 0 {
		return nil
	}
	return t.archive(model, evict)
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
// keeps listing its newest targets and its stepping stones: the newest
// archived target, or the next stepping stone, moves up.
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
	if name == metadata.TARGETS {
		return tf, nil
	}
	model, err := ModelOf(targetPath)
	if err != nil {
		return nil, err
	}
	if name != ModelRole(model) && t.placed(model) {
		return tf, nil // an archived target is neither recent nor a stone
	}
	if err := t.placeTargets(model, t.modelEntries(model)); err != nil {
		return nil, err
	}
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
	var tf *metadata.TargetFiles
	err := r.locked(ctx, nil, func() error {
		t := r.begin(ctx)
		var err error
		if tf, err = t.removeTarget(targetPath); err != nil {
			return err
		}
		if err := t.commit(); err != nil {
			return fmt.Errorf("publishing removal of %s: %w", targetPath, err)
		}
		return nil
	})
	if err != nil {
		return Target{}, err
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
