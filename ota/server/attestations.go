package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// Install attestation ingest (docs/ATTESTATIONS.md).
//
// An attestation is accepted only if every check passes, and then the
// store's row and the log's entry are written in one transaction
// (tlog.AppendWith), so they never disagree: a crash leaves both or neither,
// and the device, which got no answer, re-sends. The checks:
//
//   - the device is enrolled, active, and its certificate unrevoked
//     (authenticate, on this very request: a revoked device cannot attest,
//     so everything logged was signed by a device not revoked when fosterd
//     accepted it);
//   - the envelope verifies with the key of the TLS client certificate,
//     whose chain the handshake verified against the Foster root; that
//     chain (without the root) is what the log records;
//   - the statement names that device;
//   - the installed target is in signed TUF targets metadata, for the
//     device's model, with the stated digest, length, version and counter;
//   - the sequence is above the device's last accepted one (replay), in the
//     append transaction itself. Re-sending the identical envelope is
//     acknowledged with its original bundle, so a device that lost the
//     answer heals by retrying.

// attestStore is what attestations need of the store (*store.DB).
type attestStore interface {
	// AddAttestationTx records an attestation in the log's append
	// transaction (store.ErrReplay, store.ErrSequenceJump: refused).
	AddAttestationTx(ctx context.Context, tx *sql.Tx, a store.Attestation) (store.Attestation, error)
	GetAttestation(ctx context.Context, deviceID string, seq int64) (store.Attestation, error)
	PageAttestations(ctx context.Context, deviceID string, afterID int64, limit int) ([]store.Attestation, error)
	FleetReport(ctx context.Context, model string, staleDays int) (*store.FleetReport, error)
	FleetSummary(ctx context.Context, model string, staleDays, listN int) (*store.FleetSummary, error)
	PageFleetList(ctx context.Context, q store.FleetListQuery) (store.FleetPage, error)
}

// attestLog appends attestations to the transparency log and proves them
// (*tlog.Log).
type attestLog interface {
	AppendWith(ctx context.Context, leaves [][]byte, prepare tlog.Prepare) (first int64, cp []byte, err error)
	Entries(ctx context.Context, start, end int64) ([][]byte, error)
	Checkpoint(ctx context.Context) ([]byte, error)
	ProveInclusion(ctx context.Context, index int64, cp []byte) (size int64, hashes [][]byte, err error)
}

// rolloutNotifier re-evaluates a model's active rollouts soon
// (*rollout.Controller): an accepted attestation may cross a rollout's
// failure threshold, which must halt it within seconds, not at the next tick.
type rolloutNotifier interface {
	Notify(model string)
}

// attestAPI ingests install attestations, serves their bundles and the
// fleet report. Safe for concurrent use.
type attestAPI struct {
	store    attestStore
	tlog     attestLog
	repo     repoVersions
	rollouts rolloutNotifier
	evidence *tufEvidence
	log      *slog.Logger
	now      func() time.Time
}

func (g *attestAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/attestations", e.handle(deviceOnly, g.ingest))
	mux.Handle("GET /v1/attestations", e.handle(readers, g.list))
	mux.Handle("GET /v1/attestations/{device}/{sequence}/bundle", e.handle(readers, e.streaming(g.bundle)))
	mux.Handle("GET /v1/reports/fleet", e.handle(readers, g.fleetReport))
	mux.Handle("GET /v1/reports/fleet/summary", e.handle(readers, g.fleetSummary))
	mux.Handle("GET /v1/reports/fleet/devices", e.handle(readers, g.fleetList))
}

type attestationResponse struct {
	ID        int64          `json:"id"`
	DeviceID  string         `json:"device_id"`
	Sequence  int64          `json:"sequence"`
	LeafIndex int64          `json:"leaf_index"`
	Bundle    *bundle.Bundle `json:"bundle,omitempty"`
}

const codeUnsignedTarget = "unsigned_target"

// maxSnapshotAhead is how far above this fosterd's current snapshot version
// a claimed one may be (replicas publish independently).
const maxSnapshotAhead = 1000

func (g *attestAPI) ingest(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p, cert := principalFrom(ctx)
	env, err := readBounded(w, r, attest.MaxEnvelopeSize)
	if err != nil {
		return err
	}
	in, err := attest.Verify(env, cert.PublicKey)
	if errors.Is(err, attest.ErrBadSignature) {
		return apierr.New(http.StatusBadRequest, "bad_signature", "attestation is not signed by this device's key: %v", err)
	}
	if err != nil {
		return badRequest("%v", err)
	}
	if in.Device != p.URI() {
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "attestation names device %s but was sent by %s", in.Device, p.URI())
	}
	// A claimed snapshot far beyond any this repository signed is a lie
	// (slack: another replica may have published a few this one has not
	// loaded yet). The claim only picks which metadata the bundle carries.
	if _, _, snapV, _ := g.repo.Versions(); in.SnapshotVersion > snapV+maxSnapshotAhead {
		return badRequest("attestation claims TUF snapshot version %d; this repository is at %d", in.SnapshotVersion, snapV)
	}
	rel, err := g.evidence.release(ctx, in.New.Name)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, codeUnsignedTarget, "target %q was never published", in.New.Name)
	} else if err != nil {
		return err
	}
	if rel.Model != p.Model || rel.SHA256 != in.New.SHA256 || rel.Length != in.New.Length ||
		(in.New.Version != "" && in.New.Version != rel.Version) || (in.New.ReleaseCounter != 0 && in.New.ReleaseCounter != rel.Counter) {
		return apierr.New(http.StatusBadRequest, codeUnsignedTarget, "target %q with sha256 %s, length %d, version %q and counter %d does not match the one signed for model %s",
			in.New.Name, in.New.SHA256, in.New.Length, in.New.Version, in.New.ReleaseCounter, p.Model)
	}
	ev, err := g.evidence.forTarget(ctx, in.SnapshotVersion, in.New, p.Model)
	if errors.Is(err, bundle.ErrTargetNotSigned) {
		return apierr.New(http.StatusBadRequest, codeUnsignedTarget, "%v", err)
	}
	if err != nil {
		return err
	}

	at := g.now().UTC().Truncate(time.Second)
	entry := bundle.NewEntry(env, verifiedChain(r), at)
	leaf, err := entry.Marshal()
	if err != nil {
		return badRequest("%v", err)
	}
	var rec store.Attestation
	_, cp, err := g.tlog.AppendWith(ctx, [][]byte{leaf}, func(ctx context.Context, tx *sql.Tx, first int64) error {
		var err error
		rec, err = g.store.AddAttestationTx(ctx, tx, store.Attestation{
			DeviceID: p.URI(), Sequence: in.Sequence, Outcome: in.Outcome,
			TargetPath: rel.TargetPath, SHA256: rel.SHA256, Version: rel.Version, Counter: rel.Counter,
			Envelope: env, ReceivedAt: at, LeafIndex: first, CertSerial: cert.SerialNumber.Text(16),
		})
		return err
	})
	if errors.Is(err, store.ErrReplay) {
		return g.resend(w, r, p, in.Sequence, env, ev, err)
	}
	if errors.Is(err, store.ErrSequenceJump) {
		return badRequest("%v", err)
	}
	if err != nil {
		return err
	}
	g.rollouts.Notify(p.Model) // never blocks
	b, err := g.bundleFor(ctx, entry, rec.LeafIndex, cp, ev)
	if err != nil {
		return err
	}
	g.log.Info("attestation accepted", "device", p.URI(), "target", rel.TargetPath, "outcome", in.Outcome, "sequence", in.Sequence, "leaf_index", rec.LeafIndex)
	return writeJSON(w, http.StatusCreated, attestationResponse{ID: rec.ID, DeviceID: rec.DeviceID, Sequence: rec.Sequence, LeafIndex: rec.LeafIndex, Bundle: b})
}

// resend answers an attestation whose sequence is taken: the identical
// envelope (a device that crashed, or lost the answer, before filing it)
// gets its original entry's bundle; anything else is a replay.
func (g *attestAPI) resend(w http.ResponseWriter, r *http.Request, p identity.Principal, seq int64, env []byte, ev bundle.TUFEvidence, replay error) error {
	prev, err := g.store.GetAttestation(r.Context(), p.URI(), seq)
	if err != nil || !bytes.Equal(prev.Envelope, env) {
		return apierr.New(http.StatusConflict, "replay", "%v", replay)
	}
	b, err := g.storedBundle(r.Context(), prev, &ev)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, attestationResponse{ID: prev.ID, DeviceID: prev.DeviceID, Sequence: prev.Sequence, LeafIndex: prev.LeafIndex, Bundle: b})
}

// storedBundle rebuilds the bundle of an accepted attestation from its log
// entry, proven against the latest checkpoint. ev may be nil (it is then
// recomputed from the entry). Attestations from before the log have none.
func (g *attestAPI) storedBundle(ctx context.Context, a store.Attestation, ev *bundle.TUFEvidence) (*bundle.Bundle, error) {
	if a.LeafIndex < 0 {
		return nil, nil
	}
	leaves, err := g.tlog.Entries(ctx, a.LeafIndex, a.LeafIndex+1)
	if err != nil {
		return nil, fmt.Errorf("reading log entry %d: %w", a.LeafIndex, err)
	}
	entry, err := bundle.ParseEntry(leaves[0])
	if err != nil {
		return nil, fmt.Errorf("log entry %d: %w", a.LeafIndex, err)
	}
	if ev == nil {
		certs, err := entry.Certificates()
		if err != nil {
			return nil, fmt.Errorf("log entry %d: %w", a.LeafIndex, err)
		}
		in, err := attest.Verify(entry.Envelope, certs[0].PublicKey)
		if err != nil {
			return nil, fmt.Errorf("log entry %d: %w", a.LeafIndex, err)
		}
		p, err := identity.ParseURI(in.Device)
		if err != nil {
			return nil, fmt.Errorf("log entry %d: %w", a.LeafIndex, err)
		}
		e, err := g.evidence.forTarget(ctx, in.SnapshotVersion, in.New, p.Model)
		if err != nil {
			return nil, err
		}
		ev = &e
	}
	cp, err := g.tlog.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return g.bundleFor(ctx, entry, a.LeafIndex, cp, *ev)
}

func (g *attestAPI) bundleFor(ctx context.Context, e bundle.Entry, index int64, cp []byte, ev bundle.TUFEvidence) (*bundle.Bundle, error) {
	size, proof, err := g.tlog.ProveInclusion(ctx, index, cp)
	if err != nil {
		return nil, fmt.Errorf("proving log entry %d: %w", index, err)
	}
	return &bundle.Bundle{
		MediaType: bundle.MediaType, Envelope: e.Envelope, CertChain: bundle.ChainPEM(e.CertChain), IntegratedTime: e.IntegratedTime,
		Log: bundle.LogProof{LeafIndex: index, TreeSize: size, InclusionProof: proof, Checkpoint: string(cp)},
		TUF: ev,
	}, nil
}

// bundle serves the bundle of an accepted attestation to
// auditors: GET /v1/attestations/{device}/{sequence}/bundle.
func (g *attestAPI) bundle(w http.ResponseWriter, r *http.Request) error {
	seq, err := strconv.ParseInt(r.PathValue("sequence"), 10, 64)
	if err != nil || seq <= 0 {
		return badRequest("sequence must be a positive integer")
	}
	a, err := g.store.GetAttestation(r.Context(), r.PathValue("device"), seq)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no attestation %d from %s", seq, r.PathValue("device"))
	}
	if err != nil {
		return err
	}
	b, err := g.storedBundle(r.Context(), a, nil)
	if err != nil {
		return err
	}
	if b == nil {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "attestation %d from %s predates the transparency log", seq, a.DeviceID)
	}
	return writeJSON(w, http.StatusOK, b)
}

// verifiedChain is the client's chain as the TLS handshake verified it,
// without the root (the auditor brings their own).
func verifiedChain(r *http.Request) []*x509.Certificate {
	chain := r.TLS.VerifiedChains[0]
	if len(chain) > 1 {
		chain = chain[:len(chain)-1]
	}
	return chain
}

// list pages through accepted attestations: ?device=URN&after=ID&limit=N
// (limit default 500, at most store.MaxAttestationPage). The next page starts
// after the last id returned.
func (g *attestAPI) list(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r.URL.Query(), 500, store.MaxAttestationPage)
	if err != nil {
		return err
	}
	as, err := g.store.PageAttestations(r.Context(), r.URL.Query().Get("device"), after, limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(as))
}

// fleetReport: ?model=M&stale_days=N (default 30).
func (g *attestAPI) fleetReport(w http.ResponseWriter, r *http.Request) error {
	model, stale, err := reportParams(r.URL.Query())
	if err != nil {
		return err
	}
	rep, err := g.store.FleetReport(r.Context(), model, stale)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rep)
}

// reportParams reads ?model=M&stale_days=N (default 30, at most 36500).
func reportParams(q url.Values) (model string, staleDays int, err error) {
	model = q.Get("model")
	if model != "" {
		if err := identity.ValidName(model); err != nil {
			return "", 0, badRequest("model: %v", err)
		}
	}
	stale := int64(30)
	if q.Has("stale_days") {
		if stale, err = intParam(q.Get("stale_days"), "stale_days"); err != nil {
			return "", 0, err
		}
		if stale > 36500 {
			return "", 0, badRequest("stale_days must be at most 36500")
		}
	}
	return model, int(stale), nil
}

// Fleet lists: default and most devices a page (list= and limit=).
const (
	defaultFleetList = 20
	maxFleetList     = store.MaxFleetListPage
)

func fleetLimit(q url.Values, name string) (int, error) {
	if !q.Has(name) {
		return defaultFleetList, nil
	}
	n, err := intParam(q.Get(name), name)
	if err != nil {
		return 0, err
	}
	if n < 1 || n > maxFleetList {
		return 0, badRequest("%s must be between 1 and %d", name, maxFleetList)
	}
	return int(n), nil
}

// fleetSummary is the fleet at a glance, at any size (the console's fleet
// page): ?model=M&stale_days=N&list=L, exact counts and the first L
// (default 20) devices of each list with the cursor of the next page.
func (g *attestAPI) fleetSummary(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	model, stale, err := reportParams(q)
	if err != nil {
		return err
	}
	n, err := fleetLimit(q, "list")
	if err != nil {
		return err
	}
	s, err := g.store.FleetSummary(r.Context(), model, stale, n)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, s)
}

// fleetList pages one fleet list: ?list=behind|silent|revoked|cloned
// &model=M&stale_days=N&after=CURSOR&limit=L (default 20). The answer's
// "next" is the cursor of the following page, absent after the last.
func (g *attestAPI) fleetList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	model, stale, err := reportParams(q)
	if err != nil {
		return err
	}
	n, err := fleetLimit(q, "limit")
	if err != nil {
		return err
	}
	list := q.Get("list")
	if !slices.Contains(store.FleetLists, list) {
		return badRequest("list must be one of %s", strings.Join(store.FleetLists, ", "))
	}
	p, err := g.store.PageFleetList(r.Context(), store.FleetListQuery{List: list, Model: model, StaleDays: stale, After: q.Get("after"), Limit: n})
	if errors.Is(err, store.ErrBadCursor) {
		return badRequest("after: %v", err)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, p)
}
