package tufrepo

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Size limits of metadata files. They equal go-tuf's client defaults
// (config.New), so the repository refuses to publish metadata that devices
// would refuse to download.
const (
	MaxRootSize      = 512000  // bytes
	MaxTimestampSize = 16384   // bytes
	MaxSnapshotSize  = 2000000 // bytes
	MaxTargetsSize   = 5000000 // bytes
)

var (
	// ErrExists: Init found a repository already in the store.
	ErrExists = errors.New("tuf repository already exists")
	// ErrNotInitialized: Open found no tuf/1.root.json.
	ErrNotInitialized = errors.New("no tuf repository in blob store")
	// ErrInconsistent: the stored metadata does not verify (corruption or tampering).
	ErrInconsistent = errors.New("inconsistent tuf repository")
	// ErrKeyMismatch: a key given to Open is not the one root trusts for its role.
	ErrKeyMismatch = errors.New("key not trusted by root for this role")
	// ErrKeyUnavailable: an operation needs a role's key and it was not given.
	ErrKeyUnavailable = errors.New("signing key not available")
	// ErrInvalidTarget: bad target path, empty body or bad custom metadata.
	ErrInvalidTarget = errors.New("invalid target")
	// ErrTargetExists: the target path is already published (paths are immutable).
	ErrTargetExists = errors.New("target already published")
	// ErrLengthMismatch: the body's length differs from the declared length.
	ErrLengthMismatch = errors.New("target length mismatch")
	// ErrTooLarge: a body or the resulting metadata exceeds its bound.
	ErrTooLarge = errors.New("too large")
)

// Keys are the signers of the four top-level roles. Init needs all four.
// Open accepts missing (nil) keys, for deployments whose root and targets
// keys are offline: operations that need a missing key fail with
// ErrKeyUnavailable. Use Ed25519 or ECDSA P-256.
type Keys struct {
	Root, Targets, Snapshot, Timestamp signature.Signer
}

// Options tune a repository. Zero values take the documented defaults.
type Options struct {
	RootExpiry      time.Duration // default 365 days
	TargetsExpiry   time.Duration // default 365 days (the dev instance signs targets online)
	SnapshotExpiry  time.Duration // default 7 days
	TimestampExpiry time.Duration // default 1 day
	// MaxTargetLength bounds a target body. Default 4 GiB.
	MaxTargetLength int64 // bytes
	// Now is the clock used for expiries. Default time.Now.
	Now func() time.Time
}

const day = 24 * time.Hour

func (o Options) withDefaults() (Options, error) {
	for name, d := range map[string]*time.Duration{
		"root": &o.RootExpiry, "targets": &o.TargetsExpiry,
		"snapshot": &o.SnapshotExpiry, "timestamp": &o.TimestampExpiry,
	} {
		if *d < 0 {
			return o, fmt.Errorf("negative %s expiry %v", name, *d)
		}
	}
	if o.RootExpiry == 0 {
		o.RootExpiry = 365 * day
	}
	if o.TargetsExpiry == 0 {
		o.TargetsExpiry = 365 * day
	}
	if o.SnapshotExpiry == 0 {
		o.SnapshotExpiry = 7 * day
	}
	if o.TimestampExpiry == 0 {
		o.TimestampExpiry = day
	}
	if o.MaxTargetLength < 0 {
		return o, fmt.Errorf("negative max target length %d", o.MaxTargetLength)
	}
	if o.MaxTargetLength == 0 {
		o.MaxTargetLength = 4 << 30
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// expiry returns now+d in the form TUF expects: UTC, whole seconds
// (python-tuf and others reject fractional seconds).
func (o Options) expiry(d time.Duration) time.Time {
	return o.Now().Add(d).UTC().Truncate(time.Second)
}

// Repo is a TUF repository loaded from a blob store. It is safe for
// concurrent use: uploads stream in parallel, publishing is serialised.
type Repo struct {
	store blob.Store
	keys  Keys
	opts  Options

	mu sync.Mutex
	st state // guarded by mu; replaced whole, never mutated
}

// state is one published repository. Its parsed metadata is never modified:
// to change a role, parse a fresh copy from raw.
type state struct {
	root         *metadata.Metadata[metadata.RootType]
	rootRaw      []byte
	targets      *metadata.Metadata[metadata.TargetsType]
	targetsRaw   []byte
	snapshot     *metadata.Metadata[metadata.SnapshotType]
	snapshotRaw  []byte
	timestamp    *metadata.Metadata[metadata.TimestampType]
	timestampRaw []byte
}

// Blob keys of metadata (docs/CONTRACTS.md).
func rootKey(v int64) string     { return "tuf/" + strconv.FormatInt(v, 10) + ".root.json" }
func targetsKey(v int64) string  { return "tuf/" + strconv.FormatInt(v, 10) + ".targets.json" }
func snapshotKey(v int64) string { return "tuf/" + strconv.FormatInt(v, 10) + ".snapshot.json" }

const timestampKey = "tuf/timestamp.json"

// Init creates a new repository in store: 1.root.json (consistent
// snapshots, threshold 1 per role), an empty 1.targets.json,
// 1.snapshot.json and timestamp.json. It returns the root.json bytes to hand
// to clients as their trust anchor. It refuses (ErrExists) if
// tuf/1.root.json exists. 1.root.json is written last, so an interrupted
// Init can simply be run again.
func Init(ctx context.Context, store blob.Store, keys Keys, opts Options) (rootJSON []byte, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	roles := []struct {
		name   string
		signer signature.Signer
	}{
		{metadata.ROOT, keys.Root}, {metadata.TARGETS, keys.Targets},
		{metadata.SNAPSHOT, keys.Snapshot}, {metadata.TIMESTAMP, keys.Timestamp},
	}
	for _, r := range roles {
		if r.signer == nil {
			return nil, fmt.Errorf("init: %s key: %w", r.name, ErrKeyUnavailable)
		}
	}
	if _, err := store.Stat(ctx, rootKey(1)); err == nil {
		return nil, fmt.Errorf("init: %s: %w", rootKey(1), ErrExists)
	} else if !errors.Is(err, blob.ErrNotFound) {
		return nil, fmt.Errorf("init: %w", err)
	}

	root := metadata.Root(opts.expiry(opts.RootExpiry))
	root.Signed.ConsistentSnapshot = true
	for _, r := range roles {
		key, _, err := tufKey(ctx, r.signer)
		if err != nil {
			return nil, fmt.Errorf("init: %s key: %w", r.name, err)
		}
		if err := root.Signed.AddKey(key, r.name); err != nil {
			return nil, fmt.Errorf("init: adding %s key: %w", r.name, err)
		}
	}
	var st state
	st.root = root
	if st.rootRaw, err = signMeta(ctx, root, root, metadata.ROOT, keys.Root, MaxRootSize); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	st.targets = metadata.Targets(opts.expiry(opts.TargetsExpiry))
	if st.targetsRaw, err = signMeta(ctx, root, st.targets, metadata.TARGETS, keys.Targets, MaxTargetsSize); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	st.snapshot = metadata.Snapshot(opts.expiry(opts.SnapshotExpiry))
	st.snapshot.Signed.Meta["targets.json"] = metaFile(1, st.targetsRaw)
	if st.snapshotRaw, err = signMeta(ctx, root, st.snapshot, metadata.SNAPSHOT, keys.Snapshot, MaxSnapshotSize); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	st.timestamp = metadata.Timestamp(opts.expiry(opts.TimestampExpiry))
	st.timestamp.Signed.Meta["snapshot.json"] = metaFile(1, st.snapshotRaw)
	if st.timestampRaw, err = signMeta(ctx, root, st.timestamp, metadata.TIMESTAMP, keys.Timestamp, MaxTimestampSize); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	err = putAll(ctx, store, []object{
		{targetsKey(1), st.targetsRaw},
		{snapshotKey(1), st.snapshotRaw},
		{timestampKey, st.timestampRaw},
		{rootKey(1), st.rootRaw}, // commit marker: Init is done once this exists
	})
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	return clone(st.rootRaw), nil
}

// Open loads the current repository from store: the newest root (each
// verified by its predecessor, as clients do), then timestamp -> snapshot ->
// targets, each checked against its signature and the length and hash its
// parent recorded. It checks that every given key is the one root trusts
// for its role (ErrKeyMismatch). Expired metadata is loaded (Refresh renews it).
func Open(ctx context.Context, store blob.Store, keys Keys, opts Options) (*Repo, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := load(ctx, store)
	if err != nil {
		return nil, err
	}
	for role, s := range map[string]signature.Signer{
		metadata.ROOT: keys.Root, metadata.TARGETS: keys.Targets,
		metadata.SNAPSHOT: keys.Snapshot, metadata.TIMESTAMP: keys.Timestamp,
	} {
		if s == nil {
			continue
		}
		_, id, err := tufKey(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("opening tuf repository: %s key: %w", role, err)
		}
		trusted := st.root.Signed.Roles[role]
		if trusted == nil {
			return nil, fmt.Errorf("opening tuf repository: %w: root has no %s role", ErrInconsistent, role)
		}
		if !slices.Contains(trusted.KeyIDs, id) {
			return nil, fmt.Errorf("opening tuf repository: %s key %s: %w", role, id, ErrKeyMismatch)
		}
	}
	return &Repo{store: store, keys: keys, opts: opts, st: st}, nil
}

func load(ctx context.Context, store blob.Store) (state, error) {
	var st state
	raw, err := readBounded(ctx, store, rootKey(1), MaxRootSize)
	if errors.Is(err, blob.ErrNotFound) {
		return st, fmt.Errorf("opening tuf repository: %w", ErrNotInitialized)
	}
	if err != nil {
		return st, err
	}
	root, err := parseRoot(raw, nil, 1)
	if err != nil {
		return st, err
	}
	for {
		next, err := readBounded(ctx, store, rootKey(root.Signed.Version+1), MaxRootSize)
		if errors.Is(err, blob.ErrNotFound) {
			break
		}
		if err != nil {
			return st, err
		}
		if root, err = parseRoot(next, root, root.Signed.Version+1); err != nil {
			return st, err
		}
		raw = next
	}
	st.root, st.rootRaw = root, raw

	if st.timestampRaw, err = readBounded(ctx, store, timestampKey, MaxTimestampSize); err != nil {
		return st, err
	}
	if st.timestamp, err = parseVerify[metadata.TimestampType](root, metadata.TIMESTAMP, st.timestampRaw, nil, 0); err != nil {
		return st, err
	}
	sm := st.timestamp.Signed.Meta["snapshot.json"]
	if sm == nil {
		return st, fmt.Errorf("%w: timestamp has no snapshot.json entry", ErrInconsistent)
	}
	if st.snapshotRaw, err = readBounded(ctx, store, snapshotKey(sm.Version), MaxSnapshotSize); err != nil {
		return st, err
	}
	if st.snapshot, err = parseVerify[metadata.SnapshotType](root, metadata.SNAPSHOT, st.snapshotRaw, sm, sm.Version); err != nil {
		return st, err
	}
	tm := st.snapshot.Signed.Meta["targets.json"]
	if tm == nil {
		return st, fmt.Errorf("%w: snapshot has no targets.json entry", ErrInconsistent)
	}
	if st.targetsRaw, err = readBounded(ctx, store, targetsKey(tm.Version), MaxTargetsSize); err != nil {
		return st, err
	}
	if st.targets, err = parseVerify[metadata.TargetsType](root, metadata.TARGETS, st.targetsRaw, tm, tm.Version); err != nil {
		return st, err
	}
	return st, nil
}

func parseRoot(raw []byte, prev *metadata.Metadata[metadata.RootType], version int64) (*metadata.Metadata[metadata.RootType], error) {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInconsistent, rootKey(version), err)
	}
	if root.Signed.Version != version {
		return nil, fmt.Errorf("%w: %s has version %d", ErrInconsistent, rootKey(version), root.Signed.Version)
	}
	if prev != nil {
		if err := prev.VerifyDelegate(metadata.ROOT, root); err != nil {
			return nil, fmt.Errorf("%w: %s not signed by root %d: %w", ErrInconsistent, rootKey(version), prev.Signed.Version, err)
		}
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return nil, fmt.Errorf("%w: %s not self-signed: %w", ErrInconsistent, rootKey(version), err)
	}
	return root, nil
}

// parseVerify parses raw as role's metadata, checks it against the length
// and hashes its parent recorded (meta, if any), its signatures against root,
// and its version (if version > 0).
func parseVerify[T metadata.Roles](root *metadata.Metadata[metadata.RootType], role string, raw []byte, meta *metadata.MetaFiles, version int64) (*metadata.Metadata[T], error) {
	if meta != nil {
		if err := meta.VerifyLengthHashes(raw); err != nil {
			return nil, fmt.Errorf("%w: %s does not match its recorded length/hash: %w", ErrInconsistent, role, err)
		}
	}
	m, err := new(metadata.Metadata[T]).FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing %s: %w", ErrInconsistent, role, err)
	}
	if err := root.VerifyDelegate(role, m); err != nil {
		return nil, fmt.Errorf("%w: %s signature: %w", ErrInconsistent, role, err)
	}
	if version > 0 && metaVersion(m) != version {
		return nil, fmt.Errorf("%w: %s has version %d, want %d", ErrInconsistent, role, metaVersion(m), version)
	}
	return m, nil
}

func metaVersion[T metadata.Roles](m *metadata.Metadata[T]) int64 {
	switch s := any(&m.Signed).(type) {
	case *metadata.RootType:
		return s.Version
	case *metadata.TargetsType:
		return s.Version
	case *metadata.SnapshotType:
		return s.Version
	case *metadata.TimestampType:
		return s.Version
	}
	return 0
}

// RootJSON returns the current root metadata, the trust anchor for clients.
func (r *Repo) RootJSON() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return clone(r.st.rootRaw)
}

// Versions returns the current version of each top-level role.
func (r *Repo) Versions() (root, targets, snapshot, timestamp int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.root.Signed.Version, r.st.targets.Signed.Version, r.st.snapshot.Signed.Version, r.st.timestamp.Signed.Version
}

// Expiries returns when each top-level role's current metadata expires.
// Refresh renews snapshot, timestamp and (with its key) targets; root must be
// re-signed offline before it expires.
func (r *Repo) Expiries() (root, targets, snapshot, timestamp time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.root.Signed.Expires, r.st.targets.Signed.Expires, r.st.snapshot.Signed.Expires, r.st.timestamp.Signed.Expires
}

// Refresh re-signs whatever expires within margin of now: timestamp;
// snapshot (and so timestamp); targets (and so snapshot and timestamp) when
// the targets key is online. fosterd calls it periodically (say hourly) with
// a margin of a fraction of the timestamp expiry (say a quarter), which must
// be shorter than the snapshot and timestamp expiries. If targets needs renewing but its key
// is offline, the rest is still renewed and the error wraps ErrKeyUnavailable.
func (r *Repo) Refresh(ctx context.Context, margin time.Duration) error {
	if margin < 0 || margin >= min(r.opts.SnapshotExpiry, r.opts.TimestampExpiry) {
		return fmt.Errorf("refresh margin %v must be >= 0 and shorter than the snapshot and timestamp expiries, or every call re-signs", margin)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	deadline := r.opts.Now().Add(margin)
	cur := r.st
	needTargets := cur.targets.Signed.Expires.Before(deadline)
	needSnapshot := cur.snapshot.Signed.Expires.Before(deadline)
	needTimestamp := cur.timestamp.Signed.Expires.Before(deadline)

	var targetsErr error
	if needTargets && r.keys.Targets == nil {
		targetsErr = fmt.Errorf("refresh: targets metadata expires at %s: %w", cur.targets.Signed.Expires.Format(time.RFC3339), ErrKeyUnavailable)
		needTargets = false
	}
	if !needTargets && !needSnapshot && !needTimestamp {
		return targetsErr
	}
	var tf *metadata.Metadata[metadata.TargetsType]
	if needTargets {
		var err error
		if tf, err = copyMeta[metadata.TargetsType](cur.targetsRaw); err != nil {
			return err
		}
	}
	next, objs, err := r.publishable(ctx, cur, tf, needSnapshot)
	if err != nil {
		return errors.Join(fmt.Errorf("refresh: %w", err), targetsErr)
	}
	if err := putAll(ctx, r.store, objs); err != nil {
		return errors.Join(fmt.Errorf("refresh: %w", err), targetsErr)
	}
	r.st = next
	return targetsErr
}

// publishable signs the next repository state: a new targets if tf is not
// nil (already modified, not yet versioned or signed), a new snapshot if
// targets changed or snapshot is set, and always a new timestamp. It returns
// the objects to write, timestamp last. cur is not modified.
func (r *Repo) publishable(ctx context.Context, cur state, tf *metadata.Metadata[metadata.TargetsType], snapshot bool) (state, []object, error) {
	if r.keys.Snapshot == nil || r.keys.Timestamp == nil {
		return state{}, nil, fmt.Errorf("publishing needs the snapshot and timestamp keys: %w", ErrKeyUnavailable)
	}
	next := cur
	var objs []object
	var err error
	if tf != nil {
		if r.keys.Targets == nil {
			return state{}, nil, fmt.Errorf("publishing targets: %w", ErrKeyUnavailable)
		}
		tf.Signed.Version = cur.targets.Signed.Version + 1
		tf.Signed.Expires = r.opts.expiry(r.opts.TargetsExpiry)
		if next.targetsRaw, err = signMeta(ctx, cur.root, tf, metadata.TARGETS, r.keys.Targets, MaxTargetsSize); err != nil {
			return state{}, nil, err
		}
		next.targets = tf
		objs = append(objs, object{targetsKey(tf.Signed.Version), next.targetsRaw})
	}

	if tf != nil || snapshot {
		sn, err := copyMeta[metadata.SnapshotType](cur.snapshotRaw)
		if err != nil {
			return state{}, nil, err
		}
		sn.Signed.Version = cur.snapshot.Signed.Version + 1
		sn.Signed.Expires = r.opts.expiry(r.opts.SnapshotExpiry)
		sn.Signed.Meta["targets.json"] = metaFile(next.targets.Signed.Version, next.targetsRaw)
		if next.snapshotRaw, err = signMeta(ctx, cur.root, sn, metadata.SNAPSHOT, r.keys.Snapshot, MaxSnapshotSize); err != nil {
			return state{}, nil, err
		}
		next.snapshot = sn
		objs = append(objs, object{snapshotKey(sn.Signed.Version), next.snapshotRaw})
	}

	ts, err := copyMeta[metadata.TimestampType](cur.timestampRaw)
	if err != nil {
		return state{}, nil, err
	}
	ts.Signed.Version = cur.timestamp.Signed.Version + 1
	ts.Signed.Expires = r.opts.expiry(r.opts.TimestampExpiry)
	ts.Signed.Meta["snapshot.json"] = metaFile(next.snapshot.Signed.Version, next.snapshotRaw)
	if next.timestampRaw, err = signMeta(ctx, cur.root, ts, metadata.TIMESTAMP, r.keys.Timestamp, MaxTimestampSize); err != nil {
		return state{}, nil, err
	}
	next.timestamp = ts
	objs = append(objs, object{timestampKey, next.timestampRaw}) // last: this publishes
	return next, objs, nil
}

type object struct {
	key  string
	data []byte
}

// putAll writes objs in order, stopping at the first failure.
func putAll(ctx context.Context, store blob.Store, objs []object) error {
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := store.Put(ctx, o.key, bytes.NewReader(o.data), int64(len(o.data))); err != nil {
			return fmt.Errorf("writing %s: %w", o.key, err)
		}
	}
	return nil
}

// signMeta replaces m's signatures with one by signer, checks that root
// accepts it for role (so a key go-tuf cannot verify is caught here, not on
// devices) and that the result fits in max bytes, and returns the bytes.
func signMeta[T metadata.Roles](ctx context.Context, root *metadata.Metadata[metadata.RootType], m *metadata.Metadata[T], role string, signer signature.Signer, max int) ([]byte, error) {
	m.ClearSignatures()
	if _, err := m.Sign(ctxSigner{signer, ctx}); err != nil {
		return nil, fmt.Errorf("signing %s: %w", role, err)
	}
	if err := root.VerifyDelegate(role, m); err != nil {
		return nil, fmt.Errorf("signing %s: signature does not verify against root: %w", role, err)
	}
	raw, err := m.ToBytes(false)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", role, err)
	}
	if len(raw) > max {
		return nil, fmt.Errorf("%s metadata would be %d bytes, more than the %d clients accept: %w", role, len(raw), max, ErrTooLarge)
	}
	return raw, nil
}

// copyMeta returns an independent, modifiable copy of published metadata.
func copyMeta[T metadata.Roles](raw []byte) (*metadata.Metadata[T], error) {
	m, err := new(metadata.Metadata[T]).FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("copying metadata: %w", err)
	}
	return m, nil
}

func metaFile(version int64, raw []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(raw)
	return &metadata.MetaFiles{
		Version: version,
		Length:  int64(len(raw)),
		Hashes:  metadata.Hashes{"sha256": sum[:]},
	}
}

// tufKey converts a signer's public key to a TUF key and its ID, refusing
// key types go-tuf would mislabel.
func tufKey(ctx context.Context, s signature.Signer) (*metadata.Key, string, error) {
	pub, err := s.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("public key: %w", err)
	}
	if err := checkKeyType(pub); err != nil {
		return nil, "", err
	}
	key, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return nil, "", err
	}
	id, err := key.ID()
	if err != nil {
		return nil, "", err
	}
	return key, id, nil
}

func checkKeyType(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return nil
		}
		return fmt.Errorf("ECDSA key on %s: go-tuf labels every ECDSA key P-256; use Ed25519 or P-256", k.Curve.Params().Name)
	default:
		return fmt.Errorf("unsupported key type %T: use Ed25519 or ECDSA P-256", pub)
	}
}

// ctxSigner passes the caller's context to KMS signers, which go-tuf's
// Metadata.Sign cannot do.
type ctxSigner struct {
	signature.Signer
	ctx context.Context
}

func (s ctxSigner) SignMessage(msg io.Reader, opts ...signature.SignOption) ([]byte, error) {
	return s.Signer.SignMessage(msg, append(opts, options.WithContext(s.ctx))...)
}

func (s ctxSigner) PublicKey(opts ...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return s.Signer.PublicKey(append(opts, options.WithContext(s.ctx))...)
}

func readBounded(ctx context.Context, store blob.Store, key string, max int64) ([]byte, error) {
	rc, _, err := store.Open(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInconsistent, key, max)
	}
	return b, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
