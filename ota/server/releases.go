package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
	"golang.org/x/mod/semver"
)

// Error codes of release publication (JSON "code").
const (
	codeStaleRelease   = "stale_release"        // version or counter not above the latest
	codeLengthMismatch = "length_mismatch"      // body length differs from the declared one
	codeHashMismatch   = "hash_mismatch"        // body sha256 differs from the declared one
	codeKeyUnavailable = "key_unavailable"      // a signing key this needs is offline
	codeRevoked        = "revoked"              // the release was already revoked
	codeCounterRange   = "counter_out_of_range" // counter above 2^53-1 or too far above the latest
)

var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$`)

func validVersion(v string) bool { return len(v) <= 64 && semverRE.MatchString(v) }

// compareVersions orders semantic versions (precedence: build metadata is
// ignored, pre-releases sort before the release).
func compareVersions(a, b string) int { return semver.Compare("v"+a, "v"+b) }

// releaseStore is what publishing releases needs of the store (*store.DB).
type releaseStore interface {
	GetModel(ctx context.Context, name string) (store.Model, error)
	LatestRelease(ctx context.Context, model string) (store.Release, error)
	PublishRelease(ctx context.Context, r store.Release, publish store.PublishFunc) (store.Release, error)
	GetRelease(ctx context.Context, model, version string) (store.Release, error)
	PageReleases(ctx context.Context, model string, afterID int64, limit int) ([]store.Release, error)
}

// targetPublisher adds and removes firmware targets (tufrepo.Repo).
type targetPublisher interface {
	Upload(ctx context.Context, u tufrepo.Upload) (*tufrepo.Pending, error)
	// CommitLeased commits holding the caller's publish lock (the store
	// transaction that records the release; replicas sharing PostgreSQL).
	CommitLeased(ctx context.Context, p *tufrepo.Pending, lease tufrepo.Lease) (tufrepo.Target, error)
	Discard(ctx context.Context, p *tufrepo.Pending)
	RemoveTarget(ctx context.Context, path string) (tufrepo.Target, error)
	Lookup(path string) (t tufrepo.Target, role string, ok bool)
}

// releaseAPI publishes, lists and revokes firmware releases. Safe for
// concurrent use.
type releaseAPI struct {
	store releaseStore
	repo  targetPublisher
	// publishing serialises publication (with ceremonyAPI's) so counters
	// stay ordered.
	publishing      *sync.Mutex
	audit           *auditTrail
	log             *slog.Logger
	maxFirmwareSize int64
}

func (g *releaseAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/releases", e.handle(adminOnly, e.streaming(g.add)))
	mux.Handle("GET /v1/releases", e.handle(readers, g.list))
	mux.Handle("GET /v1/releases/{model}/{version}", e.handle(readers, g.show))
	mux.Handle("POST /v1/releases/{model}/{version}/revoke", e.handle(adminOnly, g.revoke))
}

// targetCustom is the signed custom metadata of a firmware target
// (docs/CONTRACTS.md). Devices act on it: model and hardware ids select the
// image, the release counter forbids downgrades, min_from_version names the
// oldest installed version the image may be applied over (delta images,
// migrations).
type targetCustom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
	MinFromVersion string   `json:"min_from_version,omitempty"`
	// PublishedAt is when fosterd recorded the release (RFC 3339, UTC,
	// seconds): signed, so an auditor measures time to patch from the
	// repository's own word (`foster audit report --from-log`).
	PublishedAt string `json:"published_at,omitempty"`
}

// add publishes a firmware image into its model's TUF role.
//
//	POST /v1/releases?model=M&version=V[&name=FILE][&counter=N][&sha256=HEX][&length=BYTES]
//	                 [&hardware_id=ID ...][&min_from_version=V][&hold=true]
//
// With hold=true the release is published and signed with rollout terms
// that offer it to no device (share 0, state "held", a random seed) until a
// rollout starts (ota/rollout re-signs the terms); without it the release is
// offered to every device of the model, as before rollouts existed.
//
// It refuses, publishing nothing and keeping no blob: an unknown model, a
// version not above the model's latest (semver) or a counter not above its
// latest counter (revoked releases included: counters are never reused), a
// counter above 2^53-1 or more than 1,000,000 above the latest (also when
// chosen automatically: a model whose latest is 2^53-1 has no next one),
// an empty or oversized body, a body whose length or sha256 differs from
// the declared one, hardware ids the model does not have.
func (g *releaseAPI) add(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	model, version, name := q.Get("model"), q.Get("version"), q.Get("name")
	if err := identity.ValidName(model); err != nil {
		return badRequest("model: %v", err)
	}
	if !validVersion(version) {
		return badRequest("version %q is not a semantic version (e.g. 1.0.1)", version)
	}
	if name == "" {
		name = "firmware.bin"
	}
	if err := identity.ValidName(name); err != nil {
		return badRequest("file name: %v", err)
	}
	var held *rollout.Terms
	if v := q.Get("hold"); v != "" {
		h, err := strconv.ParseBool(v)
		if err != nil {
			return badRequest("hold must be true or false")
		}
		if h {
			seed := make([]byte, rollout.SeedBytes)
			if _, err := rand.Read(seed); err != nil {
				return err
			}
			held = &rollout.Terms{Seed: hex.EncodeToString(seed), Share: 0, State: rollout.StateHeld}
		}
	}
	minFrom := q.Get("min_from_version")
	if minFrom != "" && (!validVersion(minFrom) || compareVersions(minFrom, version) >= 0) {
		return badRequest("min_from_version %q must be a semantic version below %s", minFrom, version)
	}
	declared := int64(-1)
	if v := q.Get("length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("length must be a byte count")
		}
		declared = n
	}
	switch {
	case r.ContentLength == 0 || declared == 0:
		return badRequest("firmware file is empty")
	case r.ContentLength > g.maxFirmwareSize || declared > g.maxFirmwareSize:
		return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "firmware larger than %d bytes", g.maxFirmwareSize)
	case declared >= 0 && r.ContentLength >= 0 && declared != r.ContentLength:
		return apierr.New(http.StatusBadRequest, codeLengthMismatch, "declared length %d, but the upload is %d bytes", declared, r.ContentLength)
	case declared < 0:
		declared = r.ContentLength // -1 when chunked
	}
	m, err := g.store.GetModel(r.Context(), model)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q (create it with: foster model add %s)", model, model)
	} else if err != nil {
		return err
	}
	hw := q["hardware_id"]
	if len(hw) == 0 {
		hw = m.HardwareIDs
	}
	for _, h := range hw {
		if !slices.Contains(m.HardwareIDs, h) {
			return badRequest("hardware id %q is not one of model %s's (%v)", h, model, m.HardwareIDs)
		}
	}
	var counter int64 // 0: the latest + 1, chosen under the publish lock
	if c := q.Get("counter"); c != "" {
		if counter, err = strconv.ParseInt(c, 10, 64); err != nil || counter <= 0 || counter > store.MaxReleaseCounter {
			return apierr.New(http.StatusBadRequest, codeCounterRange, "counter must be an integer in 1..%d", int64(store.MaxReleaseCounter))
		}
	}
	// Cheap refusal before streaming the body; checked again under the lock.
	latest, err := g.store.LatestRelease(r.Context(), model)
	switch {
	case errors.Is(err, store.ErrNotFound):
		err = checkAboveLatest(model, version, counter, nil)
		if err == nil && counter != 0 {
			err = checkCounterRange(model, counter, nil)
		}
	case err == nil:
		err = checkAboveLatest(model, version, counter, &latest)
		if next := counter; err == nil {
			// A model at the highest counter has no automatic next one
			// either (CheckReleaseCounter looks at latest first).
			if next == 0 && latest.Counter < store.MaxReleaseCounter {
				next = latest.Counter + 1
			}
			err = checkCounterRange(model, next, &latest)
		}
	}
	if err != nil {
		return err
	}

	tpath := path.Join(model, version, name)
	pending, err := g.repo.Upload(r.Context(), tufrepo.Upload{
		Path: tpath, Body: http.MaxBytesReader(w, r.Body, g.maxFirmwareSize), Length: declared, SHA256: q.Get("sha256"),
	})
	if err != nil {
		return publishError(tpath, err)
	}
	defer g.repo.Discard(context.WithoutCancel(r.Context()), pending)

	g.publishing.Lock()
	defer g.publishing.Unlock()
	t := pending.Target()
	p, _ := principalFrom(r.Context())
	published := false
	rel, err := g.store.PublishRelease(r.Context(), store.Release{
		Model: model, Version: version, Counter: counter, TargetPath: t.Path, SHA256: t.SHA256, Length: t.Length, CreatedBy: p.URI(),
	}, func(lock *store.TUFLock, rel store.Release, latest *store.Release) error {
		// Inside the store's transaction, which holds the publish lock of
		// replicas sharing the database: the version check and the counter
		// (chosen by the store if not given) are as of the lock, and the
		// counter is signed into the target before it is published. If the
		// store refuses, nothing is published.
		if err := checkAboveLatest(model, version, counter, latest); err != nil {
			return err
		}
		if err := checkCounterRange(model, rel.Counter, latest); err != nil {
			return err
		}
		custom, _ := json.Marshal(targetCustom{Model: model, Version: version, ReleaseCounter: rel.Counter, HardwareIDs: nonNil(hw), MinFromVersion: minFrom,
			PublishedAt: rel.CreatedAt.UTC().Format(time.RFC3339)})
		if held != nil {
			var err error
			if custom, err = rollout.WithTerms(custom, held); err != nil {
				return err
			}
		}
		if err := pending.SetCustom(custom); err != nil {
			return err
		}
		_, err := g.repo.CommitLeased(r.Context(), pending, lock)
		published = err == nil
		return err
	})
	if err != nil {
		if published {
			// The store failed after publishing: take it back so the
			// repository and the store agree.
			if _, rerr := g.repo.RemoveTarget(context.WithoutCancel(r.Context()), t.Path); rerr != nil {
				g.log.Error("release published but not recorded, and unpublishing failed", "target", t.Path, "err", rerr)
			}
		}
		var apiErr *apierr.Error
		switch {
		case errors.As(err, &apiErr) && !published:
			return err
		case errors.Is(err, store.ErrCounterRange):
			return apierr.New(http.StatusBadRequest, codeCounterRange, "%s: %v", model, err)
		case errors.Is(err, store.ErrStale), errors.Is(err, store.ErrConflict):
			return apierr.New(http.StatusConflict, codeStaleRelease, "%v", err)
		case published:
			return fmt.Errorf("recording release %s: %w", tpath, err)
		}
		return publishError(tpath, err)
	}
	counter = rel.Counter
	g.audit.record(r, "release.add", fmt.Sprintf("%s sha256=%s length=%d counter=%d held=%t", t.Path, t.SHA256, t.Length, counter, held != nil))
	g.log.Info("release published", "target", t.Path, "sha256", t.SHA256, "length", t.Length, "counter", counter)
	return writeJSON(w, http.StatusCreated, g.view(rel))
}

// checkAboveLatest refuses a release of version (with counter want, 0 if the
// store chooses it) that is not above latest, the model's latest release
// (nil if none).
func checkAboveLatest(model, version string, want int64, latest *store.Release) error {
	switch {
	case latest == nil:
		return nil
	case version == latest.Version:
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "release %s %s already exists", model, version)
	case compareVersions(version, latest.Version) <= 0:
		return apierr.New(http.StatusConflict, codeStaleRelease, "version %s is not above the latest release of %s (%s)", version, model, latest.Version)
	case want != 0 && want <= latest.Counter:
		return apierr.New(http.StatusConflict, codeStaleRelease, "release counter %d is not above the latest (%d) for %s", want, latest.Counter, model)
	}
	return nil
}

// checkCounterRange refuses the counter a release is about to be signed
// with (given or chosen) when it is out of bounds (store.CheckReleaseCounter):
// above 2^53-1, or more than store.MaxReleaseCounterStep above the model's
// latest (nil if none). A counter can never be taken back, so one typo must
// not use up a model's counters.
func checkCounterRange(model string, counter int64, latest *store.Release) error {
	var l int64
	if latest != nil {
		l = latest.Counter
	}
	if err := store.CheckReleaseCounter(counter, l); errors.Is(err, store.ErrCounterRange) {
		return apierr.New(http.StatusBadRequest, codeCounterRange, "%s: %v", model, err)
	}
	return nil
}

// publishError maps repository errors to API errors.
func publishError(tpath string, err error) error {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe), errors.Is(err, tufrepo.ErrTooLarge):
		return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "publishing %s: %v", tpath, err)
	case errors.Is(err, tufrepo.ErrLengthMismatch):
		return apierr.New(http.StatusBadRequest, codeLengthMismatch, "publishing %s: %v", tpath, err)
	case errors.Is(err, tufrepo.ErrHashMismatch):
		return apierr.New(http.StatusBadRequest, codeHashMismatch, "publishing %s: %v", tpath, err)
	case errors.Is(err, tufrepo.ErrTargetExists):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	case errors.Is(err, tufrepo.ErrInvalidTarget):
		return badRequest("publishing %s: %v", tpath, err)
	case errors.Is(err, tufrepo.ErrKeyUnavailable):
		return apierr.New(http.StatusConflict, codeKeyUnavailable, "publishing %s: %v", tpath, err)
	}
	return fmt.Errorf("publishing %s: %w", tpath, err)
}

// Release is a release as the API shows it: the store's record plus what
// the signed repository says about it now.
type Release struct {
	store.Release
	// Status is "published" (devices are offered it) or "revoked".
	Status         string   `json:"status"`
	HardwareIDs    []string `json:"hardware_ids"`
	MinFromVersion string   `json:"min_from_version,omitempty"`
	// Role is the TUF role that signs it (models/<model>, or one of its bins).
	Role string `json:"role,omitempty"`
	// Rollout is the signed rollout terms (absent: offered to every device).
	Rollout *rollout.Terms `json:"rollout,omitempty"`
}

func (g *releaseAPI) view(rel store.Release) Release {
	v := Release{Release: rel, Status: "revoked", HardwareIDs: []string{}}
	t, role, ok := g.repo.Lookup(rel.TargetPath)
	if !ok || t.SHA256 != rel.SHA256 {
		return v
	}
	v.Status, v.Role = "published", role
	var c targetCustom
	if json.Unmarshal(t.Custom, &c) == nil {
		v.HardwareIDs, v.MinFromVersion = nonNil(c.HardwareIDs), c.MinFromVersion
	}
	if terms, ok, err := rollout.FromCustom(t.Custom); ok && err == nil {
		v.Rollout = &terms
	}
	return v
}

// list pages through releases, each model's newest first (model
// order, then release counter descending): ?model=M&after=ID&limit=N (limit
// default and maximum store.MaxReleasePage). The next page starts after the
// last id returned; a page shorter than limit is the last.
func (g *releaseAPI) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	after, limit, err := pageParams(q, store.MaxReleasePage, store.MaxReleasePage)
	if err != nil {
		return err
	}
	model := q.Get("model")
	rs, err := g.store.PageReleases(r.Context(), model, after, limit)
	if errors.Is(err, store.ErrNotFound) {
		if model != "" {
			return badRequest("after %d is not the id of a release of model %q", after, model)
		}
		return badRequest("after %d is not the id of a release", after)
	}
	if err != nil {
		return err
	}
	out := make([]Release, 0, len(rs))
	for _, rel := range rs {
		out = append(out, g.view(rel))
	}
	return writeJSON(w, http.StatusOK, out)
}

func (g *releaseAPI) find(r *http.Request) (store.Release, error) {
	model, version := r.PathValue("model"), r.PathValue("version")
	rel, err := g.store.GetRelease(r.Context(), model, version)
	if errors.Is(err, store.ErrNotFound) {
		return store.Release{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "release %s %s not found", model, version)
	}
	return rel, err
}

func (g *releaseAPI) show(w http.ResponseWriter, r *http.Request) error {
	rel, err := g.find(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, g.view(rel))
}

// revoke publishes the repository without the release, so devices
// stop being offered it. Its counter stays used; its blobs stay for devices
// midway through a download.
func (g *releaseAPI) revoke(w http.ResponseWriter, r *http.Request) error {
	rel, err := g.find(r)
	if err != nil {
		return err
	}
	g.publishing.Lock()
	defer g.publishing.Unlock()
	if _, err := g.repo.RemoveTarget(r.Context(), rel.TargetPath); errors.Is(err, tufrepo.ErrTargetNotFound) {
		return apierr.New(http.StatusConflict, codeRevoked, "release %s %s is already revoked", rel.Model, rel.Version)
	} else if err != nil {
		return publishError(rel.TargetPath, err)
	}
	g.audit.record(r, "release.revoke", rel.TargetPath)
	g.log.Info("release revoked", "target", rel.TargetPath)
	return writeJSON(w, http.StatusOK, g.view(rel))
}
