package logreport

import (
	"cmp"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/foster-ota/foster/pkg/tufwalk"
)

// MaxRoles bounds the delegated targets roles LoadTUF reads (every model's
// role and all its hashed bins).
const MaxRoles = 1 << 16

// Release is a release as the repository's signed metadata lists it.
type Release struct {
	Model   string
	Version string
	Counter int64
	// Target is the TUF target path, <model>/<version>/<file>.
	Target string
	SHA256 string // hex
	Length int64
	// PublishedAt is the signed publication time (custom "published_at");
	// zero for releases signed before fosterd recorded it.
	PublishedAt time.Time
	// Role is the targets role that signs it.
	Role string
}

// TUFView is the firmware repository as its signed metadata, verified by
// go-tuf's client workflow from the auditor's trusted root, describes it:
// every release of every model.
type TUFView struct {
	RootVersion, TimestampVersion, SnapshotVersion, TargetsVersion int64
	// RefTime is the time metadata expiry was judged at.
	RefTime time.Time
	// Releases lists each model's releases, lowest release counter first.
	Releases map[string][]Release
	// Files are the metadata files read, by name as the repository serves
	// them (N.root.json, timestamp.json, N.models%2Fedge-gw.json...): what
	// an export copies.
	Files map[string][]byte

	byTarget map[string]*Release
}

// Lookup returns the signed release at target path.
func (v *TUFView) Lookup(target string) (*Release, bool) {
	r, ok := v.byTarget[target]
	return r, ok
}

// releaseCustom is the part of Foster's target custom metadata a report
// reads (docs/CONTRACTS.md).
type releaseCustom struct {
	Model          string `json:"model"`
	Version        string `json:"version"`
	ReleaseCounter int64  `json:"release_counter"`
	PublishedAt    string `json:"published_at"`
}

// LoadTUF runs go-tuf's client workflow (root rotations, timestamp,
// snapshot, targets: signatures, versions, expiry at refTime) from
// trustedRoot against the repository that f serves under base, then loads
// every delegated targets role (each model's role and its hashed bins),
// each verified against its delegator and pinned by the snapshot, and
// keeps every release that the TUF search (pkg/tufwalk, the devices' own
// rules) finds in the role that lists it. Membership records
// (<model>/_groups/<serial>) and targets without a release counter are not
// releases.
func LoadTUF(f fetcher.Fetcher, base string, trustedRoot []byte, refTime time.Time) (*TUFView, error) {
	rec := &recorder{f: f, base: strings.TrimSuffix(base, "/") + "/", files: map[string][]byte{}}
	cfg, err := config.New(rec.base, trustedRoot)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTUF, err)
	}
	// go-tuf reads "cached" metadata from LocalMetadataDir even with the
	// cache disabled: give it an empty directory, never the working one.
	tmp, err := os.MkdirTemp("", "foster-audit-tuf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = tmp, tmp
	cfg.DisableLocalCache = true
	cfg.Fetcher = rec
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: trusted root: %v", ErrTUF, err)
	}
	if refTime.IsZero() {
		refTime = time.Now()
	}
	up.UnsafeSetRefTime(refTime.UTC())
	if err := up.Refresh(); err != nil {
		return nil, fmt.Errorf("%w: %s%v", ErrTUF, attack(err), err)
	}
	ts := up.GetTrustedMetadataSet()
	v := &TUFView{
		RootVersion: ts.Root.Signed.Version, TimestampVersion: ts.Timestamp.Signed.Version,
		SnapshotVersion: ts.Snapshot.Signed.Version, TargetsVersion: ts.Targets[metadata.TARGETS].Signed.Version,
		RefTime: refTime.UTC(), Releases: map[string][]Release{}, Files: rec.files, byTarget: map[string]*Release{},
	}
	l := &roleLoader{ts: &ts, f: rec, cfgMax: cfg.TargetsMaxLength, raw: map[string][]byte{},
		verified: map[[2]string]*metadata.Metadata[metadata.TargetsType]{}}
	loaded, err := l.loadAll()
	if err != nil {
		return nil, err
	}
	// Candidates from every loaded role; each judged by the search.
	seen := map[string]bool{}
	for _, md := range loaded {
		for path, tf := range md.Signed.Targets {
			if seen[path] || strings.Contains(path, "/_groups/") || tf.Custom == nil {
				continue
			}
			seen[path] = true
			var c releaseCustom
			if json.Unmarshal(*tf.Custom, &c) != nil || c.ReleaseCounter <= 0 {
				continue
			}
			found, err := tufwalk.Find(path, tufwalk.DefaultMaxDelegations, l.load)
			if errors.Is(err, tufwalk.ErrNotFound) {
				continue // listed by a role not delegated that path
			}
			if err != nil {
				return nil, err
			}
			rel, ok := releaseOf(path, found)
			if ok {
				v.Releases[rel.Model] = append(v.Releases[rel.Model], rel)
			}
		}
	}
	for m, rs := range v.Releases {
		slices.SortFunc(rs, func(a, b Release) int {
			return cmp.Or(cmp.Compare(a.Counter, b.Counter), strings.Compare(a.Target, b.Target))
		})
		for i := range rs {
			v.byTarget[rs[i].Target] = &rs[i]
		}
		v.Releases[m] = rs
	}
	return v, nil
}

// releaseOf reads the release the search found at path: its custom
// metadata must name the model of its path.
func releaseOf(path string, f tufwalk.Found) (Release, bool) {
	tf := f.Target
	if tf == nil || tf.Custom == nil {
		return Release{}, false
	}
	var c releaseCustom
	if json.Unmarshal(*tf.Custom, &c) != nil || c.ReleaseCounter <= 0 {
		return Release{}, false
	}
	model, _, _ := strings.Cut(path, "/")
	if c.Model != model {
		return Release{}, false
	}
	r := Release{Model: model, Version: c.Version, Counter: c.ReleaseCounter, Target: path,
		SHA256: hex.EncodeToString(tf.Hashes["sha256"]), Length: tf.Length, Role: f.Chain[len(f.Chain)-1].Role}
	if t, err := time.Parse(time.RFC3339, c.PublishedAt); err == nil {
		r.PublishedAt = t.UTC()
	}
	return r, true
}

// roleLoader loads delegated targets roles, each verified by go-tuf
// against the delegator it is reached from (signature threshold of the
// delegator's keys, version pinned by the snapshot, expiry).
type roleLoader struct {
	ts       *trustedmetadata.TrustedMetadata
	f        *recorder
	cfgMax   int64
	raw      map[string][]byte
	verified map[[2]string]*metadata.Metadata[metadata.TargetsType]
}

// load is a tufwalk.Loader.
func (l *roleLoader) load(role, parent string) (*tufwalk.Targets, error) {
	if role == metadata.TARGETS {
		return l.ts.Targets[metadata.TARGETS], nil
	}
	key := [2]string{parent, role}
	if md, ok := l.verified[key]; ok {
		return md, nil
	}
	data, ok := l.raw[role]
	if !ok {
		meta, ok := l.ts.Snapshot.Signed.Meta[role+".json"]
		if !ok {
			return nil, fmt.Errorf("%w: role %s, delegated by %s, is not in the snapshot", ErrTUF, role, parent)
		}
		length := meta.Length
		if length == 0 {
			length = l.cfgMax
		}
		name := url.PathEscape(role) + ".json"
		if l.ts.Root.Signed.ConsistentSnapshot {
			name = strconv.FormatInt(meta.Version, 10) + "." + name
		}
		var err error
		if data, err = l.f.DownloadFile(l.f.base+name, length, 0); err != nil {
			return nil, fmt.Errorf("%w: downloading role %s: %s%v", ErrTUF, role, attack(err), err)
		}
		l.raw[role] = data
	}
	md, err := l.ts.UpdateDelegatedTargets(data, role, parent)
	if err != nil {
		return nil, fmt.Errorf("%w: role %s delegated by %s: %s%v", ErrTUF, role, parent, attack(err), err)
	}
	l.verified[key] = md
	return md, nil
}

// loadAll loads every role delegated from the top-level targets role,
// breadth first, each from the first delegator that names it.
func (l *roleLoader) loadAll() ([]*tufwalk.Targets, error) {
	top := l.ts.Targets[metadata.TARGETS]
	out := []*tufwalk.Targets{top}
	type todo struct{ role, parent string }
	var queue []todo
	seen := map[string]bool{metadata.TARGETS: true}
	children := func(md *tufwalk.Targets, parent string) {
		d := md.Signed.Delegations
		if d == nil {
			return
		}
		var names []string
		for _, r := range d.Roles {
			names = append(names, r.Name)
		}
		if d.SuccinctRoles != nil {
			names = append(names, d.SuccinctRoles.GetRoles()...)
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				queue = append(queue, todo{n, parent})
			}
		}
	}
	children(top, metadata.TARGETS)
	for len(queue) > 0 {
		if len(seen) > MaxRoles {
			return nil, fmt.Errorf("%w: more than %d delegated roles", ErrTUF, MaxRoles)
		}
		t := queue[0]
		queue = queue[1:]
		md, err := l.load(t.role, t.parent)
		if err != nil {
			return nil, err
		}
		out = append(out, md)
		children(md, t.role)
	}
	return out, nil
}

// recorder fetches metadata files and keeps what it read, by file name.
type recorder struct {
	f     fetcher.Fetcher
	base  string
	files map[string][]byte
}

func (r *recorder) DownloadFile(u string, maxLength int64, timeout time.Duration) ([]byte, error) {
	b, err := r.f.DownloadFile(u, maxLength, timeout)
	if err == nil {
		if name, ok := strings.CutPrefix(u, r.base); ok {
			r.files[name] = b
		}
	}
	return b, err
}

// attack names what a metadata verification failure may be defending
// against (as the agent's TUF client does).
func attack(err error) string {
	switch {
	case errors.Is(err, &metadata.ErrBadVersionNumber{}):
		return "rollback or mix-and-match: "
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return "freeze (expired metadata; give --tuf-at to judge expiry at the time of an older export): "
	case errors.Is(err, &metadata.ErrUnsignedMetadata{}):
		return "arbitrary software (untrusted signature): "
	case errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return "endless data: "
	case errors.Is(err, &metadata.ErrLengthOrHashMismatch{}):
		return "mix-and-match: "
	}
	return ""
}
