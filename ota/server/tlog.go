package server

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/apierr"
)

// Transparency log API (docs/ATTESTATIONS.md). The checkpoint and
// consistency proofs reveal only tree sizes and hashes, so anyone may fetch
// them (monitors, witnesses: `foster audit monitor` needs no credential).
// Entries and inclusion proofs reveal which devices run what, so they need
// an admin or auditor certificate. Every answer is bounded: proofs are
// O(log n) hashes, entries come at most tlog.MaxEntries (and
// tlog.MaxEntriesBytes) at a time.

// logProofs is what the log API reads of the log (*tlog.Log).
type logProofs interface {
	Checkpoint(ctx context.Context) ([]byte, error)
	LeafIndex(ctx context.Context, leafHash []byte) (int64, error)
	InclusionProof(ctx context.Context, index, size int64) ([][]byte, error)
	// ProveInclusion proves index against the signed checkpoint cp.
	ProveInclusion(ctx context.Context, index int64, cp []byte) (size int64, hashes [][]byte, err error)
	ConsistencyProof(ctx context.Context, from, to int64) ([][]byte, error)
	Entries(ctx context.Context, start, end int64) ([][]byte, error)
}

// logAPI is the transparency log group. Safe for concurrent use.
type logAPI struct {
	log logProofs
}

func (g *logAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("GET /v1/log/checkpoint", e.throttled("GET /v1/log/checkpoint", g.checkpoint))
	mux.Handle("GET /v1/log/consistency", e.throttled("GET /v1/log/consistency", g.consistency))
	mux.Handle("GET /v1/log/inclusion", e.handle(readers, g.inclusion))
	mux.Handle("GET /v1/log/entries", e.handle(readers, e.streaming(g.entries)))
}

// checkpoint serves the latest signed checkpoint as text (C2SP signed note).
func (g *logAPI) checkpoint(w http.ResponseWriter, r *http.Request) error {
	cp, err := g.log.Checkpoint(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, err = w.Write(cp)
	return err
}

// ProofResponse is the JSON answer of the inclusion and consistency endpoints.
type proofResponse struct {
	LeafIndex *int64   `json:"leaf_index,omitempty"`
	From      *int64   `json:"from,omitempty"`
	TreeSize  int64    `json:"tree_size"`
	Hashes    [][]byte `json:"hashes"`
	// Checkpoint is the signed checkpoint of TreeSize when the request did
	// not name a size (the latest).
	Checkpoint string `json:"checkpoint,omitempty"`
}

// inclusion: ?index=N or ?leaf_hash=HEX (RFC 6962 leaf hash), and
// optionally &size=N (default: the latest checkpoint, which is returned too).
func (g *logAPI) inclusion(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q := r.URL.Query()
	var index int64
	switch {
	case q.Has("index") && q.Has("leaf_hash"):
		return badRequest("give index or leaf_hash, not both")
	case q.Has("index"):
		var err error
		if index, err = intParam(q.Get("index"), "index"); err != nil {
			return err
		}
	case q.Has("leaf_hash"):
		h, err := hex.DecodeString(q.Get("leaf_hash"))
		if err != nil || len(h) != 32 {
			return badRequest("leaf_hash must be 64 hex characters")
		}
		if index, err = g.log.LeafIndex(ctx, h); err != nil {
			return logError(err)
		}
	default:
		return badRequest("index or leaf_hash is required")
	}
	resp := proofResponse{LeafIndex: &index}
	var err error
	if q.Has("size") {
		if resp.TreeSize, err = intParam(q.Get("size"), "size"); err != nil {
			return err
		}
		resp.Hashes, err = g.log.InclusionProof(ctx, index, resp.TreeSize)
	} else {
		var cp []byte
		if cp, err = g.log.Checkpoint(ctx); err != nil {
			return err
		}
		resp.Checkpoint = string(cp)
		resp.TreeSize, resp.Hashes, err = g.log.ProveInclusion(ctx, index, cp)
	}
	if err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, resp)
}

// consistency: ?from=N and optionally &to=N (default: the latest
// checkpoint, which is returned too).
func (g *logAPI) consistency(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q := r.URL.Query()
	from, err := intParam(q.Get("from"), "from")
	if err != nil {
		return err
	}
	resp := proofResponse{From: &from}
	if q.Has("to") {
		if resp.TreeSize, err = intParam(q.Get("to"), "to"); err != nil {
			return err
		}
	} else {
		cp, err := g.log.Checkpoint(ctx)
		if err != nil {
			return err
		}
		resp.Checkpoint = string(cp)
		if resp.TreeSize, err = tlog.CheckpointSize(cp); err != nil {
			return err
		}
	}
	if resp.Hashes, err = g.log.ConsistencyProof(ctx, from, resp.TreeSize); err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, resp)
}

type entriesResponse struct {
	Start   int64    `json:"start"`
	Entries [][]byte `json:"entries"`
}

// entries: ?start=N and optionally &end=N (exclusive). The answer may be
// shorter than asked (bounds, end of log): page on len(entries).
func (g *logAPI) entries(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	start, err := intParam(q.Get("start"), "start")
	if err != nil {
		return err
	}
	end := start + tlog.MaxEntries
	if q.Has("end") {
		if end, err = intParam(q.Get("end"), "end"); err != nil {
			return err
		}
	}
	entries, err := g.log.Entries(r.Context(), start, end)
	if err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, entriesResponse{Start: start, Entries: entries})
}

// logError maps tlog errors to API errors.
func logError(err error) error {
	switch {
	case errors.Is(err, tlog.ErrNotFound):
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%v", err)
	case errors.Is(err, tlog.ErrOutOfRange):
		return apierr.New(http.StatusBadRequest, "out_of_range", "%v", err)
	case errors.Is(err, tlog.ErrInvalid):
		return badRequest("%v", err)
	}
	return err
}
