package tufrepo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Offline ceremonies.
//
// A change to root or top-level targets is staged (StageRoot, StageTargets:
// the current metadata with the change applied, version + 1, no
// signatures), handed to the key holders, each of whom signs the staged
// file on their own machine (SignStaged, with a key file or a KMS URI), and
// the signed copies are merged (CombineStaged). Publishing
// (Repo.PublishStaged) checks the thresholds, so nothing half-signed is ever
// published:
//
//   - root N+1 must be signed by a threshold of root N's root keys and by a
//     threshold of its own (a rotation proves both the old and the new key
//     holders agree); clients walk 1.root.json, 2.root.json, ... so a device
//     that trusts only root 1 follows any number of rotations.
//   - targets N+1 must be signed by a threshold of the targets keys of the
//     root it is published with.
//
// Publishing a root that rotates the snapshot or timestamp keys needs the
// server to hold the new keys (Keys.Extra): both the current and the new
// keys then sign snapshot and timestamp, so clients on either root accept
// them and the new root is written last, after everything it vouches for.

// RootChange is a change to stage into root N+1.
type RootChange struct {
	// Expires is the new root's expiry; zero keeps the current expiry if
	// it is at least 30 days away, else now + 365 days.
	Expires time.Time
	// Add adds keys to roles ("root", "targets", "snapshot", "timestamp").
	Add map[string][]*metadata.Key
	// Remove removes key IDs from roles.
	Remove map[string][]string
	// Threshold sets roles' thresholds.
	Threshold map[string]int
}

// TargetsChange is a change to stage into top-level targets N+1.
type TargetsChange struct {
	// Expires is the new expiry; zero means now + 365 days.
	Expires time.Time
	// Delegate delegates (or re-keys) models' roles.
	Delegate []ModelDelegation
	// Undelegate removes models' delegations: their releases are no longer
	// offered to anyone.
	Undelegate []string
}

// ModelDelegation delegates models/<Model> to Threshold of Keys.
type ModelDelegation struct {
	Model     string
	Keys      []*metadata.Key
	Threshold int
}

var topRoles = []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP}

// StageRoot returns root N+1 (unsigned) from current root N and ch.
func StageRoot(current []byte, ch RootChange, now time.Time) ([]byte, error) {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(current)
	if err != nil {
		return nil, fmt.Errorf("parsing current root: %w", err)
	}
	root.Signed.Version++
	switch {
	case !ch.Expires.IsZero():
		root.Signed.Expires = ch.Expires.UTC().Truncate(time.Second)
	case root.Signed.Expires.Before(now.Add(30 * day)):
		root.Signed.Expires = now.Add(365 * day).UTC().Truncate(time.Second)
	}
	for role, keys := range ch.Add {
		if !slices.Contains(topRoles, role) {
			return nil, fmt.Errorf("unknown role %q (want root, targets, snapshot or timestamp)", role)
		}
		for _, k := range keys {
			if pub, err := k.ToPublicKey(); err != nil {
				return nil, fmt.Errorf("%s key: %w", role, err)
			} else if err := checkKeyType(pub); err != nil {
				return nil, fmt.Errorf("%s key: %w", role, err)
			}
			if err := root.Signed.AddKey(k, role); err != nil {
				return nil, err
			}
		}
	}
	for role, ids := range ch.Remove {
		if !slices.Contains(topRoles, role) {
			return nil, fmt.Errorf("unknown role %q", role)
		}
		for _, id := range ids {
			if err := root.Signed.RevokeKey(id, role); err != nil {
				return nil, fmt.Errorf("removing %s key %s: %w", role, id, err)
			}
		}
	}
	for role, n := range ch.Threshold {
		r := root.Signed.Roles[role]
		if r == nil {
			return nil, fmt.Errorf("unknown role %q", role)
		}
		r.Threshold = n
	}
	for _, role := range topRoles {
		r := root.Signed.Roles[role]
		if r == nil {
			return nil, fmt.Errorf("root has no %s role", role)
		}
		if r.Threshold < 1 || r.Threshold > len(r.KeyIDs) {
			return nil, fmt.Errorf("role %s would need %d signatures from %d keys", role, r.Threshold, len(r.KeyIDs))
		}
	}
	root.Signed.ConsistentSnapshot = true
	root.ClearSignatures()
	return root.ToBytes(true)
}

// StageTargets returns top-level targets N+1 (unsigned) from current
// targets N and ch.
func StageTargets(current []byte, ch TargetsChange, now time.Time) ([]byte, error) {
	md, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(current)
	if err != nil {
		return nil, fmt.Errorf("parsing current targets: %w", err)
	}
	md.Signed.Version++
	md.Signed.Expires = now.Add(365 * day).UTC().Truncate(time.Second)
	if !ch.Expires.IsZero() {
		md.Signed.Expires = ch.Expires.UTC().Truncate(time.Second)
	}
	for _, d := range ch.Delegate {
		if _, err := ModelOf(d.Model + "/0/x"); err != nil {
			return nil, fmt.Errorf("model %q: %w", d.Model, err)
		}
		for _, k := range d.Keys {
			if pub, err := k.ToPublicKey(); err != nil {
				return nil, fmt.Errorf("model %s key: %w", d.Model, err)
			} else if err := checkKeyType(pub); err != nil {
				return nil, fmt.Errorf("model %s key: %w", d.Model, err)
			}
		}
		if err := DelegateModel(md, d.Model, d.Keys, d.Threshold); err != nil {
			return nil, fmt.Errorf("delegating %s: %w", d.Model, err)
		}
	}
	for _, m := range ch.Undelegate {
		d := md.Signed.Delegations
		if d == nil || !slices.ContainsFunc(d.Roles, func(r metadata.DelegatedRole) bool { return r.Name == ModelRole(m) }) {
			return nil, fmt.Errorf("model %s is not delegated", m)
		}
		d.Roles = slices.DeleteFunc(d.Roles, func(r metadata.DelegatedRole) bool { return r.Name == ModelRole(m) })
		pruneKeys(d)
	}
	md.ClearSignatures()
	return md.ToBytes(true)
}

// stagedType returns the "_type" of staged metadata.
func stagedType(raw []byte) (string, error) {
	var v struct {
		Signed struct {
			Type string `json:"_type"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("%w: not TUF metadata: %w", ErrStaged, err)
	}
	switch v.Signed.Type {
	case metadata.ROOT, metadata.TARGETS:
		return v.Signed.Type, nil
	}
	return "", fmt.Errorf("%w: staged metadata is %q; ceremonies sign root or targets", ErrStaged, v.Signed.Type)
}

// SignStaged adds signer's signature to staged root or targets metadata,
// replacing an earlier signature by the same key. The signed content is
// not changed.
func SignStaged(ctx context.Context, raw []byte, signer signature.Signer) ([]byte, error) {
	typ, err := stagedType(raw)
	if err != nil {
		return nil, err
	}
	_, id, err := tufKey(ctx, signer)
	if err != nil {
		return nil, err
	}
	if typ == metadata.ROOT {
		return signStaged[metadata.RootType](ctx, raw, signer, id)
	}
	return signStaged[metadata.TargetsType](ctx, raw, signer, id)
}

func signStaged[T metadata.Roles](ctx context.Context, raw []byte, signer signature.Signer, id string) ([]byte, error) {
	md, err := new(metadata.Metadata[T]).FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStaged, err)
	}
	md.Signatures = slices.DeleteFunc(md.Signatures, func(s metadata.Signature) bool { return s.KeyID == id })
	if _, err := md.Sign(ctxSigner{signer, ctx}); err != nil {
		return nil, err
	}
	return md.ToBytes(true)
}

// CombineStaged merges the signatures of copies of the same staged
// metadata (each key holder signed their own copy). It refuses copies whose
// signed content differs.
func CombineStaged(raws ...[]byte) ([]byte, error) {
	if len(raws) == 0 {
		return nil, errors.New("nothing to combine")
	}
	typ, err := stagedType(raws[0])
	if err != nil {
		return nil, err
	}
	if typ == metadata.ROOT {
		return combine[metadata.RootType](raws)
	}
	return combine[metadata.TargetsType](raws)
}

func combine[T metadata.Roles](raws [][]byte) ([]byte, error) {
	var out *metadata.Metadata[T]
	var signed []byte
	for i, raw := range raws {
		md, err := new(metadata.Metadata[T]).FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: copy %d: %w", ErrStaged, i+1, err)
		}
		c, err := cjson.EncodeCanonical(md.Signed)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out, signed = md, c
			continue
		}
		if !bytes.Equal(c, signed) {
			return nil, fmt.Errorf("%w: copy %d has different signed content than copy 1 (was it staged separately?)", ErrStaged, i+1)
		}
		for _, s := range md.Signatures {
			if !slices.ContainsFunc(out.Signatures, func(x metadata.Signature) bool { return x.KeyID == s.KeyID }) {
				out.Signatures = append(out.Signatures, s)
			}
		}
	}
	return out.ToBytes(true)
}

// Signatures describes who has signed staged metadata and whether the
// thresholds that publishing checks are met.
type Signatures struct {
	Type    string    `json:"type"`
	Version int64     `json:"version"`
	Expires time.Time `json:"expires"`
	// Valid lists key IDs with a valid signature over the content.
	Valid []string `json:"valid_signatures"`
	// Checks are the thresholds publishing will require.
	Checks []ThresholdCheck `json:"checks"`
}

// ThresholdCheck is one threshold a staged file must meet.
type ThresholdCheck struct {
	By        string   `json:"by"` // e.g. "root 3 (current)", "root 4 (itself)"
	Threshold int      `json:"threshold"`
	Have      int      `json:"have"`
	Missing   []string `json:"missing_keyids,omitempty"`
	Met       bool     `json:"met"`
}

// Inspect reports the signatures of staged root or targets metadata
// against currentRoot (and, for root, against itself).
func Inspect(raw, currentRoot []byte) (*Signatures, error) {
	typ, err := stagedType(raw)
	if err != nil {
		return nil, err
	}
	cur, err := new(metadata.Metadata[metadata.RootType]).FromBytes(currentRoot)
	if err != nil {
		return nil, fmt.Errorf("parsing current root: %w", err)
	}
	out := &Signatures{Type: typ}
	var sigs []metadata.Signature
	var payload []byte
	check := func(by string, keys map[string]*metadata.Key, role *metadata.Role) {
		if role == nil {
			out.Checks = append(out.Checks, ThresholdCheck{By: by + ": no such role"})
			return
		}
		c := ThresholdCheck{By: by, Threshold: role.Threshold}
		for _, id := range role.KeyIDs {
			if validSig(keys[id], sigs, id, payload) {
				c.Have++
			} else {
				c.Missing = append(c.Missing, id)
			}
		}
		c.Met = c.Threshold >= 1 && c.Have >= c.Threshold
		out.Checks = append(out.Checks, c)
	}
	collect := func(keys map[string]*metadata.Key) {
		for _, s := range sigs {
			if validSig(keys[s.KeyID], sigs, s.KeyID, payload) && !slices.Contains(out.Valid, s.KeyID) {
				out.Valid = append(out.Valid, s.KeyID)
			}
		}
	}
	if typ == metadata.ROOT {
		md, err := new(metadata.Metadata[metadata.RootType]).FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStaged, err)
		}
		if payload, err = cjson.EncodeCanonical(md.Signed); err != nil {
			return nil, err
		}
		sigs, out.Version, out.Expires = md.Signatures, md.Signed.Version, md.Signed.Expires
		collect(cur.Signed.Keys)
		collect(md.Signed.Keys)
		check(fmt.Sprintf("root %d (current)", cur.Signed.Version), cur.Signed.Keys, cur.Signed.Roles[metadata.ROOT])
		check(fmt.Sprintf("root %d (itself)", md.Signed.Version), md.Signed.Keys, md.Signed.Roles[metadata.ROOT])
	} else {
		md, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStaged, err)
		}
		if payload, err = cjson.EncodeCanonical(md.Signed); err != nil {
			return nil, err
		}
		sigs, out.Version, out.Expires = md.Signatures, md.Signed.Version, md.Signed.Expires
		collect(cur.Signed.Keys)
		check(fmt.Sprintf("targets keys of root %d", cur.Signed.Version), cur.Signed.Keys, cur.Signed.Roles[metadata.TARGETS])
	}
	slices.Sort(out.Valid)
	return out, nil
}

func validSig(key *metadata.Key, sigs []metadata.Signature, id string, payload []byte) bool {
	if key == nil {
		return false
	}
	i := slices.IndexFunc(sigs, func(s metadata.Signature) bool { return s.KeyID == id })
	if i < 0 {
		return false
	}
	pub, err := key.ToPublicKey()
	if err != nil {
		return false
	}
	v, err := signature.LoadDefaultVerifier(pub)
	if err != nil {
		return false
	}
	return v.VerifySignature(bytes.NewReader(sigs[i].Signature), bytes.NewReader(payload)) == nil
}

// PublishStaged publishes offline-signed root N+1 and/or top-level targets
// N+1 (either may be nil), after checking every threshold; nothing is
// published if any check fails (errors wrap ErrStaged or ErrKeyUnavailable).
// Roles the new metadata re-keys are re-signed with held keys (a model
// whose delegation now names a new key is re-signed by that key, and so are
// its bins); snapshot and timestamp are re-signed, by the keys both roots
// trust when a new root rotates them.
func (r *Repo) PublishStaged(ctx context.Context, rootRaw, targetsRaw []byte) error {
	if rootRaw == nil && targetsRaw == nil {
		return fmt.Errorf("%w: nothing to publish", ErrStaged)
	}
	return r.locked(ctx, nil, func() error { return r.publishStaged(ctx, rootRaw, targetsRaw) })
}

func (r *Repo) publishStaged(ctx context.Context, rootRaw, targetsRaw []byte) error {
	t := r.begin(ctx)
	if rootRaw != nil {
		if typ, err := stagedType(rootRaw); err != nil {
			return err
		} else if typ != metadata.ROOT {
			return fmt.Errorf("%w: staged root is %s metadata", ErrStaged, typ)
		}
		if len(rootRaw) > MaxRootSize {
			return fmt.Errorf("%w: staged root is %d bytes, more than the %d clients accept", ErrTooLarge, len(rootRaw), MaxRootSize)
		}
		cur := t.cur.root
		root, err := parseRoot(rootRaw, nil, cur.Signed.Version+1)
		if err != nil {
			return fmt.Errorf("%w: staged root: %w (re-stage from root %d, and collect a threshold of the new root keys)", ErrStaged, err, cur.Signed.Version)
		}
		if err := cur.VerifyDelegate(metadata.ROOT, root); err != nil {
			return fmt.Errorf("%w: root %d is not signed by a threshold of root %d's root keys: %w", ErrStaged, root.Signed.Version, cur.Signed.Version, err)
		}
		if !root.Signed.ConsistentSnapshot {
			return fmt.Errorf("%w: root %d turns consistent snapshots off; Foster's layout needs them", ErrStaged, root.Signed.Version)
		}
		if !root.Signed.Expires.After(r.opts.Now().Add(day)) {
			return fmt.Errorf("%w: root %d expires %s: less than a day away", ErrStaged, root.Signed.Version, root.Signed.Expires.Format(time.RFC3339))
		}
		for _, role := range topRoles {
			if root.Signed.Roles[role] == nil {
				return fmt.Errorf("%w: root %d has no %s role", ErrStaged, root.Signed.Version, role)
			}
		}
		for _, role := range []string{metadata.SNAPSHOT, metadata.TIMESTAMP} {
			rr := root.Signed.Roles[role]
			if got := len(t.ring.forRole(role, rr.KeyIDs)); got < rr.Threshold {
				return fmt.Errorf("%w: root %d needs %d %s signature(s) from keys %v, and this server holds %d of them: hold the new online key first (foster tuf rotate), then publish", ErrKeyUnavailable, root.Signed.Version, rr.Threshold, role, rr.KeyIDs, got)
			}
		}
		t.newRoot = &role0{md: root, raw: clone(rootRaw)}
	}
	if targetsRaw != nil {
		if typ, err := stagedType(targetsRaw); err != nil {
			return err
		} else if typ != metadata.TARGETS {
			return fmt.Errorf("%w: staged targets is %s metadata", ErrStaged, typ)
		}
		md, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(targetsRaw)
		if err != nil {
			return fmt.Errorf("%w: staged targets: %w", ErrStaged, err)
		}
		if d := md.Signed.Delegations; d != nil && d.SuccinctRoles != nil {
			return fmt.Errorf("%w: top-level targets must delegate models by name, not succinct bins", ErrStaged)
		}
		t.presigned[metadata.TARGETS] = &role{md: md, raw: clone(targetsRaw)}
	}
	return t.commit()
}

// CurrentTargets returns the current top-level targets metadata (to stage
// a targets ceremony from).
func (r *Repo) CurrentTargets() []byte { return clone(r.cur.Load().roles[metadata.TARGETS].raw) }
