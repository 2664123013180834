package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
)

// TUF ceremonies: the repository's status, the current root or top-level
// targets to stage offline (foster tuf stage), and publishing what the
// ceremony signed.

// ceremonyRepo is what ceremonies need of the repository (tufrepo.Repo).
type ceremonyRepo interface {
	PublishStaged(ctx context.Context, root, targets []byte) error
	RootJSON() []byte
	CurrentTargets() []byte
	Status() tufrepo.Status
}

// ceremonyAPI is the TUF ceremony group. Safe for concurrent use.
type ceremonyAPI struct {
	repo ceremonyRepo
	// keys, if set, hears of every root published (a rotation's new key
	// becomes the configured one).
	keys KeyManager
	// publishing serialises publication with releaseAPI's.
	publishing *sync.Mutex
	audit      *auditTrail
	log        *slog.Logger
	// warnings are the instance's warnings for operators (Config.Warnings).
	warnings []string
}

// TUFStatus is GET /v1/tuf: the repository's status and the instance's
// warnings for operators (offline keys on the server's disk).
type TUFStatus struct {
	tufrepo.Status
	Warnings []string `json:"warnings,omitempty"`
}

func (g *ceremonyAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("GET /v1/tuf", e.handle(readers, g.status))
	mux.Handle("GET /v1/tuf/metadata/{role}", e.handle(readers, g.current))
	mux.Handle("POST /v1/tuf/publish", e.handle(adminOnly, e.streaming(g.publish)))
}

// maxStagedBody bounds a publish request: a staged root (512 KB) and
// targets (5 MB) as JSON.
const maxStagedBody = 8 << 20 // bytes

func (g *ceremonyAPI) status(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, TUFStatus{Status: g.repo.Status(), Warnings: g.warnings})
}

// current returns the current root or top-level targets metadata, the
// starting point of a ceremony (foster tuf stage).
func (g *ceremonyAPI) current(w http.ResponseWriter, r *http.Request) error {
	var raw []byte
	switch r.PathValue("role") {
	case "root":
		raw = g.repo.RootJSON()
	case "targets":
		raw = g.repo.CurrentTargets()
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

func (g *ceremonyAPI) publish(w http.ResponseWriter, r *http.Request) error {
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
	g.publishing.Lock()
	err = g.repo.PublishStaged(r.Context(), root, targets)
	g.publishing.Unlock()
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
	g.audit.record(r, "tuf.publish", strings.Join(what, "+"))
	g.log.Info("ceremony published", "metadata", strings.Join(what, "+"))
	if root != nil && g.keys != nil {
		// The publish stands; a failure here is retried by every replica's
		// key loop (it compares the record with each new root).
		p, _ := principalFrom(r.Context())
		if err := g.keys.RootPublished(r.Context(), p.URI()); err != nil {
			g.log.Error("updating the key record after a root publish", "err", err)
		}
	}
	return writeJSON(w, http.StatusOK, TUFStatus{Status: g.repo.Status(), Warnings: g.warnings})
}
