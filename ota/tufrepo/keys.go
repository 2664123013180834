package tufrepo

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// heldKey is a signer with its TUF key and key ID.
type heldKey struct {
	id  string
	key *metadata.Key
	s   signature.Signer
}

// keyring is every key this process holds, indexed by TUF key ID, so any
// role is signed by each held key its delegator trusts. Key IDs are computed
// once (a KMS public key lookup is a network call).
type keyring struct {
	held   []heldKey // Root, Targets, Snapshot, Timestamp, Extra (deduplicated)
	byPtr  map[signature.Signer]string
	models func(string) signature.Signer // nil: Targets signs model roles

	mu       sync.Mutex
	modelIDs map[string]*heldKey // cache; nil entry: no key for the model
}

func newKeyring(ctx context.Context, k Keys) (*keyring, error) {
	ring := &keyring{byPtr: map[signature.Signer]string{}, models: k.Models, modelIDs: map[string]*heldKey{}}
	for _, s := range append([]signature.Signer{k.Root, k.Targets, k.Snapshot, k.Timestamp}, k.Extra...) {
		if s == nil {
			continue
		}
		if _, ok := ring.byPtr[s]; ok {
			continue
		}
		key, id, err := tufKey(ctx, s)
		if err != nil {
			return nil, err
		}
		ring.byPtr[s] = id
		if !slices.ContainsFunc(ring.held, func(h heldKey) bool { return h.id == id }) {
			ring.held = append(ring.held, heldKey{id: id, key: key, s: s})
		}
	}
	if ring.models == nil && k.Targets != nil {
		t := k.Targets
		ring.models = func(string) signature.Signer { return t }
	}
	return ring, nil
}

func (k *keyring) idOf(s signature.Signer) (string, bool) {
	id, ok := k.byPtr[s]
	return id, ok
}

// forRole returns the held signers whose key IDs are in keyids.
func (k *keyring) forRole(_ string, keyids []string) []signature.Signer {
	var out []signature.Signer
	for _, h := range k.held {
		if slices.Contains(keyids, h.id) {
			out = append(out, h.s)
		}
	}
	return out
}

// modelKey returns the key configured for model's role, or nil.
func (k *keyring) modelKey(ctx context.Context, model string) (*heldKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if h, ok := k.modelIDs[model]; ok {
		return h, nil
	}
	var h *heldKey
	if k.models != nil {
		if s := k.models(model); s != nil {
			key, id, err := tufKey(ctx, s)
			if err != nil {
				return nil, fmt.Errorf("key of models/%s: %w", model, err)
			}
			h = &heldKey{id: id, key: key, s: s}
		}
	}
	k.modelIDs[model] = h
	return h, nil
}

// forModel returns the held signers (the model's key and any other held
// key) whose key IDs are in keyids.
func (k *keyring) forModel(ctx context.Context, model string, keyids []string) ([]signature.Signer, error) {
	out := k.forRole("", keyids)
	h, err := k.modelKey(ctx, model)
	if err != nil {
		return nil, err
	}
	if h != nil && slices.Contains(keyids, h.id) && !slices.ContainsFunc(k.held, func(x heldKey) bool { return x.id == h.id }) {
		out = append(out, h.s)
	}
	return out, nil
}
