package bundle

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/cache"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/tlogverify"
	"github.com/foster-ota/foster/pkg/tufwalk"
)

// TrustRoots are the auditor's out-of-band trust anchors.
type TrustRoots struct {
	// CARoots holds the Foster root CA certificate (DIR/ca.pem).
	CARoots *x509.CertPool
	// TUFRoot is a trusted TUF root metadata file (DIR/root.json, or any
	// later root version the auditor trusts).
	TUFRoot []byte
	// LogKey is the log's public key (DIR/log.pub, a signed-note verifier key).
	LogKey note.Verifier
}

// ParseLogKey parses the contents of a log.pub file (a C2SP signed-note
// verifier key, surrounding white space ignored).
func ParseLogKey(vkey []byte) (note.Verifier, error) {
	v, err := note.NewVerifier(string(trimSpace(vkey)))
	if err != nil {
		return nil, fmt.Errorf("log key: %w", err)
	}
	return v, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// Result is what a verified bundle proves.
type Result struct {
	// Device is the certified identity that signed the attestation.
	Device identity.Principal
	// Statement is the signed install predicate.
	Statement *attest.Install
	// Certificate is the device certificate (leaf of the chain).
	Certificate *x509.Certificate
	// IntegratedTime is when fosterd logged the attestation.
	IntegratedTime time.Time
	// LeafIndex is the entry's index in the log.
	LeafIndex int64
	// Checkpoint is the verified checkpoint the entry is included in.
	Checkpoint tlogverify.Checkpoint
	// RootVersion, TargetsVersion (top-level targets), TargetsRole and
	// RoleVersion name the TUF metadata that signed the target.
	RootVersion, TargetsVersion int64
	TargetsRole                 string
	RoleVersion                 int64
}

// Verifier verifies bundles against fixed trust roots. It remembers
// verified TUF metadata and checkpoints (by content hash) and intermediates
// verified under the CA root (chain.go), so verifying many bundles of one
// fleet costs about two signature checks each: the device's signature on
// the attestation and the intermediate's on the device certificate. Safe
// for concurrent use.
type Verifier struct {
	roots   TrustRoots
	tufRoot *metadata.Metadata[metadata.RootType]

	tuf           *cache.Cache[[32]byte, *verifiedTargets] // by evidence and target name
	checkpoints   *cache.Cache[string, tlogverify.Checkpoint]
	intermediates *cache.Cache[[32]byte, *intermediates]
	anchors       *cache.Cache[[32]byte, *anchor] // nil: not eligible for the fast path
	leaves        *cache.Cache[[32]byte, *verifiedLeaf]
	leafCache     int
}

// verifiedTargets is the targets role that signs a target, found by the
// TUF search (pkg/tufwalk) through metadata whose signatures chain to the
// trusted root.
type verifiedTargets struct {
	meta        *metadata.Metadata[metadata.TargetsType]
	role        string
	rootVersion int64
	topVersion  int64 // version of the top-level targets metadata
}

// cacheEntries bounds each cache.
const cacheEntries = 256

// NewVerifier checks the trust roots and returns a Verifier.
func NewVerifier(tr TrustRoots, opts ...Option) (*Verifier, error) {
	if tr.CARoots == nil || tr.LogKey == nil || len(tr.TUFRoot) == 0 {
		return nil, errors.New("bundle: a CA root, a TUF root and a log key are all required")
	}
	if len(tr.TUFRoot) > MaxRootSize {
		return nil, fmt.Errorf("bundle: TUF root larger than %d bytes", MaxRootSize)
	}
	root, err := metadata.Root().FromBytes(tr.TUFRoot)
	if err != nil {
		return nil, fmt.Errorf("bundle: trusted TUF root: %w", err)
	}
	v := &Verifier{
		roots: tr, tufRoot: root,
		tuf:           cache.New[[32]byte, *verifiedTargets](cacheEntries),
		checkpoints:   cache.New[string, tlogverify.Checkpoint](cacheEntries),
		intermediates: cache.New[[32]byte, *intermediates](cacheEntries),
		anchors:       cache.New[[32]byte, *anchor](cacheEntries),
		leafCache:     DefaultLeafCache,
	}
	for _, o := range opts {
		o(v)
	}
	v.leaves = cache.New[[32]byte, *verifiedLeaf](v.leafCache)
	return v, nil
}

// VerifyBytes parses and verifies a bundle document.
func (v *Verifier) VerifyBytes(raw []byte) (*Result, error) {
	b, err := decode(raw)
	if err != nil {
		return nil, err
	}
	return v.Verify(b)
}

// Verify checks everything a bundle claims, in this order (the first
// failure decides the class): the certificate chain verifies to the CA
// root at the integrated time and its leaf is a device (ErrUnknownCA); the
// envelope is signed by that certificate's key and names that device
// (ErrBadSignature); the TUF metadata, chained from the trusted root, signs
// the installed target for the device's model with the stated digest,
// length, version and release counter (ErrTargetNotSigned); the checkpoint
// is signed by the log key (ErrCheckpointSignature); and the inclusion
// proof puts the entry at its index in the checkpointed tree (ErrNotInLog).
func (v *Verifier) Verify(b *Bundle) (*Result, error) {
	e, err := b.validate()
	if err != nil {
		return nil, err
	}
	at := time.Unix(e.IntegratedTime, 0).UTC()
	// Identity (the chain, at the time the log accepted the attestation),
	// then the signature and the device it names.
	er, err := v.VerifyEntry(e)
	if err != nil {
		return nil, err
	}
	p, in := er.Device, er.Statement
	leaf, err := x509.ParseCertificate(e.CertChain[0])
	if err != nil {
		return nil, fmt.Errorf("%w: certificate 0: %v", ErrMalformed, err)
	}

	// Firmware: signed for this model.
	vt, err := v.verifyTUF(b.TUF, in.New.Name)
	if err != nil {
		return nil, err
	}
	if err := checkTarget(vt.meta, in.New, p.Model); err != nil {
		return nil, err
	}

	// Log: signed checkpoint, then inclusion.
	cp, err := v.checkpoint(b.Log.Checkpoint)
	if err != nil {
		return nil, err
	}
	if cp.Size != b.Log.TreeSize {
		return nil, fmt.Errorf("%w: proof is for a tree of %d leaves, the checkpoint commits to %d", ErrNotInLog, b.Log.TreeSize, cp.Size)
	}
	leafBytes, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	if err := tlogverify.VerifyInclusion(leafBytes, b.Log.LeafIndex, cp, b.Log.InclusionProof); err != nil {
		return nil, reclass(err, ErrNotInLog)
	}
	return &Result{
		Device: p, Statement: in, Certificate: leaf, IntegratedTime: at,
		LeafIndex: b.Log.LeafIndex, Checkpoint: cp,
		TargetsVersion: vt.topVersion, TargetsRole: vt.role, RoleVersion: vt.meta.Signed.Version, RootVersion: vt.rootVersion,
	}, nil
}

// certificates parses the entry's leaf, and its intermediates into a pool.
// A fleet shares its intermediates, so their parsed pool is remembered (by
// content hash; parsing is deterministic, nothing is trusted by it).
func (v *Verifier) certificates(e Entry) (*x509.Certificate, *intermediates, error) {
	if err := e.validate(); err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(e.CertChain[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate 0: %v", ErrMalformed, err)
	}
	h := sha256.New()
	for _, der := range e.CertChain[1:] {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(der)))
		h.Write(n[:])
		h.Write(der)
	}
	var key [32]byte
	h.Sum(key[:0])
	in, err := v.intermediates.Get(context.Background(), key, func(context.Context) (*intermediates, error) {
		in := &intermediates{pool: x509.NewCertPool()}
		for i, der := range e.CertChain[1:] {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("%w: certificate %d: %v", ErrMalformed, i+1, err)
			}
			in.certs = append(in.certs, c)
			in.pool.AddCert(c)
		}
		return in, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return leaf, in, nil
}

// intermediates are a chain's certificates after the leaf.
type intermediates struct {
	certs []*x509.Certificate
	pool  *x509.CertPool
}

// reclass puts a tlogverify error into class (a malformed proof or
// checkpoint proves nothing, so it fails that check).
func reclass(err, class error) error {
	if errors.Is(err, class) {
		return err
	}
	return fmt.Errorf("%w: %v", class, err)
}

func (v *Verifier) checkpoint(signed string) (tlogverify.Checkpoint, error) {
	return v.checkpoints.Get(context.Background(), signed, func(context.Context) (tlogverify.Checkpoint, error) {
		cp, err := tlogverify.ParseCheckpoint([]byte(signed), v.roots.LogKey)
		if err != nil {
			return cp, reclass(err, ErrCheckpointSignature)
		}
		return cp, nil
	})
}

// verifyTUF walks the root chain from the trusted root, verifies the
// top-level targets metadata with the last root, and finds the role that
// signs target by the TUF search (pkg/tufwalk: the same rules as the agent
// and fosterd), loading each delegated role from the bundle and verifying it
// against its delegator. A role the search needs that the bundle lacks fails
// the check. Expiry is deliberately ignored.
func (v *Verifier) verifyTUF(ev TUFEvidence, target string) (*verifiedTargets, error) {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, r := range ev.Roots {
		field(r)
	}
	h.Write([]byte{0xff})
	field(ev.Targets)
	for _, d := range ev.Delegations {
		field([]byte(d.Name))
		field(d.Metadata)
	}
	field([]byte(target))
	var key [32]byte
	h.Sum(key[:0])
	return v.tuf.Get(context.Background(), key, func(context.Context) (*verifiedTargets, error) {
		return v.searchTUF(ev, target)
	})
}

func (v *Verifier) searchTUF(ev TUFEvidence, target string) (*verifiedTargets, error) {
	cur := v.tufRoot
	for i, raw := range ev.Roots {
		next, err := metadata.Root().FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: root metadata %d: %v", ErrTargetNotSigned, i, err)
		}
		switch ver := next.Signed.Version; {
		case ver <= cur.Signed.Version:
			continue // the auditor already trusts this root or a later one
		case ver != cur.Signed.Version+1:
			return nil, fmt.Errorf("%w: root version %d follows %d", ErrTargetNotSigned, ver, cur.Signed.Version)
		}
		if err := cur.VerifyDelegate(metadata.ROOT, next); err != nil {
			return nil, fmt.Errorf("%w: root v%d is not signed by root v%d: %v", ErrTargetNotSigned, next.Signed.Version, cur.Signed.Version, err)
		}
		if err := next.VerifyDelegate(metadata.ROOT, next); err != nil {
			return nil, fmt.Errorf("%w: root v%d is not signed by its own keys: %v", ErrTargetNotSigned, next.Signed.Version, err)
		}
		cur = next
	}
	tg, err := metadata.Targets().FromBytes(ev.Targets)
	if err != nil {
		return nil, fmt.Errorf("%w: targets metadata: %v", ErrTargetNotSigned, err)
	}
	if err := cur.VerifyDelegate(metadata.TARGETS, tg); err != nil {
		return nil, fmt.Errorf("%w: targets v%d is not signed by the targets keys of root v%d: %v", ErrTargetNotSigned, tg.Signed.Version, cur.Signed.Version, err)
	}
	bundled := map[string][]byte{}
	for _, d := range ev.Delegations {
		bundled[d.Name] = d.Metadata
	}
	verified := map[string]*metadata.Metadata[metadata.TargetsType]{metadata.TARGETS: tg}
	f, err := tufwalk.Find(target, MaxDelegations, func(role, parent string) (*tufwalk.Targets, error) {
		if role == metadata.TARGETS {
			return tg, nil
		}
		raw, ok := bundled[role]
		if !ok {
			return nil, fmt.Errorf("%w: the bundle lacks role %s, which %s delegates %q to", ErrTargetNotSigned, role, parent, target)
		}
		md, err := metadata.Targets().FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %s metadata: %v", ErrTargetNotSigned, role, err)
		}
		if err := verified[parent].VerifyDelegate(role, md); err != nil {
			return nil, fmt.Errorf("%w: %s is not signed by the keys %s delegates to it: %v", ErrTargetNotSigned, role, parent, err)
		}
		verified[role] = md
		return md, nil
	})
	if errors.Is(err, tufwalk.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", ErrTargetNotSigned, err)
	}
	if err != nil {
		return nil, err
	}
	last := f.Chain[len(f.Chain)-1]
	return &verifiedTargets{meta: last.Meta, role: last.Role, rootVersion: cur.Signed.Version, topVersion: tg.Signed.Version}, nil
}

// targetCustom is the signed custom metadata of a Foster target (docs/CONTRACTS.md).
type targetCustom struct {
	Model          string `json:"model"`
	Version        string `json:"version"`
	ReleaseCounter int64  `json:"release_counter"`
}

// CheckTarget reports whether signed targets metadata lists t for model
// (digest, length, and the version and release counter when t states them).
// The error wraps ErrTargetNotSigned. fosterd runs the same check at ingest.
func CheckTarget(tg *metadata.Metadata[metadata.TargetsType], t attest.Target, model string) error {
	return checkTarget(tg, t, model)
}

func checkTarget(tg *metadata.Metadata[metadata.TargetsType], t attest.Target, model string) error {
	tf, ok := tg.Signed.Targets[t.Name]
	if !ok {
		return fmt.Errorf("%w: %q is not a target of targets v%d", ErrTargetNotSigned, t.Name, tg.Signed.Version)
	}
	if got := hex.EncodeToString(tf.Hashes["sha256"]); got != t.SHA256 || tf.Length != t.Length {
		return fmt.Errorf("%w: %q was signed with sha256 %s and length %d, the attestation says sha256 %s and length %d",
			ErrTargetNotSigned, t.Name, got, tf.Length, t.SHA256, t.Length)
	}
	var c targetCustom
	if tf.Custom != nil {
		if err := json.Unmarshal(*tf.Custom, &c); err != nil {
			return fmt.Errorf("%w: %q has malformed custom metadata: %v", ErrTargetNotSigned, t.Name, err)
		}
	}
	if c.Model != model {
		return fmt.Errorf("%w: %q was signed for model %q, the device is a %q", ErrTargetNotSigned, t.Name, c.Model, model)
	}
	if (t.Version != "" && t.Version != c.Version) || (t.ReleaseCounter != 0 && t.ReleaseCounter != c.ReleaseCounter) {
		return fmt.Errorf("%w: %q was signed as version %s counter %d, the attestation says version %s counter %d",
			ErrTargetNotSigned, t.Name, c.Version, c.ReleaseCounter, t.Version, t.ReleaseCounter)
	}
	return nil
}
