package server

import (
	"encoding/hex"
	"errors"
	"net/http"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
)

// Transparency log API (docs/ATTESTATIONS.md). The checkpoint and
// consistency proofs reveal only tree sizes and hashes, so anyone may fetch
// them (monitors, witnesses: `foster audit monitor` needs no credential).
// Entries and inclusion proofs reveal which devices run what, so they need
// an admin or auditor certificate. Every answer is bounded: proofs are
// O(log n) hashes, entries come at most tlog.MaxEntries (and
// tlog.MaxEntriesBytes) at a time.
func (s *Server) logRoutes(mux *http.ServeMux, reader []identity.Role) {
	mux.Handle("GET /v1/log/checkpoint", s.edge.throttled("GET /v1/log/checkpoint", s.logCheckpoint))
	mux.Handle("GET /v1/log/consistency", s.edge.throttled("GET /v1/log/consistency", s.logConsistency))
	mux.Handle("GET /v1/log/inclusion", s.edge.handle(reader, s.logInclusion))
	mux.Handle("GET /v1/log/entries", s.edge.handle(reader, s.edge.streaming(s.logEntries)))
	mux.Handle("GET /v1/attestations/{device}/{sequence}/bundle", s.edge.handle(reader, s.edge.streaming(s.attestationBundle)))
	mux.Handle("GET /v1/reports/fleet", s.edge.handle(reader, s.fleetReport))
}

// logCheckpoint serves the latest signed checkpoint as text (C2SP signed note).
func (s *Server) logCheckpoint(w http.ResponseWriter, r *http.Request) error {
	cp, err := s.cfg.Log.Checkpoint(r.Context())
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

// logInclusion: ?index=N or ?leaf_hash=HEX (RFC 6962 leaf hash), and
// optionally &size=N (default: the latest checkpoint, which is returned too).
func (s *Server) logInclusion(w http.ResponseWriter, r *http.Request) error {
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
		if index, err = s.cfg.Log.LeafIndex(ctx, h); err != nil {
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
		resp.Hashes, err = s.cfg.Log.InclusionProof(ctx, index, resp.TreeSize)
	} else {
		var cp []byte
		if cp, err = s.cfg.Log.Checkpoint(ctx); err != nil {
			return err
		}
		resp.Checkpoint = string(cp)
		resp.TreeSize, resp.Hashes, err = s.cfg.Log.ProveInclusion(ctx, index, cp)
	}
	if err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, resp)
}

// logConsistency: ?from=N and optionally &to=N (default: the latest
// checkpoint, which is returned too).
func (s *Server) logConsistency(w http.ResponseWriter, r *http.Request) error {
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
		cp, err := s.cfg.Log.Checkpoint(ctx)
		if err != nil {
			return err
		}
		resp.Checkpoint = string(cp)
		if resp.TreeSize, err = tlog.CheckpointSize(cp); err != nil {
			return err
		}
	}
	if resp.Hashes, err = s.cfg.Log.ConsistencyProof(ctx, from, resp.TreeSize); err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, resp)
}

type entriesResponse struct {
	Start   int64    `json:"start"`
	Entries [][]byte `json:"entries"`
}

// logEntries: ?start=N and optionally &end=N (exclusive). The answer may be
// shorter than asked (bounds, end of log): page on len(entries).
func (s *Server) logEntries(w http.ResponseWriter, r *http.Request) error {
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
	entries, err := s.cfg.Log.Entries(r.Context(), start, end)
	if err != nil {
		return logError(err)
	}
	return writeJSON(w, http.StatusOK, entriesResponse{Start: start, Entries: entries})
}

// fleetReport: ?model=M&stale_days=N (default 30).
func (s *Server) fleetReport(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	model := q.Get("model")
	if model != "" {
		if err := identity.ValidName(model); err != nil {
			return badRequest("model: %v", err)
		}
	}
	stale := int64(30)
	if q.Has("stale_days") {
		var err error
		if stale, err = intParam(q.Get("stale_days"), "stale_days"); err != nil {
			return err
		}
		if stale > 36500 {
			return badRequest("stale_days must be at most 36500")
		}
	}
	rep, err := s.cfg.Store.FleetReport(r.Context(), model, int(stale))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rep)
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
