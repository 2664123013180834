package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
)

// Distribution: what devices fetch. Any file under /tuf/ and /targets/ is
// signed or hashed by TUF metadata, so serving is bounded I/O and model
// scoping (modelscope.go), never a decision about what to trust.

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

// defaultPresignTTL is Distribution.PresignTTL's default.
const defaultPresignTTL = 15 * time.Minute

// metadataSource serves the repository's current metadata from memory
// (tufrepo.Repo).
type metadataSource interface {
	// Metadata returns file if it is current (ok), with its ETag; older
	// versions are in the blob store.
	Metadata(ctx context.Context, file string) (data []byte, etag string, ok bool, err error)
}

// blobReader reads metadata and target blobs (blob.Store).
type blobReader interface {
	blobOpener // evidence.go
	Stat(ctx context.Context, key string) (blob.Info, error)
}

// distributionAPI serves TUF metadata and targets to devices (or to anyone,
// with Distribution.Public): the fleet's hot path. Safe for concurrent use.
type distributionAPI struct {
	repo  metadataSource
	blobs blobReader
	cfg   Distribution
	log   *slog.Logger
}

func (g *distributionAPI) routes(mux *http.ServeMux, e *edge) {
	// Admins and auditors read the metadata (an auditor verifies its fleet
	// report against it) but not firmware.
	meta, targets := devicesAndReaders, deviceOnly
	if g.cfg.Public {
		meta, targets = nil, nil
	}
	mux.Handle("GET /tuf/{file}", e.handle(meta, e.streaming(g.serveMetadata)))
	mux.Handle("GET /targets/{path...}", e.handle(targets, e.streaming(g.serveTarget)))
}

// serveMetadata serves /tuf/<file>: current metadata from the repository's
// memory (timestamp.json is never served expired), older versions from the
// blob store. Conditional GETs (If-None-Match) get 304 Not Modified, which
// is what keeps a fleet's timestamp polls cheap.
func (g *distributionAPI) serveMetadata(w http.ResponseWriter, r *http.Request) error {
	file := r.PathValue("file")
	if model, scoped := metadataModel(file); scoped {
		if err := checkModelScope(r, model); err != nil {
			return err
		}
	}
	data, etag, ok, err := g.repo.Metadata(r.Context(), file)
	if errors.Is(err, tufrepo.ErrExpired) {
		g.log.Error("refusing to serve expired TUF metadata", "file", file, "err", err)
		return apierr.New(http.StatusServiceUnavailable, "metadata_expired", "repository metadata expired and could not be renewed; retry later")
	}
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	if !ok {
		return g.serveStored(w, r, "tuf/"+file)
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
func (g *distributionAPI) serveTarget(w http.ResponseWriter, r *http.Request) error {
	key := "targets/" + r.PathValue("path")
	if err := blob.ValidKey(key); err != nil {
		return badRequest("invalid path: %v", err)
	}
	if err := checkModelScope(r, targetModel(r.PathValue("path"))); err != nil {
		return err
	}
	if g.cfg.Presign == nil {
		w.Header().Set("Content-Type", "application/octet-stream")
		return g.serveStored(w, r, key)
	}
	if _, err := g.blobs.Stat(r.Context(), key); errors.Is(err, blob.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%s not found", r.URL.Path)
	} else if err != nil {
		return err
	}
	ttl := g.cfg.PresignTTL
	if ttl <= 0 {
		ttl = defaultPresignTTL
	}
	u, err := g.cfg.Presign(r.Context(), key, ttl)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // the URL expires; never cache the redirect
	http.Redirect(w, r, u, http.StatusTemporaryRedirect)
	return nil
}

// serveStored serves key from the blob store with Range and conditional
// request support (the blob's ETag, quoted).
func (g *distributionAPI) serveStored(w http.ResponseWriter, r *http.Request, key string) error {
	if err := blob.ValidKey(key); err != nil {
		return badRequest("invalid path: %v", err)
	}
	f, info, err := g.blobs.Open(r.Context(), key)
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
