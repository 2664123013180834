package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/offline"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

// Offline bundles (pkg/offline, docs/OFFLINE.md): POST /v1/bundles streams
// one tar file with everything a device that can never reach fosterd needs
// to verify and install one release. Admins and auditors may export: the
// bundle holds nothing secret (metadata, an image every device of the model
// may download, the CA certificates and CRL), and the timestamp signed for
// it publishes nothing. Every export is recorded in the audit trail, since
// its longer-lived timestamp is what a freeze of an offline device would
// need (docs/OFFLINE.md).

// BundleLifetimes bound the lifetime of an offline bundle's timestamp and snapshot.
type BundleLifetimes struct {
	// Default applies when the caller asks for none (offline.DefaultLifetime).
	Default time.Duration
	// Max is the longest a caller may ask for (default 90 days); at most
	// offline.MaxLifetime.
	Max time.Duration
}

// DefaultBundleMaxLifetime is BundleLifetimes.Max's default.
const DefaultBundleMaxLifetime = 90 * 24 * time.Hour

func (l BundleLifetimes) withDefaults() (BundleLifetimes, error) {
	if l.Default == 0 {
		l.Default = offline.DefaultLifetime
	}
	if l.Max == 0 {
		l.Max = max(DefaultBundleMaxLifetime, l.Default)
	}
	if l.Default < offline.MinLifetime || l.Max > offline.MaxLifetime || l.Default > l.Max {
		return l, fmt.Errorf("server: bundle lifetimes: want %s <= default (%s) <= max (%s) <= %s",
			offline.MinLifetime, l.Default, l.Max, offline.MaxLifetime)
	}
	return l, nil
}

// bundleRepo is what exporting needs of the repository (tufrepo.Repo).
type bundleRepo interface {
	Bundle(ctx context.Context, targetPath string, lifetime time.Duration) (*tufrepo.Bundle, error)
	Targets(ctx context.Context) ([]tufrepo.Target, error)
}

// bundleStore finds models and releases (*store.DB).
type bundleStore interface {
	GetModel(ctx context.Context, name string) (store.Model, error)
	GetRelease(ctx context.Context, model, version string) (store.Release, error)
}

// caCerts are the CA's certificates (ca.CA).
type caCerts interface {
	Root() *x509.Certificate
	Intermediate() *x509.Certificate
}

// bundleAPI exports offline bundles. Safe for concurrent use.
type bundleAPI struct {
	repo      bundleRepo
	store     bundleStore
	blobs     blobOpener
	ca        caCerts
	crl       crlIssuer
	audit     *auditTrail
	log       *slog.Logger
	lifetimes BundleLifetimes
	server    string // informational, in the manifest
}

func (g *bundleAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/bundles", e.handle(readers, e.streaming(g.export)))
}

// BundleRequest asks for an offline bundle.
type BundleRequest struct {
	Model string `json:"model"`
	// Version is the release; empty: the newest full image (no
	// min_from_version, offered to every device) for HardwareID.
	Version string `json:"version,omitempty"`
	// HardwareID restricts the choice to images a device with that
	// hardware id accepts.
	HardwareID string `json:"hardware_id,omitempty"`
	// LifetimeSeconds of the bundle's timestamp and snapshot; 0: the default.
	LifetimeSeconds int64 `json:"lifetime_seconds,omitempty"`
}

// releaseCustom is the part of a target's signed custom metadata a bundle looks at.
type releaseCustom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	Counter        int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
	MinFromVersion string   `json:"min_from_version"`
}

func (g *bundleAPI) export(w http.ResponseWriter, r *http.Request) error {
	var req BundleRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.ValidName(req.Model); err != nil {
		return badRequest("model: %v", err)
	}
	if req.HardwareID != "" {
		if err := identity.ValidName(req.HardwareID); err != nil {
			return badRequest("hardware id: %v", err)
		}
	}
	if req.Version != "" && !validVersion(req.Version) {
		return badRequest("version %q is not a semantic version", req.Version)
	}
	lifetime := time.Duration(req.LifetimeSeconds) * time.Second
	switch {
	case req.LifetimeSeconds == 0:
		lifetime = g.lifetimes.Default
	case req.LifetimeSeconds < 0 || req.LifetimeSeconds > int64(offline.MaxLifetime/time.Second) ||
		lifetime < offline.MinLifetime || lifetime > g.lifetimes.Max:
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "lifetime %ds: want between %s and %s (tuf_lifetimes.bundle_max)",
			req.LifetimeSeconds, offline.MinLifetime, g.lifetimes.Max)
	}
	ctx := r.Context()
	m, err := g.store.GetModel(ctx, req.Model)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "model %s not found", req.Model)
	}
	if err != nil {
		return err
	}
	if req.HardwareID != "" && len(m.HardwareIDs) > 0 && !slices.Contains(m.HardwareIDs, req.HardwareID) {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "model %s has no hardware id %q (it has %s)",
			req.Model, req.HardwareID, strings.Join(m.HardwareIDs, ", "))
	}
	target, custom, err := g.choose(ctx, req)
	if err != nil {
		return err
	}
	b, err := g.repo.Bundle(ctx, target.Path, lifetime)
	switch {
	case errors.Is(err, tufrepo.ErrTargetNotFound):
		return apierr.New(http.StatusConflict, codeRevoked, "release %s %s is no longer published (revoked?)", req.Model, custom.Version)
	case errors.Is(err, tufrepo.ErrExpired):
		return apierr.New(http.StatusServiceUnavailable, "metadata_expired", "%v", err)
	case errors.Is(err, tufrepo.ErrKeyUnavailable):
		return apierr.New(http.StatusConflict, codeKeyUnavailable, "%v", err)
	case err != nil:
		return err
	}
	image, info, err := g.blobs.Open(ctx, tufrepo.TargetKey(b.Target.Path, b.Target.SHA256))
	if err != nil {
		return fmt.Errorf("opening the image of %s: %w", b.Target.Path, err)
	}
	defer image.Close()
	if info.Size != b.Target.Length {
		return fmt.Errorf("the stored image of %s has %d bytes, signed %d", b.Target.Path, info.Size, b.Target.Length)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.ca.Root().Raw})
	caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.ca.Intermediate().Raw})...)
	crlDER, err := g.crl.CRL(ctx)
	if errors.Is(err, ca.ErrNoCRL) {
		crlDER = nil
	} else if err != nil {
		return fmt.Errorf("reading the CRL: %w", err)
	}
	man := offline.Manifest{
		Format: offline.FormatVersion, Model: req.Model, HardwareID: req.HardwareID, HardwareIDs: nonNil(custom.HardwareIDs),
		Target: b.Target.Path, Image: offline.ImageName(b.Target.Path, b.Target.SHA256),
		Version: custom.Version, ReleaseCounter: custom.Counter, Length: b.Target.Length, SHA256: b.Target.SHA256,
		MinFromVersion: custom.MinFromVersion, Metadata: b.Versions, Created: b.SignedAt, Expires: b.Expires, Server: g.server,
	}
	if b.Staged {
		terms, _, _ := rollout.FromCustom(b.Target.Custom)
		man.Staged = cmpOrStr(terms.ID, "held")
	}
	manJSON, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	if err := man.Validate(); err != nil {
		return fmt.Errorf("bundle manifest: %w", err)
	}
	g.audit.record(r, "bundle.export", fmt.Sprintf("%s lifetime=%s expires=%s timestamp=%d", b.Target.Path, lifetime,
		b.Expires.Format(time.RFC3339), b.Versions.Timestamp))
	g.log.Info("offline bundle exported", "target", b.Target.Path, "expires", b.Expires, "timestamp_version", b.Versions.Timestamp)

	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-%s.bundle.tar"`, req.Model, custom.Version))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// From here on an error can only cut the stream: the reader sees a
	// truncated archive (offline.ReadArchive refuses it).
	tw := offline.NewWriter(w, b.SignedAt)
	if err := tw.Add(offline.ManifestName, append(manJSON, '\n')); err != nil {
		return g.abortStream(err)
	}
	for _, f := range b.Files {
		if err := tw.Add(f.Key, f.Data); err != nil {
			return g.abortStream(err)
		}
	}
	if err := tw.Add(offline.CAName, caPEM); err != nil {
		return g.abortStream(err)
	}
	if crlDER != nil {
		if err := tw.Add(offline.CRLName, crlDER); err != nil {
			return g.abortStream(err)
		}
	}
	if err := tw.AddFrom(man.Image, b.Target.Length, image); err != nil {
		return g.abortStream(err)
	}
	if err := tw.Close(); err != nil {
		return g.abortStream(err)
	}
	return nil
}

// abortStream ends a response whose status was sent: panicking with
// http.ErrAbortHandler makes net/http drop the connection (no clean end of
// a chunked body), so the client cannot mistake a cut stream for a bundle.
func (g *bundleAPI) abortStream(err error) error {
	g.log.Error("offline bundle export cut short", "err", err)
	panic(http.ErrAbortHandler)
}

func cmpOrStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// choose returns the target to bundle: the release asked for, or the
// newest full image for the hardware id.
func (g *bundleAPI) choose(ctx context.Context, req BundleRequest) (tufrepo.Target, releaseCustom, error) {
	if req.Version != "" {
		rel, err := g.store.GetRelease(ctx, req.Model, req.Version)
		if errors.Is(err, store.ErrNotFound) {
			return tufrepo.Target{}, releaseCustom{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "release %s %s not found", req.Model, req.Version)
		}
		if err != nil {
			return tufrepo.Target{}, releaseCustom{}, err
		}
		ts, err := g.repo.Targets(ctx)
		if err != nil {
			return tufrepo.Target{}, releaseCustom{}, err
		}
		i := slices.IndexFunc(ts, func(t tufrepo.Target) bool { return t.Path == rel.TargetPath })
		if i < 0 {
			return tufrepo.Target{}, releaseCustom{}, apierr.New(http.StatusConflict, codeRevoked, "release %s %s is revoked: no device would accept it", req.Model, req.Version)
		}
		c, err := parseReleaseCustom(ts[i])
		if err != nil {
			return tufrepo.Target{}, releaseCustom{}, err
		}
		if req.HardwareID != "" && len(c.HardwareIDs) > 0 && !slices.Contains(c.HardwareIDs, req.HardwareID) {
			return tufrepo.Target{}, releaseCustom{}, apierr.New(http.StatusConflict, "wrong_hardware",
				"release %s %s is built for hardware ids %s, not %q", req.Model, req.Version, strings.Join(c.HardwareIDs, ", "), req.HardwareID)
		}
		if terms, ok, err := rollout.FromCustom(ts[i].Custom); err != nil || (ok && terms.Share == 0) {
			return tufrepo.Target{}, releaseCustom{}, apierr.New(http.StatusConflict, "not_offered",
				"release %s %s is offered to no device (its rollout is held, halted or aborted): no device would accept it", req.Model, req.Version)
		}
		return ts[i], c, nil
	}
	ts, err := g.repo.Targets(ctx)
	if err != nil {
		return tufrepo.Target{}, releaseCustom{}, err
	}
	var best *tufrepo.Target
	var bestC releaseCustom
	for i, t := range ts {
		if !strings.HasPrefix(t.Path, req.Model+"/") {
			continue
		}
		c, err := parseReleaseCustom(t)
		if err != nil || c.Model != req.Model || c.MinFromVersion != "" {
			continue
		}
		if len(c.HardwareIDs) > 0 && (req.HardwareID == "" || !slices.Contains(c.HardwareIDs, req.HardwareID)) {
			continue // a device of another hardware id (or of none) refuses it
		}
		if terms, ok, err := rollout.FromCustom(t.Custom); err != nil || (ok && (terms.Share != rollout.Scale || len(terms.Groups) > 0)) {
			continue // staged: not every device is offered it
		}
		if best == nil || c.Counter > bestC.Counter {
			best, bestC = &ts[i], c
		}
	}
	if best == nil {
		what := req.Model + " listing no hardware ids (give --hardware-id for images built for one)"
		if req.HardwareID != "" {
			what = req.Model + " for hardware id " + req.HardwareID
		}
		return tufrepo.Target{}, releaseCustom{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound,
			"no published full image of %s that every device is offered; give --version to choose a release", what)
	}
	return *best, bestC, nil
}

func parseReleaseCustom(t tufrepo.Target) (releaseCustom, error) {
	var c releaseCustom
	if len(t.Custom) == 0 {
		return c, fmt.Errorf("target %s has no custom metadata", t.Path)
	}
	if err := json.Unmarshal(t.Custom, &c); err != nil {
		return c, fmt.Errorf("target %s custom metadata: %w", t.Path, err)
	}
	return c, nil
}
