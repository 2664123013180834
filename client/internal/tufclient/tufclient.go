// Package tufclient wraps go-tuf's updater for the device agent (and for the
// `foster-agent tuf` conformance CLI): it refreshes metadata over the agent's
// HTTP client, walks delegations, and picks the target to install from
// signed custom metadata. It never downloads targets (go-tuf's DownloadTarget
// buffers them in memory); client/internal/fetch streams them instead.
//
// Threat model: everything here is decided on TUF-verified metadata only.
// go-tuf provides freeze, rollback, mix-and-match and endless-data defences
// for top-level metadata and keeps the newest trusted metadata in the
// metadata dir; this package adds:
//   - its own delegation walk, which verifies every delegated role against
//     the delegator on the current path (go-tuf caches roles by name, so in a
//     diamond a role verified through one delegator would be trusted through
//     another whose keys never signed it);
//   - a second rollback floor (Seen) kept by the agent's journal, so a lost or
//     corrupted metadata cache cannot let older signed metadata back in;
//   - a durable copy of the newest trusted root (go-tuf writes its cache
//     without fsync; a torn root.json must not orphan the device);
//   - the Foster rules: the model must be ours, the release counter above the
//     installed one (no downgrades, even to a signed older image), an
//     image whose signed hardware ids are not empty must list the device's
//     own (a device that knows no hardware id installs only images listing
//     none: "no hardware id" never means "any hardware"), and a release
//     with signed rollout terms must offer itself to this device: its bucket
//     from the signed seed and its own URN, its groups from its signed
//     membership record (pkg/rollout, docs/ROLLOUTS.md).
package tufclient

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/offline"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/tufwalk"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
	"golang.org/x/mod/semver"
)

// ErrTargetNotFound is returned when no role on a valid delegation path lists a target.
var ErrTargetNotFound = errors.New("target not found")

// ErrRollback is returned when verified metadata is older than metadata the device trusted before.
var ErrRollback = errors.New("rollback")

// Doer sends HTTP requests; *http.Client satisfies it.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// BackupRootFile is the durable copy of the newest trusted root, next to go-tuf's cache.
const BackupRootFile = "trusted-root.json"

// Config configures a Client.
type Config struct {
	// MetadataURL and TargetsURL are the base URLs of metadata and targets.
	MetadataURL, TargetsURL string
	// MetadataDir holds root.json and go-tuf's metadata cache (unversioned names).
	MetadataDir string
	// Root is the trusted root metadata; nil: read MetadataDir/root.json
	// (or its durable backup when KeepRootBackup).
	Root []byte
	// KeepRootBackup keeps a durable copy of the newest root in MetadataDir.
	KeepRootBackup bool
	// HTTP fetches metadata; its requests are bound to the context given to New.
	HTTP Doer
	// UserAgent is sent with metadata requests.
	UserAgent string
	// RefTime is the reference time for expiry checks; zero: the wall clock.
	RefTime time.Time
	// AdoptEqualTimestamp: when the repository's timestamp.json has the
	// version of the cached one but other bytes, put the repository's copy
	// in the cache before the refresh (go-tuf keeps the first copy of a
	// version it saw). An offline bundle's timestamp carries fosterd's
	// current version with a longer expiry (pkg/offline): without this, a
	// device that saw that version online would keep its copy, expired by
	// the time the bundle arrives. go-tuf verifies the adopted copy like
	// any cached file; an equal version is never a rollback.
	AdoptEqualTimestamp bool
}

// Client is one refresh cycle: go-tuf's updater can Refresh only once, so
// make a new Client per check. Not safe for concurrent use.
type Client struct {
	cfg     Config
	up      *updater.Updater
	ucfg    *config.UpdaterConfig
	fetcher fetcher.Fetcher
	// raw holds delegated role bytes fetched or read in this session, so a
	// role reached through several delegators is fetched once and verified
	// against each.
	raw      map[string][]byte
	saved    map[string]bool // raw[role] is in the metadata dir
	verified map[[2]string]*metadata.Metadata[metadata.TargetsType]
	// notOffered are the releases the last Latest passed over (rollout terms).
	notOffered []NotOffered
}

// New builds an updater whose fetches carry ctx (cancellation on shutdown).
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.HTTP == nil || cfg.MetadataURL == "" || cfg.MetadataDir == "" {
		return nil, errors.New("tufclient: MetadataURL, MetadataDir and HTTP are required")
	}
	if len(cfg.Root) == 0 {
		root, err := LoadRoot(cfg.MetadataDir, cfg.KeepRootBackup)
		if err != nil {
			return nil, err
		}
		cfg.Root = root
	}
	ucfg, err := config.New(cfg.MetadataURL, cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("tuf config: %w", err)
	}
	ucfg.LocalMetadataDir = cfg.MetadataDir
	// Never used (targets are streamed by fetch), but go-tuf creates it.
	ucfg.LocalTargetsDir = cfg.MetadataDir
	ucfg.RemoteTargetsURL = cfg.TargetsURL
	// cfg.SetDefaultFetcherHTTPClient wants an *http.Client, whose requests
	// would carry no context; the fetcher only needs Do, so give it one that
	// binds ctx (shutdown cancels metadata downloads). go-tuf's length limits
	// per role still apply.
	df := fetcher.NewDefaultFetcher()
	df.SetHTTPClient(boundDoer{ctx: ctx, d: cfg.HTTP})
	if cfg.UserAgent != "" {
		df.SetHTTPUserAgent(cfg.UserAgent)
	}
	ucfg.Fetcher = df
	up, err := updater.New(ucfg)
	if err != nil {
		return nil, fmt.Errorf("loading trusted TUF root: %w", err)
	}
	if !cfg.RefTime.IsZero() {
		up.UnsafeSetRefTime(cfg.RefTime.UTC())
	}
	return &Client{cfg: cfg, up: up, ucfg: ucfg, fetcher: df, raw: map[string][]byte{}, saved: map[string]bool{},
		verified: map[[2]string]*metadata.Metadata[metadata.TargetsType]{}}, nil
}

// LoadRoot reads the newest trusted root from dir: root.json, or the durable
// backup when root.json is torn or older.
func LoadRoot(dir string, withBackup bool) ([]byte, error) {
	main, mainErr := readRoot(filepath.Join(dir, "root.json"))
	if !withBackup {
		if mainErr != nil {
			return nil, fmt.Errorf("reading trusted TUF root: %w", mainErr)
		}
		return main.raw, nil
	}
	backup, backupErr := readRoot(filepath.Join(dir, BackupRootFile))
	switch {
	case mainErr != nil && backupErr != nil:
		return nil, fmt.Errorf("reading trusted TUF root: %w", mainErr)
	case mainErr != nil:
		return backup.raw, nil
	case backupErr == nil && backup.version > main.version:
		return backup.raw, nil
	}
	return main.raw, nil
}

type rootFile struct {
	raw     []byte
	version int64
}

func readRoot(p string) (rootFile, error) {
	raw, err := statedir.ReadBounded(p, maxRootLength)
	if err != nil {
		return rootFile{}, err
	}
	md, err := metadata.Root().FromBytes(raw)
	if err != nil {
		return rootFile{}, fmt.Errorf("%s: %w", p, err)
	}
	return rootFile{raw: raw, version: md.Signed.Version}, nil
}

// maxRootLength is go-tuf's RootMaxLength.
const maxRootLength = 512000 // bytes

// UnsafeSetRefTime overrides the reference time (tests of the clock rule).
func (c *Client) UnsafeSetRefTime(t time.Time) { c.up.UnsafeSetRefTime(t) }

// Refresh runs the TUF client workflow (root, timestamp, snapshot, targets),
// then makes the cache durable and checks it against seen. It returns the
// new rollback floor.
func (c *Client) Refresh(seen journal.Seen) (journal.Seen, error) {
	if c.cfg.AdoptEqualTimestamp {
		if err := c.adoptEqualTimestamp(); err != nil {
			return seen, err
		}
	}
	if err := c.up.Refresh(); err != nil {
		return seen, fmt.Errorf("refreshing TUF metadata: %s%w", Attack(err), err)
	}
	v := c.Seen()
	for _, r := range []struct {
		role      string
		got, seen int64
	}{{"root", v.Root, seen.Root}, {"timestamp", v.Timestamp, seen.Timestamp}, {"snapshot", v.Snapshot, seen.Snapshot}, {"targets", v.Targets, seen.Targets}} {
		if r.got < r.seen {
			return seen, fmt.Errorf("%w: %s metadata version %d is older than version %d trusted before", ErrRollback, r.role, r.got, r.seen)
		}
	}
	if err := c.syncCache(); err != nil {
		return seen, err
	}
	return v, nil
}

// adoptEqualTimestamp implements Config.AdoptEqualTimestamp. The
// repository's file is fetched once more by go-tuf's refresh (16 KB at most).
func (c *Client) adoptEqualTimestamp() error {
	local := filepath.Join(c.cfg.MetadataDir, metadata.TIMESTAMP+".json")
	cached, err := statedir.ReadBounded(local, c.ucfg.TimestampMaxLength)
	if err != nil {
		return nil // none cached: nothing to prefer
	}
	remote, err := c.fetcher.DownloadFile(strings.TrimSuffix(c.cfg.MetadataURL, "/")+"/"+metadata.TIMESTAMP+".json", c.ucfg.TimestampMaxLength, 0)
	if err != nil {
		return nil // the refresh reports it
	}
	cv, cerr := metadata.Timestamp().FromBytes(cached)
	rv, rerr := metadata.Timestamp().FromBytes(remote)
	if cerr != nil || rerr != nil || cv.Signed.Version != rv.Signed.Version || string(cached) == string(remote) {
		return nil
	}
	// Only a copy the trusted root's timestamp keys signed replaces the
	// cached one (go-tuf checks it again when it loads it).
	if root := c.up.GetTrustedMetadataSet().Root; root == nil || root.VerifyDelegate(metadata.TIMESTAMP, rv) != nil {
		return nil
	}
	return atomicfile.WriteFile(local, remote, 0o644)
}

// BundleSignedAt returns when the trusted timestamp was signed for an
// offline bundle (its signed pkg/offline SignedAtField), and false for an
// ordinary timestamp (or a malformed field).
func (c *Client) BundleSignedAt() (time.Time, bool) {
	ts := c.up.GetTrustedMetadataSet().Timestamp
	if ts == nil {
		return time.Time{}, false
	}
	v, ok := ts.Signed.UnrecognizedFields[offline.SignedAtField].(string)
	if !ok {
		return time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339, v)
	if err != nil || at.After(ts.Signed.Expires) {
		return time.Time{}, false
	}
	return at.UTC(), true
}

// syncCache makes go-tuf's cache durable (it renames without fsync) and
// keeps the durable root backup.
func (c *Client) syncCache() error {
	dir := c.cfg.MetadataDir
	for _, name := range []string{"root.json", "timestamp.json", "snapshot.json", "targets.json"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("syncing TUF cache: %w", err)
		}
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return err
	}
	if !c.cfg.KeepRootBackup {
		return nil
	}
	root := c.up.GetTrustedMetadataSet().Root
	if b, err := readRoot(filepath.Join(dir, BackupRootFile)); err == nil && b.version >= root.Signed.Version {
		return nil
	}
	raw, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil {
		return err
	}
	if md, err := metadata.Root().FromBytes(raw); err != nil || md.Signed.Version != root.Signed.Version {
		return fmt.Errorf("TUF cache root.json does not hold the trusted root version %d", root.Signed.Version)
	}
	return atomicfile.WriteFile(filepath.Join(dir, BackupRootFile), raw, 0o644)
}

// Attack names what a metadata verification failure may be defending against.
func Attack(err error) string {
	switch {
	case errors.Is(err, &metadata.ErrBadVersionNumber{}):
		return "rollback or mix-and-match (not the metadata version trusted or signed for): "
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return "freeze (expired metadata, or a wrong device clock): "
	case errors.Is(err, &metadata.ErrUnsignedMetadata{}):
		return "arbitrary software (untrusted signature): "
	case errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return "endless data (metadata larger than allowed): "
	case errors.Is(err, &metadata.ErrLengthOrHashMismatch{}):
		return "mix-and-match (metadata does not match its signed description): "
	}
	return ""
}

// Seen returns the trusted versions.
func (c *Client) Seen() journal.Seen {
	t := c.up.GetTrustedMetadataSet()
	var s journal.Seen
	if t.Root != nil {
		s.Root = t.Root.Signed.Version
	}
	if t.Timestamp != nil {
		s.Timestamp = t.Timestamp.Signed.Version
	}
	if t.Snapshot != nil {
		s.Snapshot = t.Snapshot.Signed.Version
	}
	if top := t.Targets[metadata.TARGETS]; top != nil {
		s.Targets = top.Signed.Version
	}
	return s
}

// TimestampExpires returns the trusted timestamp's expiry (zero before Refresh).
func (c *Client) TimestampExpires() time.Time {
	if ts := c.up.GetTrustedMetadataSet().Timestamp; ts != nil {
		return ts.Signed.Expires
	}
	return time.Time{}
}

// Versions returns the trusted targets and snapshot versions.
func (c *Client) Versions() (targets, snapshot int64) {
	s := c.Seen()
	return s.Targets, s.Snapshot
}

// TargetInfo finds targetPath by the specification's pre-order depth-first
// walk of the delegation graph (pkg/tufwalk, shared with fosterd and the
// offline verifier), loading each delegated role verified against the
// delegator on the current path.
func (c *Client) TargetInfo(targetPath string) (*metadata.TargetFiles, error) {
	ts := c.up.GetTrustedMetadataSet()
	if ts.Targets[metadata.TARGETS] == nil {
		return nil, errors.New("TUF metadata not refreshed")
	}
	f, err := tufwalk.Find(targetPath, c.ucfg.MaxDelegations, func(role, parent string) (*tufwalk.Targets, error) {
		return c.loadRole(&ts, role, parent)
	})
	if errors.Is(err, tufwalk.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrTargetNotFound, targetPath)
	}
	if err != nil {
		return nil, err
	}
	return f.Target, nil
}

// loadRole returns role verified against parent: from this session, the
// local cache, or the repository (in that order, so nothing is fetched twice).
func (c *Client) loadRole(ts *trustedmetadata.TrustedMetadata, role, parent string) (*metadata.Metadata[metadata.TargetsType], error) {
	if role == metadata.TARGETS {
		return ts.Targets[metadata.TARGETS], nil
	}
	key := [2]string{parent, role}
	if md, ok := c.verified[key]; ok {
		return md, nil
	}
	data, fromSession := c.raw[role]
	if !fromSession {
		if local, err := os.ReadFile(c.rolePath(role)); err == nil && int64(len(local)) <= c.ucfg.TargetsMaxLength {
			if md, err := ts.UpdateDelegatedTargets(local, role, parent); err == nil {
				c.raw[role], c.verified[key], c.saved[role] = local, md, true
				return md, nil
			} else if !errors.Is(err, &metadata.ErrRepository{}) {
				return nil, err
			}
		}
		meta, ok := ts.Snapshot.Signed.Meta[role+".json"]
		if !ok {
			return nil, fmt.Errorf("role %s not found in snapshot", role)
		}
		length := meta.Length
		if length == 0 {
			length = c.ucfg.TargetsMaxLength
		}
		name := url.PathEscape(role) + ".json"
		if ts.Root.Signed.ConsistentSnapshot {
			name = strconv.FormatInt(meta.Version, 10) + "." + name
		}
		remote, err := c.fetcher.DownloadFile(strings.TrimSuffix(c.cfg.MetadataURL, "/")+"/"+name, length, 0)
		if err != nil {
			return nil, fmt.Errorf("downloading role %s: %s%w", role, Attack(err), err)
		}
		data = remote
		// Kept even if this delegator refuses it: another may accept the
		// same bytes (the snapshot pins one version), without a second fetch.
		c.raw[role] = data
	}
	md, err := ts.UpdateDelegatedTargets(data, role, parent)
	if err != nil {
		return nil, fmt.Errorf("role %s delegated by %s: %s%w", role, parent, Attack(err), err)
	}
	if !c.saved[role] {
		if err := atomicfile.WriteFile(c.rolePath(role), data, 0o644); err != nil {
			return nil, fmt.Errorf("caching role %s: %w", role, err)
		}
		c.saved[role] = true
	}
	c.verified[key] = md
	return md, nil
}

func (c *Client) rolePath(role string) string {
	return filepath.Join(c.cfg.MetadataDir, url.PathEscape(role)+".json")
}

// Custom is Foster's target custom metadata (docs/CONTRACTS.md).
type Custom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
	// MinFromVersion is the oldest installed version the image may be
	// applied over (delta images, migrations).
	MinFromVersion string `json:"min_from_version,omitempty"`
}

// Candidate is a target chosen for installation.
type Candidate struct {
	Name   string
	Info   *metadata.TargetFiles
	Custom Custom
	SHA256 []byte
	SHA512 []byte // nil unless signed
}

// Criteria select a target.
type Criteria struct {
	Model string
	// HardwareID is the device's hardware id ("" when its model declares
	// none): an image listing hardware ids must list it.
	HardwareID string
	// MinReleaseCounter: only targets with a strictly greater counter qualify.
	MinReleaseCounter int64
	// Refused lists sha256 (hex) of images not to try again (rolled back before).
	Refused []string
	// InstalledVersion is the installed semantic version ("" when unknown),
	// judged against a target's min_from_version.
	InstalledVersion string
	// Device is the URN of the device's certificate identity and Serial its
	// serial. A release whose signed custom metadata carries rollout terms
	// qualifies only if the terms offer it to Device in its signed groups
	// (pkg/rollout); with Device unknown, no staged release qualifies.
	Device, Serial string
}

// NotOffered is a release newer than the one chosen (or than the installed
// one) that the device passed over because its signed rollout terms do not
// offer it to this device.
type NotOffered struct {
	Name, Version string
	Reason        string
}

func (n NotOffered) String() string {
	return n.Version + " not offered: " + n.Reason
}

func parseCustom(tf *metadata.TargetFiles) (Custom, error) {
	var c Custom
	if tf.Custom == nil {
		return c, errors.New("no custom metadata")
	}
	if err := json.Unmarshal(*tf.Custom, &c); err != nil {
		return c, fmt.Errorf("custom metadata: %w", err)
	}
	return c, nil
}

// Qualifies applies the Foster rules; reason is empty when the target qualifies.
func (cr Criteria) Qualifies(c Custom) (reason string) {
	switch {
	case c.Model != cr.Model:
		return "other model"
	case c.ReleaseCounter <= cr.MinReleaseCounter:
		return "rollback: release counter not above installed"
	case len(c.HardwareIDs) > 0 && (cr.HardwareID == "" || !slices.Contains(c.HardwareIDs, cr.HardwareID)):
		return "wrong hardware: the image's signed hardware ids do not list this device's"
	case c.MinFromVersion != "" && (cr.InstalledVersion == "" ||
		semver.Compare("v"+cr.InstalledVersion, "v"+c.MinFromVersion) < 0 || !semver.IsValid("v"+c.MinFromVersion)):
		return "installed version below the image's min_from_version"
	}
	return ""
}

func sha256Of(tf *metadata.TargetFiles) string {
	return hex.EncodeToString(tf.Hashes["sha256"])
}

// Latest returns the qualifying target with the highest release counter, or
// nil when the device is up to date. Call Refresh first.
//
// Every loaded role is searched to discover candidates, but a candidate is
// judged on the entry the delegation walk returns for its path: a role
// listing a path it is not delegated for cannot smuggle a target in. A
// staged release its signed terms do not offer to the device is passed over
// (NotOffered says why) for the next qualifying one.
func (c *Client) Latest(cr Criteria) (*Candidate, error) {
	c.notOffered = nil
	if err := c.loadModelRoles(cr.Model); err != nil {
		return nil, err
	}
	groups := &memberships{c: c, cr: cr}
	counters := map[string]int64{}
	for _, role := range c.up.GetTrustedMetadataSet().Targets {
		for name, tf := range role.Signed.Targets {
			if cu, err := parseCustom(tf); err == nil && cr.Qualifies(cu) == "" && !slices.Contains(cr.Refused, sha256Of(tf)) {
				counters[name] = max(counters[name], cu.ReleaseCounter)
			}
		}
	}
	names := make([]string, 0, len(counters))
	for n := range counters {
		names = append(names, n)
	}
	// Highest counter first; ties broken by name so the choice is deterministic.
	slices.SortFunc(names, func(a, b string) int {
		if counters[a] != counters[b] {
			return cmp.Compare(counters[b], counters[a])
		}
		return strings.Compare(b, a)
	})
	for _, name := range names {
		tf, err := c.TargetInfo(name)
		if errors.Is(err, ErrTargetNotFound) {
			continue // listed by a role not delegated for this path
		}
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
		cu, err := parseCustom(tf)
		if err != nil || cr.Qualifies(cu) != "" || slices.Contains(cr.Refused, sha256Of(tf)) {
			continue
		}
		if reason := groups.offered(tf); reason != "" {
			c.notOffered = append(c.notOffered, NotOffered{Name: name, Version: cu.Version, Reason: reason})
			continue
		}
		if err := CheckTargetName(name); err != nil {
			return nil, err
		}
		return candidate(name, tf, cu)
	}
	return nil, nil
}

// ErrNotForDevice: a named target is signed for another model or hardware,
// or needs a newer installed version than the device runs.
var ErrNotForDevice = errors.New("not for this device")

// Named returns target name (from an offline bundle's manifest) judged by
// the same rules Latest applies, found by the same delegation walk; unlike
// Latest it says why a target does not qualify. Call Refresh first.
func (c *Client) Named(name string, cr Criteria) (*Candidate, error) {
	if err := CheckTargetName(name); err != nil {
		return nil, err
	}
	tf, err := c.TargetInfo(name)
	if err != nil {
		return nil, err
	}
	cu, err := parseCustom(tf)
	if err != nil {
		return nil, fmt.Errorf("%w: target %q: %v", ErrNotForDevice, name, err)
	}
	switch {
	case cu.Model != cr.Model:
		return nil, fmt.Errorf("%w: %s is signed for model %s, this device is %s", ErrNotForDevice, name, cu.Model, cr.Model)
	case cu.ReleaseCounter <= cr.MinReleaseCounter:
		return nil, fmt.Errorf("%w: %s %s (release counter %d) is not above the installed release (counter %d): the device never goes back",
			ErrRollback, cu.Model, cu.Version, cu.ReleaseCounter, cr.MinReleaseCounter)
	case len(cu.HardwareIDs) > 0 && (cr.HardwareID == "" || !slices.Contains(cu.HardwareIDs, cr.HardwareID)):
		return nil, fmt.Errorf("%w: %s is built for hardware ids %s, this device's is %q", ErrNotForDevice, name, strings.Join(cu.HardwareIDs, ", "), cr.HardwareID)
	case cr.Qualifies(cu) != "":
		return nil, fmt.Errorf("%w: %s needs version %s or later installed, this device runs %q", ErrNotForDevice, name, cu.MinFromVersion, cr.InstalledVersion)
	case slices.Contains(cr.Refused, sha256Of(tf)):
		return nil, fmt.Errorf("%w: %s was rolled back on this device before; it is not tried again", ErrNotForDevice, name)
	}
	if reason := (&memberships{c: c, cr: cr}).offered(tf); reason != "" {
		return nil, fmt.Errorf("%w: %s is not offered to this device: %s", ErrNotForDevice, name, reason)
	}
	return candidate(name, tf, cu)
}

func candidate(name string, tf *metadata.TargetFiles, cu Custom) (*Candidate, error) {
	cand := &Candidate{Name: name, Info: tf, Custom: cu}
	for alg, h := range tf.Hashes {
		switch alg {
		case "sha256":
			cand.SHA256 = h
		case "sha512":
			cand.SHA512 = h
		}
	}
	if len(cand.SHA256) != 32 {
		return nil, fmt.Errorf("target %q: signed metadata carries no sha256 hash", name)
	}
	return cand, nil
}

// NotOffered lists the newer releases the last Latest passed over because
// their signed rollout terms do not offer them to this device, newest first.
func (c *Client) NotOffered() []NotOffered { return c.notOffered }

// memberships judges rollout terms, looking the device's signed groups up
// at most once (and only if a release carries terms).
type memberships struct {
	c      *Client
	cr     Criteria
	looked bool
	groups []string
	err    error
}

// offered returns "" when tf's signed terms (if any) offer it to the
// device, else why not. Malformed terms, or a membership record that does
// not verify or parse, offer nothing: never fail open.
func (m *memberships) offered(tf *metadata.TargetFiles) string {
	terms, ok, err := rollout.FromCustom(*tf.Custom)
	switch {
	case err != nil:
		return "malformed rollout terms: " + err.Error()
	case !ok:
		return ""
	case m.cr.Device == "" || m.cr.Serial == "":
		return fmt.Sprintf("rollout %s is staged and the device identity is unknown", terms.ID)
	}
	if !m.looked {
		m.looked = true
		m.groups, m.err = m.c.membership(m.cr.Model, m.cr.Serial)
	}
	if m.err != nil {
		return fmt.Sprintf("rollout %s is staged and the device's signed groups are unusable: %v", terms.ID, m.err)
	}
	if d := terms.Decide(m.cr.Device, m.groups); !d.Eligible {
		return d.Reason
	}
	return ""
}

// membership reads the device's signed groups from the target
// rollout.MembershipPath(model, serial), found by the delegation walk like
// any target: none (nil) when no role on the path lists it.
func (c *Client) membership(model, serial string) ([]string, error) {
	tf, err := c.TargetInfo(rollout.MembershipPath(model, serial))
	if errors.Is(err, ErrTargetNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if tf.Custom == nil {
		return nil, errors.New("membership record without custom metadata")
	}
	m, err := rollout.ParseMembership(*tf.Custom)
	if err != nil {
		return nil, err
	}
	return m.Groups, nil
}

// loadModelRoles loads the roles the top-level targets delegates model's
// paths (<model>/<version>/<file>) to, verified against it. Refresh loads
// only top-level targets. Deeper roles (fosterd's hashed bins of older
// releases) are not fetched to discover candidates: the model's own role
// lists the newest releases and, for every hardware id, the newest full
// image (no min_from_version), so a device too far behind for the newest
// deltas takes that image first and the deltas on its next check.
func (c *Client) loadModelRoles(model string) error {
	ts := c.up.GetTrustedMetadataSet()
	top := ts.Targets[metadata.TARGETS]
	if top == nil || top.Signed.Delegations == nil {
		return nil
	}
	for _, r := range top.Signed.Delegations.GetRolesForTarget(model + "/0/probe") {
		if _, err := c.loadRole(&ts, r.Name, metadata.TARGETS); err != nil {
			return fmt.Errorf("loading delegated targets for model %s: %w", model, err)
		}
		if r.Terminating {
			break
		}
	}
	return nil
}

// CheckTargetName refuses paths that could escape the targets URL space or a directory.
func CheckTargetName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name {
		return fmt.Errorf("target name %q is not a clean relative path", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("target name %q is not a clean relative path", name)
		}
	}
	return nil
}

// TargetURL is where the repository serves the target: with consistent
// snapshots <base>/<dir>/<hash>.<base name> (docs/CONTRACTS.md), SHA-256
// when signed.
func (c *Client) TargetURL(name string, tf *metadata.TargetFiles) string {
	dir, base := path.Split(name)
	if c.up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot {
		h := tf.Hashes["sha256"]
		if h == nil {
			algs := make([]string, 0, len(tf.Hashes))
			for a := range tf.Hashes {
				algs = append(algs, a)
			}
			slices.Sort(algs)
			if len(algs) > 0 {
				h = tf.Hashes[algs[0]]
			}
		}
		base = hex.EncodeToString(h) + "." + base
	}
	var b strings.Builder
	b.WriteString(strings.TrimSuffix(c.cfg.TargetsURL, "/") + "/")
	for _, seg := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if seg != "" {
			b.WriteString(url.PathEscape(seg) + "/")
		}
	}
	b.WriteString(url.PathEscape(base))
	return b.String()
}

// boundDoer attaches the agent's context to go-tuf's context-less requests.
type boundDoer struct {
	ctx context.Context
	d   Doer
}

func (b boundDoer) Do(req *http.Request) (*http.Response, error) {
	return b.d.Do(req.WithContext(b.ctx))
}
