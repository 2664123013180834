package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
)

// TUFRepo is what the server needs of the firmware repository beyond
// AddTarget (implemented by tufrepo.Repo).
type TUFRepo interface {
	Upload(ctx context.Context, u tufrepo.Upload) (*tufrepo.Pending, error)
	Commit(ctx context.Context, p *tufrepo.Pending) (tufrepo.Target, error)
	// CommitLeased commits holding the caller's publish lock (the store
	// transaction that records the release; replicas sharing PostgreSQL).
	CommitLeased(ctx context.Context, p *tufrepo.Pending, lease tufrepo.Lease) (tufrepo.Target, error)
	Discard(ctx context.Context, p *tufrepo.Pending)
	RemoveTarget(ctx context.Context, path string) (tufrepo.Target, error)
	Lookup(path string) (t tufrepo.Target, role string, ok bool)
	Metadata(ctx context.Context, file string) (data []byte, etag string, ok bool, err error)
	PublishStaged(ctx context.Context, root, targets []byte) error
	RootJSON() []byte
	CurrentTargets() []byte
	Status() tufrepo.Status
}

// Distribution configures how devices fetch metadata and targets.
type Distribution struct {
	// Public serves /tuf/ and /targets/ to any TLS client, without a client
	// certificate, so any conformant TUF client that has root.json can
	// update (TUF needs no transport authentication: signatures, versions
	// and expiries protect devices; firmware becomes downloadable by
	// anyone who can reach the server). Default false: enrolled, active
	// devices only.
	Public bool
	// Presign, if set, answers GET /targets/... with a 307 redirect to a
	// URL from which the blob can be fetched directly (a presigned S3 URL),
	// so images stream from the bucket instead of through fosterd.
	Presign func(ctx context.Context, key string, ttl time.Duration) (string, error)
	// PresignTTL is how long a redirect URL stays valid. Default 15 minutes.
	PresignTTL time.Duration
}

// Device-facing bounds.
const (
	maxStagedBody     = 8 << 20 // bytes: a staged root (512 KB) and targets (5 MB) as JSON
	defaultPresignTTL = 15 * time.Minute
)

// distributionRoutes serves TUF metadata and targets to devices (or to
// anyone, with Distribution.Public), and the TUF admin API.
func (s *Server) distributionRoutes(mux *http.ServeMux) {
	who := []identity.Role{identity.RoleDevice}
	if s.cfg.Distribution.Public {
		who = nil
	}
	mux.Handle("GET /tuf/{file}", s.edge.handle(who, s.edge.streaming(s.serveMetadata)))
	mux.Handle("GET /targets/{path...}", s.edge.handle(who, s.edge.streaming(s.serveTarget)))

	admin := []identity.Role{identity.RoleAdmin}
	reader := []identity.Role{identity.RoleAdmin, identity.RoleAuditor}
	mux.Handle("GET /v1/releases/{model}/{version}", s.edge.handle(reader, s.showRelease))
	mux.Handle("POST /v1/releases/{model}/{version}/revoke", s.edge.handle(admin, s.revokeRelease))
	mux.Handle("GET /v1/tuf", s.edge.handle(reader, s.tufStatus))
	mux.Handle("GET /v1/tuf/metadata/{role}", s.edge.handle(reader, s.tufCurrent))
	mux.Handle("POST /v1/tuf/publish", s.edge.handle(admin, s.edge.streaming(s.tufPublish)))
}

// serveMetadata serves /tuf/<file>: current metadata from the repository's
// memory (timestamp.json is never served expired), older versions from the
// blob store. Conditional GETs (If-None-Match) get 304 Not Modified, which
// is what keeps a fleet's timestamp polls cheap.
func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) error {
	file := r.PathValue("file")
	if model, scoped := metadataModel(file); scoped {
		if err := checkModelScope(r, model); err != nil {
			return err
		}
	}
	data, etag, ok, err := s.cfg.Repo.Metadata(r.Context(), file)
	if errors.Is(err, tufrepo.ErrExpired) {
		s.log.Error("refusing to serve expired TUF metadata", "file", file, "err", err)
		return apierr.New(http.StatusServiceUnavailable, "metadata_expired", "repository metadata expired and could not be renewed; retry later")
	}
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	if !ok {
		return s.serveStored(w, r, "tuf/"+file)
	}
	h.Set("ETag", etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(data)
	}
	return nil
}

// etagMatch implements If-None-Match's weak comparison for a list of tags.
func etagMatch(header, etag string) bool {
	for t := range strings.SplitSeq(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// serveTarget serves a target blob with Range support, or redirects to a
// presigned URL when configured.
func (s *Server) serveTarget(w http.ResponseWriter, r *http.Request) error {
	key := "targets/" + r.PathValue("path")
	if err := blob.ValidKey(key); err != nil {
		return badRequest("invalid path: %v", err)
	}
	if err := checkModelScope(r, targetModel(r.PathValue("path"))); err != nil {
		return err
	}
	if s.cfg.Distribution.Presign == nil {
		w.Header().Set("Content-Type", "application/octet-stream")
		return s.serveStored(w, r, key)
	}
	if _, err := s.cfg.Blobs.Stat(r.Context(), key); errors.Is(err, blob.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%s not found", r.URL.Path)
	} else if err != nil {
		return err
	}
	ttl := s.cfg.Distribution.PresignTTL
	if ttl <= 0 {
		ttl = defaultPresignTTL
	}
	u, err := s.cfg.Distribution.Presign(r.Context(), key, ttl)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // the URL expires; never cache the redirect
	http.Redirect(w, r, u, http.StatusTemporaryRedirect)
	return nil
}

// serveStored serves key from the blob store with Range and conditional
// request support (the blob's ETag, quoted).
func (s *Server) serveStored(w http.ResponseWriter, r *http.Request, key string) error {
	if err := blob.ValidKey(key); err != nil {
		return badRequest("invalid path: %v", err)
	}
	f, info, err := s.cfg.Blobs.Open(r.Context(), key)
	if errors.Is(err, blob.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%s not found", r.URL.Path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if info.ETag != "" {
		w.Header().Set("ETag", `"`+strings.Trim(info.ETag, `"`)+`"`)
	}
	http.ServeContent(w, r, "", info.ModTime, f)
	return nil
}

func (s *Server) tufStatus(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, s.cfg.Repo.Status())
}

// tufCurrent returns the current root or top-level targets metadata, the
// starting point of a ceremony (foster tuf stage).
func (s *Server) tufCurrent(w http.ResponseWriter, r *http.Request) error {
	var raw []byte
	switch r.PathValue("role") {
	case "root":
		raw = s.cfg.Repo.RootJSON()
	case "targets":
		raw = s.cfg.Repo.CurrentTargets()
	default:
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "ceremonies stage root or targets, not %q", r.PathValue("role"))
	}
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(raw)
	return err
}

// PublishRequest carries offline-signed metadata from a ceremony.
type PublishRequest struct {
	Root    json.RawMessage `json:"root,omitempty"`
	Targets json.RawMessage `json:"targets,omitempty"`
}

func (s *Server) tufPublish(w http.ResponseWriter, r *http.Request) error {
	body, err := readBounded(w, r, maxStagedBody)
	if err != nil {
		return err
	}
	var req PublishRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return badRequest("malformed publish request: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("malformed publish request: trailing data")
	}
	var root, targets []byte
	if len(req.Root) > 0 && string(req.Root) != "null" {
		root = req.Root
	}
	if len(req.Targets) > 0 && string(req.Targets) != "null" {
		targets = req.Targets
	}
	s.releaseMu.Lock()
	err = s.cfg.Repo.PublishStaged(r.Context(), root, targets)
	s.releaseMu.Unlock()
	switch {
	case errors.Is(err, tufrepo.ErrStaged):
		return apierr.New(http.StatusBadRequest, "staged_refused", "%v", err)
	case errors.Is(err, tufrepo.ErrKeyUnavailable):
		return apierr.New(http.StatusConflict, codeKeyUnavailable, "%v", err)
	case errors.Is(err, tufrepo.ErrTooLarge):
		return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "%v", err)
	case err != nil:
		return err
	}
	var what []string
	if root != nil {
		what = append(what, "root")
	}
	if targets != nil {
		what = append(what, "targets")
	}
	s.trail.record(r, "tuf.publish", strings.Join(what, "+"))
	s.log.Info("ceremony published", "metadata", strings.Join(what, "+"))
	return writeJSON(w, http.StatusOK, s.cfg.Repo.Status())
}
