package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/store"
)

// Online keys without restarts: the key record every replica follows (TUF
// timestamp, snapshot and targets keys, keys held during a rotation, the
// issuing intermediate), its status, and the admin changes to it (foster
// tuf rotate, foster ca use-intermediate). The record and the replicas'
// loading of it are fosterd's (ota/instance keyset.go); this group is the
// API over it.

// KeyManager changes and reports the online key record (implemented in
// ota/instance). Its errors wrap ErrKeyRefused or ErrKeyConflict when the
// request was refused; nothing changed then.
type KeyManager interface {
	KeyStatus(ctx context.Context) (KeyStatus, error)
	// HoldTUFKey makes every replica hold a new key for a top-level role
	// (alongside the current one), ready for the root that swaps them.
	HoldTUFKey(ctx context.Context, actor string, req HoldKeyRequest) (HoldKeyResult, error)
	// UseIntermediate makes every replica issue with a new intermediate.
	UseIntermediate(ctx context.Context, actor string, req UseIntermediateRequest) (KeyStatus, error)
	// RootPublished is called after a root was published through this
	// replica: keys the new root trusts instead of the configured ones
	// become the configured ones, and the rotated-out keys are dropped.
	RootPublished(ctx context.Context, actor string) error
	// Ready reports whether this replica uses the current key record (a
	// replica that cannot load a new key keeps the old one: not ready).
	Ready(ctx context.Context) error
}

var (
	// ErrKeyRefused: a new key or intermediate does not load, is of a type
	// TUF clients cannot verify, does not match its certificate, or is
	// already in use; nothing changed (400 key_refused).
	ErrKeyRefused = errors.New("key refused")
	// ErrKeyConflict: the change does not fit the instance's state (an
	// offline role, a key record changed meanwhile, other replicas for a
	// key generated on one host); nothing changed (409 conflict).
	ErrKeyConflict = errors.New("key change refused")
)

const codeKeyRefused = "key_refused"

// HoldKeyRequest asks every replica to hold a new key for Role.
type HoldKeyRequest struct {
	// Role is "timestamp", "snapshot" or "targets".
	Role string `json:"role"`
	// Key is the new key: a file path (relative to the data directory; it
	// must exist on every replica) or a KMS URI.
	Key string `json:"key,omitempty"`
	// Generate makes fosterd create a new Ed25519 key file in its data
	// directory instead (an instance with a single fosterd only).
	Generate bool `json:"generate,omitempty"`
}

// HoldKeyResult is the held key and what the root that swaps it needs.
type HoldKeyResult struct {
	// Version is the key record version that holds the key.
	Version int64  `json:"version"`
	Role    string `json:"role"`
	Key     string `json:"key"`
	KeyID   string `json:"keyid"`
	// PublicKey is the new key's public key (PEM), to stage into root.
	PublicKey string `json:"public_key"`
	// Replace are the key IDs root trusts for the role now, which the new
	// key replaces (the configured key).
	Replace []string `json:"replace_keyids"`
	// Published is true when root already trusts the new key for the role
	// (the rotation was published; the record is up to date).
	Published bool `json:"published"`
}

// UseIntermediateRequest activates a newly certified intermediate.
type UseIntermediateRequest struct {
	// Certificate is the new intermediate (PEM), certified by the root
	// (foster ca certify-intermediate --out FILE).
	Certificate string `json:"certificate"`
	// Key is its key: a file path (relative to the data directory; on
	// every replica) or a KMS/HSM URI.
	Key string `json:"key"`
}

// KeyStatus is the online key record and the replicas that follow it.
type KeyStatus struct {
	// Version of the key record (0: never changed; config.json's keys).
	Version   int64     `json:"version"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	UpdatedBy string    `json:"updated_by,omitempty"`
	// Replica is the fosterd that answered; Applied the record version it
	// uses, and Error why it cannot use a newer one.
	Replica string `json:"replica"`
	Applied int64  `json:"applied"`
	Error   string `json:"error,omitempty"`
	// TUF are the TUF keys the answering fosterd holds, by role.
	TUF []HeldKey `json:"tuf_keys"`
	// Intermediate is the issuing intermediate it uses.
	Intermediate IntermediateInfo `json:"intermediate"`
	// Replicas are the fosterd seen recently, with the version each uses.
	Replicas []store.KeySetReplica `json:"replicas"`
}

// HeldKey is one TUF key a fosterd holds.
type HeldKey struct {
	// Role is the configured role ("targets", "snapshot", "timestamp") or
	// "extra" (held for a rotation).
	Role  string `json:"role"`
	Key   string `json:"key"` // reference (KMS URI queries redacted)
	KeyID string `json:"keyid"`
	// TrustedFor are the roles the current root trusts this key for.
	TrustedFor []string `json:"trusted_for"`
}

// IntermediateInfo describes the issuing intermediate.
type IntermediateInfo struct {
	Serial   string    `json:"serial"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	Key      string    `json:"key"` // reference (KMS URI queries redacted)
}

// keyAPI is the online key group. Safe for concurrent use.
type keyAPI struct {
	keys  KeyManager
	audit *auditTrail
}

func (g *keyAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("GET /v1/keys", e.handle(readers, g.status))
	mux.Handle("POST /v1/keys/tuf", e.handle(adminOnly, g.hold))
	mux.Handle("POST /v1/keys/intermediate", e.handle(adminOnly, g.useIntermediate))
}

// maxKeyRequest bounds a key change request (an intermediate certificate
// and a key reference).
const maxKeyRequest = 64 << 10 // bytes

func (g *keyAPI) status(w http.ResponseWriter, r *http.Request) error {
	st, err := g.keys.KeyStatus(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, st)
}

func (g *keyAPI) hold(w http.ResponseWriter, r *http.Request) error {
	var req HoldKeyRequest
	if err := decodeJSON(w, r, maxKeyRequest, &req); err != nil {
		return err
	}
	switch {
	case req.Role != "timestamp" && req.Role != "snapshot" && req.Role != "targets":
		return badRequest("role %q: want timestamp, snapshot or targets (root is rotated by a ceremony: foster tuf stage root)", req.Role)
	case (req.Key == "") == !req.Generate:
		return badRequest("give a key, or ask fosterd to generate one, not both")
	}
	p, _ := principalFrom(r.Context())
	res, err := g.keys.HoldTUFKey(r.Context(), p.URI(), req)
	if err != nil {
		return keyError(err)
	}
	g.audit.record(r, "keys.tuf.hold", fmt.Sprintf("%s key %s (%s), key record v%d", res.Role, res.KeyID, res.Key, res.Version))
	return writeJSON(w, http.StatusOK, res)
}

func (g *keyAPI) useIntermediate(w http.ResponseWriter, r *http.Request) error {
	var req UseIntermediateRequest
	if err := decodeJSON(w, r, maxKeyRequest, &req); err != nil {
		return err
	}
	if req.Certificate == "" || req.Key == "" {
		return badRequest("give the intermediate certificate and its key")
	}
	p, _ := principalFrom(r.Context())
	st, err := g.keys.UseIntermediate(r.Context(), p.URI(), req)
	if err != nil {
		return keyError(err)
	}
	g.audit.record(r, "keys.intermediate", fmt.Sprintf("intermediate %s (%s), key record v%d", st.Intermediate.Serial, st.Intermediate.Key, st.Version))
	return writeJSON(w, http.StatusOK, st)
}

// keyError maps the key manager's refusals to their answers.
func keyError(err error) error {
	switch {
	case errors.Is(err, ErrKeyRefused):
		return apierr.New(http.StatusBadRequest, codeKeyRefused, "%v", err)
	case errors.Is(err, ErrKeyConflict):
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	return err
}
