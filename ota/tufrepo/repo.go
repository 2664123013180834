package tufrepo

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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
	MaxTargetsSize   = 5000000 // bytes, per targets role (top-level, model or bin)
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
	// ErrTargetNotFound: no published target has that path.
	ErrTargetNotFound = errors.New("target not found")
	// ErrLengthMismatch: the body's length differs from the declared length.
	ErrLengthMismatch = errors.New("target length mismatch")
	// ErrHashMismatch: the body's hash differs from the declared hash.
	ErrHashMismatch = errors.New("target hash mismatch")
	// ErrTooLarge: a body or the resulting metadata exceeds its bound.
	ErrTooLarge = errors.New("too large")
	// ErrStaged: staged (ceremony) metadata was refused; nothing was published.
	ErrStaged = errors.New("staged metadata refused")
)

// Keys are the signers the repository holds. Init needs Root, Targets,
// Snapshot and Timestamp. Open accepts missing (nil) keys, for deployments
// whose root and targets keys are offline: operations that need a missing key
// fail with ErrKeyUnavailable. Use Ed25519 or ECDSA P-256.
type Keys struct {
	Root, Targets, Snapshot, Timestamp signature.Signer
	// Models returns the key that signs model's delegated role
	// (models/<model>) and its hashed bins, or nil if this process holds
	// none. A nil Models means the Targets key signs model roles too (a
	// single-key development setup).
	Models func(model string) signature.Signer
	// Extra are further keys, used during rotations: every role is signed by
	// each held key that the metadata's delegator trusts, so a new snapshot
	// key can sign alongside the old one while a new root is published.
	Extra []signature.Signer
}

// Options tune a repository. Zero values take the documented defaults.
type Options struct {
	RootExpiry time.Duration // default 365 days
	// TargetsExpiry applies to top-level targets when this process signs
	// it. Default 365 days.
	TargetsExpiry time.Duration
	// DelegatedExpiry applies to the delegated targets roles: models/<model>
	// and their bins. Default TargetsExpiry.
	DelegatedExpiry time.Duration
	SnapshotExpiry  time.Duration // default 7 days
	TimestampExpiry time.Duration // default 1 day
	// MaxTargetLength bounds a target body. Default 4 GiB.
	MaxTargetLength int64 // bytes
	// RecentTargets is how many targets (the highest release counters) a
	// model's role lists itself, besides its stepping stones (the newest
	// full image of each hardware id, however old); the others move to
	// hashed bins, so devices, which look only at the model's role,
	// download a small role. Default 32.
	RecentTargets int
	// TargetsPerBin is the average bin size above which a model's bins are
	// doubled (and re-signed once). Default 256 targets (~100 KB per bin).
	TargetsPerBin int
	// ServeGuard: Metadata refreshes timestamp and snapshot before serving
	// them if they expire within this. Default 1 minute.
	ServeGuard time.Duration
	// Now is the clock used for expiries. Default time.Now.
	Now func() time.Time
	// AfterWrite, if set, is called after each metadata object of a publish
	// is written (tests use it to crash a publish midway).
	AfterWrite func(key string)
	// Arbiter, if set, makes publishing safe for several Repos (fosterd
	// replicas) sharing one blob store: see Arbiter. Nil: this Repo is the
	// only writer of its store.
	Arbiter Arbiter
}

const day = 24 * time.Hour

func (o Options) withDefaults() (Options, error) {
	for name, d := range map[string]*time.Duration{
		"root": &o.RootExpiry, "targets": &o.TargetsExpiry, "delegated": &o.DelegatedExpiry,
		"snapshot": &o.SnapshotExpiry, "timestamp": &o.TimestampExpiry, "serve guard": &o.ServeGuard,
	} {
		if *d < 0 {
			return o, fmt.Errorf("negative %s duration %v", name, *d)
		}
	}
	if o.RootExpiry == 0 {
		o.RootExpiry = 365 * day
	}
	if o.TargetsExpiry == 0 {
		o.TargetsExpiry = 365 * day
	}
	if o.DelegatedExpiry == 0 {
		o.DelegatedExpiry = o.TargetsExpiry
	}
	if o.SnapshotExpiry == 0 {
		o.SnapshotExpiry = 7 * day
	}
	if o.TimestampExpiry == 0 {
		o.TimestampExpiry = day
	}
	if o.ServeGuard == 0 {
		o.ServeGuard = time.Minute
	}
	if o.ServeGuard >= min(o.SnapshotExpiry, o.TimestampExpiry) {
		return o, fmt.Errorf("serve guard %v must be shorter than the snapshot and timestamp expiries", o.ServeGuard)
	}
	if o.MaxTargetLength < 0 {
		return o, fmt.Errorf("negative max target length %d", o.MaxTargetLength)
	}
	if o.MaxTargetLength == 0 {
		o.MaxTargetLength = 4 << 30
	}
	if o.RecentTargets < 0 || o.TargetsPerBin < 0 {
		return o, errors.New("negative RecentTargets or TargetsPerBin")
	}
	if o.RecentTargets == 0 {
		o.RecentTargets = 32
	}
	if o.TargetsPerBin == 0 {
		o.TargetsPerBin = 256
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
// concurrent use: uploads stream in parallel, publishing is serialised, and
// readers (Metadata, Targets, Lookup) never wait for a publish.
type Repo struct {
	store blob.Store
	opts  Options
	// sig are the keys the repository signs with, replaced whole by SetKeys
	// (under mu, so a publish signs with one set from start to end).
	sig atomic.Pointer[signers]

	// lockMu queues this process's own publishes before they take the
	// Arbiter's lock (one database connection waiting, not one per caller).
	// Lock order: lockMu, then the Arbiter's lock, then mu.
	lockMu sync.Mutex
	mu     sync.Mutex            // serialises publishing
	cur    atomic.Pointer[state] // the published repository; replaced whole, never mutated
	// laidOut are the models whose role this Repo laid out (under mu): it
	// holds their newest releases and every stepping stone, so a release
	// needs no scan of their bins.
	laidOut map[string]bool
}

// state is one published repository. Its parsed metadata is never modified:
// to change a role, parse a fresh copy from raw.
type state struct {
	root          *metadata.Metadata[metadata.RootType]
	rootRaw       []byte
	snapshot      *metadata.Metadata[metadata.SnapshotType]
	snapshotRaw   []byte
	timestamp     *metadata.Metadata[metadata.TimestampType]
	timestampRaw  []byte
	timestampETag string
	// roles holds "targets" and every delegated targets role reachable
	// from it (models/<model>, models/<model>/bins-<n>).
	roles map[string]*role
}

// role is one signed targets role.
type role struct {
	md  *metadata.Metadata[metadata.TargetsType]
	raw []byte
}

func (s *state) targets() *metadata.Metadata[metadata.TargetsType] {
	return s.roles[metadata.TARGETS].md
}

// Blob keys of metadata (docs/CONTRACTS.md). Delegated role names contain
// "/" (models/edge-gw): clients request 3.models%2Fedge-gw.json, which the
// server and S3 both decode to the key tuf/3.models/edge-gw.json.
func rootKey(v int64) string     { return "tuf/" + strconv.FormatInt(v, 10) + ".root.json" }
func targetsKey(v int64) string  { return roleKey(metadata.TARGETS, v) }
func snapshotKey(v int64) string { return "tuf/" + strconv.FormatInt(v, 10) + ".snapshot.json" }
func roleKey(name string, v int64) string {
	return "tuf/" + strconv.FormatInt(v, 10) + "." + name + ".json"
}

const timestampKey = TimestampKey

// TimestampKey is timestamp.json's blob key: the repository's one mutable
// object, written last by every publish (every other key is written once).
const TimestampKey = "tuf/timestamp.json"

// StagingPrefix starts the blob keys of uploads in flight, which no
// metadata references.
const StagingPrefix = "staging/"

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
	one := func(s signature.Signer) []signature.Signer { return []signature.Signer{s} }
	rootRaw, err := signMeta(ctx, root, root, metadata.ROOT, one(keys.Root), MaxRootSize)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	targets := metadata.Targets(opts.expiry(opts.TargetsExpiry))
	targetsRaw, err := signMeta(ctx, root, targets, metadata.TARGETS, one(keys.Targets), MaxTargetsSize)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	snapshot := metadata.Snapshot(opts.expiry(opts.SnapshotExpiry))
	snapshot.Signed.Meta["targets.json"] = metaFile(1, targetsRaw, true)
	snapshotRaw, err := signMeta(ctx, root, snapshot, metadata.SNAPSHOT, one(keys.Snapshot), MaxSnapshotSize)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	timestamp := metadata.Timestamp(opts.expiry(opts.TimestampExpiry))
	timestamp.Signed.Meta["snapshot.json"] = metaFile(1, snapshotRaw, true)
	timestampRaw, err := signMeta(ctx, root, timestamp, metadata.TIMESTAMP, one(keys.Timestamp), MaxTimestampSize)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	err = putAll(ctx, store, []object{
		{targetsKey(1), targetsRaw},
		{snapshotKey(1), snapshotRaw},
		{timestampKey, timestampRaw},
		{rootKey(1), rootRaw}, // commit marker: Init is done once this exists
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	return clone(rootRaw), nil
}

// Open loads the current repository from store: the newest root (each
// verified by its predecessor, as clients do), then timestamp -> snapshot ->
// targets -> every delegated role, each checked against its delegator's
// signature rules and the version (and length and hashes, if recorded) its
// parent recorded. It checks that the given targets, snapshot and
// timestamp keys (or keys in Extra) are ones root trusts for those roles
// (ErrKeyMismatch). Expired
// metadata is loaded (Refresh renews it).
func Open(ctx context.Context, store blob.Store, keys Keys, opts Options) (*Repo, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := load(ctx, store, nil)
	if err != nil {
		return nil, err
	}
	sig, err := newSigners(ctx, st, keys)
	if err != nil {
		return nil, fmt.Errorf("opening tuf repository: %w", err)
	}
	r := &Repo{store: store, opts: opts, laidOut: map[string]bool{}}
	r.sig.Store(sig)
	r.cur.Store(st)
	return r, nil
}

// signers are a Repo's keys and their keyring.
type signers struct {
	keys Keys
	ring *keyring
}

// newSigners loads keys' key IDs and checks them against st's root: each
// given targets, snapshot and timestamp key must be one root trusts for its
// role, or be accompanied by a held key (Extra) that root trusts for it (a
// rotation whose new root is published but whose configuration still names
// the old key); else ErrKeyMismatch.
func newSigners(ctx context.Context, st *state, keys Keys) (*signers, error) {
	ring, err := newKeyring(ctx, keys)
	if err != nil {
		return nil, err
	}
	// The root key is not checked: a repository never signs root itself
	// after Init (root changes are offline ceremonies), so a configured root
	// key that a ceremony rotated out must not stop the server.
	for _, x := range []struct {
		role string
		s    signature.Signer
	}{{metadata.TARGETS, keys.Targets}, {metadata.SNAPSHOT, keys.Snapshot}, {metadata.TIMESTAMP, keys.Timestamp}} {
		if x.s == nil {
			continue
		}
		trusted := st.root.Signed.Roles[x.role]
		if trusted == nil {
			return nil, fmt.Errorf("%w: root has no %s role", ErrInconsistent, x.role)
		}
		if len(ring.forRole(x.role, trusted.KeyIDs)) == 0 {
			id, _ := ring.idOf(x.s)
			return nil, fmt.Errorf("%s key %s: %w", x.role, id, ErrKeyMismatch)
		}
	}
	return &signers{keys: keys, ring: ring}, nil
}

// SetKeys replaces the keys the repository signs with, without a restart:
// after checking them as Open does (ErrKeyMismatch), it swaps them in whole
// between two publishes; in-flight reads are not disturbed. On error the
// current keys stay. fosterd calls it when the online key record changes
// (foster tuf rotate).
func (r *Repo) SetKeys(ctx context.Context, keys Keys) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	sig, err := newSigners(ctx, r.cur.Load(), keys)
	if err != nil {
		return fmt.Errorf("replacing tuf keys: %w", err)
	}
	r.sig.Store(sig)
	return nil
}

// load reads and verifies the repository in store. With prev (a reload
// after another writer published), the root chain is walked on from prev's
// root, and delegated roles whose version prev already holds are not read
// again (versioned files are written once); they are verified all the same.
func load(ctx context.Context, store blob.Store, prev *state) (*state, error) {
	st := &state{roles: map[string]*role{}}
	var raw []byte
	var root *metadata.Metadata[metadata.RootType]
	if prev != nil {
		raw, root = prev.rootRaw, prev.root
	} else {
		var err error
		raw, err = readBounded(ctx, store, rootKey(1), MaxRootSize)
		if errors.Is(err, blob.ErrNotFound) {
			return nil, fmt.Errorf("opening tuf repository: %w", ErrNotInitialized)
		}
		if err != nil {
			return nil, err
		}
		if root, err = parseRoot(raw, nil, 1); err != nil {
			return nil, err
		}
	}
	var err error
	for {
		next, err := readBounded(ctx, store, rootKey(root.Signed.Version+1), MaxRootSize)
		if errors.Is(err, blob.ErrNotFound) {
			break
		}
		if err != nil {
			return nil, err
		}
		if root, err = parseRoot(next, root, root.Signed.Version+1); err != nil {
			return nil, err
		}
		raw = next
	}
	st.root, st.rootRaw = root, raw

	if st.timestampRaw, err = readBounded(ctx, store, timestampKey, MaxTimestampSize); err != nil {
		return nil, err
	}
	if st.timestamp, err = parseVerify[metadata.TimestampType](root, metadata.TIMESTAMP, st.timestampRaw, nil, 0); err != nil {
		return nil, err
	}
	st.timestampETag = etagOf(st.timestampRaw)
	sm := st.timestamp.Signed.Meta["snapshot.json"]
	if sm == nil {
		return nil, fmt.Errorf("%w: timestamp has no snapshot.json entry", ErrInconsistent)
	}
	if st.snapshotRaw, err = readBounded(ctx, store, snapshotKey(sm.Version), MaxSnapshotSize); err != nil {
		return nil, err
	}
	if st.snapshot, err = parseVerify[metadata.SnapshotType](root, metadata.SNAPSHOT, st.snapshotRaw, sm, sm.Version); err != nil {
		return nil, err
	}
	tm := st.snapshot.Signed.Meta["targets.json"]
	if tm == nil {
		return nil, fmt.Errorf("%w: snapshot has no targets.json entry", ErrInconsistent)
	}
	traw, err := readBounded(ctx, store, targetsKey(tm.Version), MaxTargetsSize)
	if err != nil {
		return nil, err
	}
	tmd, err := parseVerify[metadata.TargetsType](root, metadata.TARGETS, traw, tm, tm.Version)
	if err != nil {
		return nil, err
	}
	st.roles[metadata.TARGETS] = &role{md: tmd, raw: traw}
	if err := loadDelegated(ctx, store, st, prev); err != nil {
		return nil, err
	}
	return st, nil
}

// loadConcurrency bounds parallel reads of delegated roles on Open (a model
// with many bins on S3 is hundreds of GETs).
const loadConcurrency = 16

// loadDelegated loads every role delegated from the roles already in st,
// level by level, verifying each against its delegator.
func loadDelegated(ctx context.Context, store blob.Store, st, prev *state) error {
	type job struct{ name, parent string }
	level := []string{metadata.TARGETS}
	for len(level) > 0 {
		var jobs []job
		for _, parent := range level {
			for _, child := range childRoles(st.roles[parent].md) {
				if _, seen := st.roles[child]; seen || slices.ContainsFunc(jobs, func(j job) bool { return j.name == child }) {
					return fmt.Errorf("%w: role %s is delegated twice", ErrInconsistent, child)
				}
				jobs = append(jobs, job{child, parent})
			}
		}
		loaded := make([]*role, len(jobs))
		errs := make([]error, len(jobs))
		sem := make(chan struct{}, loadConcurrency)
		var wg sync.WaitGroup
		for i, j := range jobs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				loaded[i], errs[i] = loadRole(ctx, store, st, prev, j.name, st.roles[j.parent].md)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		level = level[:0]
		for i, j := range jobs {
			st.roles[j.name] = loaded[i]
			level = append(level, j.name)
		}
	}
	return nil
}

func loadRole(ctx context.Context, store blob.Store, st, prev *state, name string, delegator *metadata.Metadata[metadata.TargetsType]) (*role, error) {
	meta := st.snapshot.Signed.Meta[name+".json"]
	if meta == nil {
		return nil, fmt.Errorf("%w: snapshot has no entry for delegated role %s", ErrInconsistent, name)
	}
	var raw []byte
	if prev != nil {
		if rl := prev.roles[name]; rl != nil && rl.md.Signed.Version == meta.Version {
			raw = rl.raw
		}
	}
	if raw == nil {
		var err error
		if raw, err = readBounded(ctx, store, roleKey(name, meta.Version), MaxTargetsSize); err != nil {
			return nil, err
		}
	}
	if err := checkMetaFile(meta, raw); err != nil {
		return nil, fmt.Errorf("%w: %s does not match its snapshot entry: %w", ErrInconsistent, name, err)
	}
	md, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: parsing %s: %w", ErrInconsistent, name, err)
	}
	if err := delegator.VerifyDelegate(name, md); err != nil {
		return nil, fmt.Errorf("%w: %s signature: %w", ErrInconsistent, name, err)
	}
	if md.Signed.Version != meta.Version {
		return nil, fmt.Errorf("%w: %s has version %d, snapshot says %d", ErrInconsistent, name, md.Signed.Version, meta.Version)
	}
	return &role{md: md, raw: raw}, nil
}

// checkMetaFile checks raw against what a snapshot recorded: the length
// and hashes when present (Foster records only the length for delegated
// roles; hashes are optional in TUF).
func checkMetaFile(meta *metadata.MetaFiles, raw []byte) error {
	if meta.Length != 0 && meta.Length != int64(len(raw)) {
		return fmt.Errorf("length %d, recorded %d", len(raw), meta.Length)
	}
	if len(meta.Hashes) > 0 {
		return meta.VerifyLengthHashes(raw)
	}
	return nil
}

// childRoles lists the roles md delegates to, in delegation order.
func childRoles(md *metadata.Metadata[metadata.TargetsType]) []string {
	d := md.Signed.Delegations
	if d == nil {
		return nil
	}
	if d.SuccinctRoles != nil {
		return d.SuccinctRoles.GetRoles()
	}
	names := make([]string, 0, len(d.Roles))
	for _, r := range d.Roles {
		names = append(names, r.Name)
	}
	return names
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
		if err := checkMetaFile(meta, raw); err != nil {
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
func (r *Repo) RootJSON() []byte { return clone(r.cur.Load().rootRaw) }

// CheckStore reads the blob store cheaply (one Stat of the published
// timestamp.json): fosterd's readiness check that the bucket or directory
// the repository lives in answers.
func (r *Repo) CheckStore(ctx context.Context) error {
	if _, err := r.store.Stat(ctx, timestampKey); err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	return nil
}

// Versions returns the current version of each top-level role.
func (r *Repo) Versions() (root, targets, snapshot, timestamp int64) {
	st := r.cur.Load()
	return st.root.Signed.Version, st.targets().Signed.Version, st.snapshot.Signed.Version, st.timestamp.Signed.Version
}

// Expiries returns when each top-level role's current metadata expires.
// Refresh renews snapshot, timestamp and (with their keys) targets roles;
// root must be re-signed offline (a root ceremony) before it expires.
func (r *Repo) Expiries() (root, targets, snapshot, timestamp time.Time) {
	st := r.cur.Load()
	return st.root.Signed.Expires, st.targets().Signed.Expires, st.snapshot.Signed.Expires, st.timestamp.Signed.Expires
}

type object struct {
	key  string
	data []byte
}

// putAll writes objs in order, stopping at the first failure. after, if
// set, is called after each write.
func putAll(ctx context.Context, store blob.Store, objs []object, after func(string)) error {
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := store.Put(ctx, o.key, bytes.NewReader(o.data), int64(len(o.data))); err != nil {
			return fmt.Errorf("writing %s: %w", o.key, err)
		}
		if after != nil {
			after(o.key)
		}
	}
	return nil
}

// signMeta replaces m's signatures with one by each signer, checks that
// delegator accepts the result for role (threshold met; and so a key go-tuf
// cannot verify is caught here, not on devices) and that it fits in max
// bytes, and returns the bytes.
func signMeta[T metadata.Roles, D metadata.Roles](ctx context.Context, delegator *metadata.Metadata[D], m *metadata.Metadata[T], role string, signers []signature.Signer, max int) ([]byte, error) {
	m.ClearSignatures()
	for _, s := range signers {
		if _, err := m.Sign(ctxSigner{s, ctx}); err != nil {
			return nil, fmt.Errorf("signing %s: %w", role, err)
		}
	}
	if err := delegator.VerifyDelegate(role, m); err != nil {
		return nil, fmt.Errorf("signing %s with %d held key(s): %w: %w", role, len(signers), ErrKeyUnavailable, err)
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

// metaFile records a metadata file in snapshot or timestamp: its version
// and length, and its SHA-256 when hashed (top-level files; delegated roles
// are pinned by version and signature, which keeps snapshot small).
func metaFile(version int64, raw []byte, hashed bool) *metadata.MetaFiles {
	m := &metadata.MetaFiles{Version: version, Length: int64(len(raw))}
	if hashed {
		sum := sha256.Sum256(raw)
		m.Hashes = metadata.Hashes{"sha256": sum[:]}
	}
	return m
}

// etagOf is a strong HTTP entity tag for metadata bytes.
func etagOf(raw []byte) string {
	sum := sha256.Sum256(raw)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}

// tufKey converts a signer's public key to a TUF key and its ID, refusing
// key types go-tuf would mislabel.
func tufKey(ctx context.Context, s signature.Signer) (*metadata.Key, string, error) {
	pub, err := s.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("public key: %w", err)
	}
	return TUFKey(pub)
}

// TUFKey converts a public key to a TUF key and its key ID. Only Ed25519 and
// ECDSA P-256 are accepted: go-tuf labels every ECDSA key P-256.
func TUFKey(pub crypto.PublicKey) (*metadata.Key, string, error) {
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
