package instance

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Online keys without restarts (docs/TUF.md "Rotating keys", docs/CA.md).
//
// The online keys every replica uses are named by config.json until an admin
// changes them with foster tuf rotate or foster ca use-intermediate; from
// then on by the key record in the shared store (pkg/store keyset.go),
// which overrides config.json for what it names: the targets, snapshot and
// timestamp keys, keys held during a rotation, and the issuing
// intermediate (certificate and key). config.json keeps the rest (the root
// key, model keys). Key files named by the record are resolved in each
// replica's own data directory, so they must exist on every replica (a
// mounted secret), or be KMS URIs.
//
// Each fosterd polls the record (one point read every SyncInterval). On a
// new version it loads every key the record names and checks them (TUF
// keys: a type clients verify, and root trusts a held key for each
// configured role; intermediate: issued by the root, matching its key);
// only then does it swap its TUF signers and its issuer, each whole. A
// replica that cannot load a version keeps the keys it has, logs it as an
// error and fails /readyz ("keys"), and tries again at every poll. Each
// replica reports the version it uses (and its error) in the store, so a
// rotation waits until every live replica holds the new key before it
// publishes the root that needs it.
//
// A rotation of a TUF role: (1) the new key is added to the record as a
// held key (every replica signs that role with each held key the current
// root trusts, so nothing changes yet); (2) a root that trusts the new key
// instead of the old one is published (the publish is signed by both, and
// the root is written last, so clients on either root accept everything);
// (3) the record makes the new key the configured one and drops the old one
// (keyManager.reconcile, run by the replica that published and by every
// replica that sees a new root).

const (
	// keyHeartbeat is how often a replica reports its key record version
	// even when nothing changed.
	keyHeartbeat = 15 * time.Second
	// keyReplicaTTL: a replica not heard of for this long (stopped, killed)
	// is no longer waited for.
	keyReplicaTTL = 4 * keyHeartbeat
)

// keyRecord is the body of the store's key record.
type keyRecord struct {
	// Targets, Snapshot and Timestamp replace config.json's tuf_keys of the
	// same name when set.
	Targets   string `json:"targets,omitempty"`
	Snapshot  string `json:"snapshot,omitempty"`
	Timestamp string `json:"timestamp,omitempty"`
	// Extra are keys held for a rotation in progress, besides config.json's
	// tuf_keys.extra.
	Extra []string `json:"extra,omitempty"`
	// Intermediate replaces DIR/intermediate.pem and
	// identity.intermediate_key when set.
	Intermediate *intermediateRecord `json:"intermediate,omitempty"`
}

type intermediateRecord struct {
	Certificate string `json:"certificate"` // PEM
	Key         string `json:"key"`
}

func parseKeyRecord(ks store.KeySet) (keyRecord, error) {
	var r keyRecord
	if ks.Version == 0 || len(ks.Body) == 0 {
		return r, nil
	}
	dec := json.NewDecoder(bytes.NewReader(ks.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("key record version %d is not one this fosterd understands (was it written by a newer one?): %w", ks.Version, err)
	}
	return r, nil
}

func (r keyRecord) clone() keyRecord {
	r.Extra = slices.Clone(r.Extra)
	if r.Intermediate != nil {
		i := *r.Intermediate
		r.Intermediate = &i
	}
	return r
}

// tufRefs returns base (config.json's tuf_keys) with the record applied.
func (r keyRecord) tufRefs(base TUFKeyRefs) TUFKeyRefs {
	for _, x := range []struct{ from, to *string }{{&r.Targets, &base.Targets}, {&r.Snapshot, &base.Snapshot}, {&r.Timestamp, &base.Timestamp}} {
		if *x.from != "" {
			*x.to = *x.from
		}
	}
	extra := slices.Clone(base.Extra)
	for _, e := range r.Extra {
		if !slices.Contains(extra, e) {
			extra = append(extra, e)
		}
	}
	base.Extra = extra
	return base
}

// role points at the record's reference of role.
func (r *keyRecord) role(role string) *string {
	switch role {
	case "targets":
		return &r.Targets
	case "snapshot":
		return &r.Snapshot
	}
	return &r.Timestamp
}

// roleRef points at the reference of role in refs.
func roleRef(refs *TUFKeyRefs, role string) *string {
	switch role {
	case "targets":
		return &refs.Targets
	case "snapshot":
		return &refs.Snapshot
	case "timestamp":
		return &refs.Timestamp
	}
	return nil
}

var onlineRoles = []string{"targets", "snapshot", "timestamp"}

// keyManager follows and changes the key record for one fosterd: it is
// server.KeyManager. Safe for concurrent use.
type keyManager struct {
	dir      string
	base     TUFKeyRefs // config.json's (with environment and flags)
	baseKey  string     // identity.intermediate_key
	pass     []byte
	st       *store.DB
	repo     *tufrepo.Repo
	ca       *ca.CA
	log      *slog.Logger
	name     string // this replica, in key_set_replicas
	interval time.Duration

	mu      sync.Mutex // serialises loading, changing and reporting
	applied int64      // record version in use
	rec     keyRecord  // record in use
	loaded  map[string]heldSigner
	// failed is the newer version this fosterd could not use, and why.
	failed    int64
	failedErr error
	lastRoot  int64 // root version the record was last reconciled with
	reported  store.KeySetReplica
	logged    string
	loggedAt  time.Time
}

// heldSigner is a loaded TUF key and its key ID.
type heldSigner struct {
	s  signature.Signer
	id string
}

// newKeyManager reads the key record and loads the TUF keys it and cfg
// name; the CA must have been opened with keyRecordIntermediate's result.
func newKeyManager(ctx context.Context, dir string, cfg *Config, pass []byte, st *store.DB, log *slog.Logger) (*keyManager, store.KeySet, keyRecord, error) {
	ks, err := st.KeySet(ctx)
	if err != nil {
		return nil, ks, keyRecord{}, err
	}
	rec, err := parseKeyRecord(ks)
	if err != nil {
		return nil, ks, rec, err
	}
	host, _ := os.Hostname()
	km := &keyManager{
		dir: dir, base: cfg.TUFKeys, baseKey: cfg.Identity.IntermediateKey, pass: pass, st: st, log: log,
		name: strings.TrimSpace(host + " " + cfg.Listen), applied: ks.Version, rec: rec, loaded: map[string]heldSigner{},
	}
	return km, ks, rec, nil
}

// intermediate returns the intermediate certificate (nil: DIR's) and key
// reference that rec and the configuration name.
func (km *keyManager) intermediate(rec keyRecord) ([]byte, string) {
	if rec.Intermediate != nil {
		return []byte(rec.Intermediate.Certificate), rec.Intermediate.Key
	}
	return nil, km.baseKey
}

// recordError says which record a startup failure came from.
func recordError(ks store.KeySet, err error) error {
	if ks.Version == 0 {
		return err
	}
	return fmt.Errorf("%w\n  (the key is named by the online key record, version %d, set by %s at %s with foster tuf rotate or foster ca use-intermediate: it must load on every fosterd)",
		err, ks.Version, ks.UpdatedBy, ks.UpdatedAt.Format(time.RFC3339))
}

// loadKeys loads the TUF keys refs names, reusing those already loaded
// (a KMS key is not looked up again). It returns them and the new set of
// loaded keys (refs no longer named are dropped).
func (km *keyManager) loadKeys(ctx context.Context, refs TUFKeyRefs) (tufrepo.Keys, map[string]heldSigner, error) {
	next := map[string]heldSigner{}
	load := func(ref string) (signature.Signer, error) {
		if h, ok := next[ref]; ok {
			return h.s, nil
		}
		if h, ok := km.loaded[ref]; ok {
			next[ref] = h
			return h.s, nil
		}
		h, err := km.loadOne(ctx, ref)
		if err != nil {
			return nil, err
		}
		next[ref] = h
		return h.s, nil
	}
	keys, err := loadRepoKeys(refs, load)
	return keys, next, err
}

// loadOne loads one TUF key and computes its key ID (which also refuses
// key types TUF clients cannot verify).
func (km *keyManager) loadOne(ctx context.Context, ref string) (heldSigner, error) {
	path := ref
	if !signing.IsKMS(ref) {
		path = resolve(km.dir, ref)
	}
	s, err := signing.Load(ctx, path, km.pass)
	if err != nil {
		return heldSigner{}, fmt.Errorf("loading key %s: %w", redactRef(ref), err)
	}
	pub, err := s.PublicKey()
	if err != nil {
		return heldSigner{}, fmt.Errorf("key %s: public key: %w", redactRef(ref), err)
	}
	_, id, err := tufrepo.TUFKey(pub)
	if err != nil {
		return heldSigner{}, fmt.Errorf("key %s: %w", redactRef(ref), err)
	}
	return heldSigner{s: s, id: id}, nil
}

// redactRef drops a KMS URI's query (credentials never belong there, but
// tokens sometimes end up in one).
func redactRef(ref string) string {
	if i := strings.IndexByte(ref, '?'); i >= 0 && signing.IsKMS(ref) {
		return ref[:i] + "?..."
	}
	return ca.RedactKeyRef(ref)
}

// poll is one round of the key loop: use a newer record, bring the record
// up to date with a newly published root, report.
func (km *keyManager) poll(ctx context.Context) {
	ks, err := km.st.KeySet(ctx)
	km.mu.Lock()
	defer km.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			km.logError("reading the online key record", err)
		}
		return
	}
	if ks.Version != km.applied {
		km.applyLocked(ctx, ks, nil)
	}
	if km.failed == 0 {
		if rv, _, _, _ := km.repo.Versions(); rv != km.lastRoot {
			if err := km.reconcileLocked(ctx, "fosterd "+km.name); err != nil {
				km.logError("updating the online key record after a new root", err)
			} else {
				km.lastRoot = rv
			}
		}
	}
	km.reportLocked(ctx, false)
}

// loop runs poll every interval until ctx ends, then tells the others
// this replica is gone.
func (km *keyManager) loop(ctx context.Context) {
	km.poll(ctx)
	t := time.NewTicker(km.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := km.st.RemoveKeySetReplica(dctx, km.name); err != nil {
				km.log.Warn("removing this fosterd from the replicas of the key record", "err", err)
			}
			cancel()
			return
		case <-t.C:
			km.poll(ctx)
		}
	}
}

// logError logs err, but the same error at most once a minute (a replica
// that cannot load a key retries every poll). Called with mu held.
func (km *keyManager) logError(msg string, err error) {
	if s := msg + err.Error(); s != km.logged || time.Since(km.loggedAt) > time.Minute {
		km.logged, km.loggedAt = s, time.Now()
		km.log.Error(msg, "err", err)
	}
}

// applyLocked makes ks the record in use, or keeps the current one and
// records why not. prepared, if set, is ks's intermediate already checked.
func (km *keyManager) applyLocked(ctx context.Context, ks store.KeySet, prepared *ca.PreparedIntermediate) error {
	err := km.switchLocked(ctx, ks, prepared)
	if err != nil {
		km.failed, km.failedErr = ks.Version, err
		km.logError(fmt.Sprintf("cannot use online key record version %d; still using version %d (fix the key on this fosterd: it retries every %s)", ks.Version, km.applied, km.interval), err)
		km.reportLocked(ctx, true)
		return err
	}
	km.failed, km.failedErr = 0, nil
	km.reportLocked(ctx, true)
	return nil
}

func (km *keyManager) switchLocked(ctx context.Context, ks store.KeySet, prepared *ca.PreparedIntermediate) (err error) {
	defer func() {
		if err != nil && prepared != nil {
			prepared.Close()
		}
	}()
	rec, err := parseKeyRecord(ks)
	if err != nil {
		return err
	}
	// Check the new keys against the newest root (a rotation's promotion
	// may arrive before this replica followed the root that allows it).
	if err := km.repo.Sync(ctx); err != nil {
		km.log.Warn("checking for TUF metadata published by another fosterd", "err", err)
	}
	if prepared == nil && rec.Intermediate != nil && !sameIntermediate(rec.Intermediate, km.rec.Intermediate) {
		certPEM, keyRef := km.intermediate(rec)
		if prepared, err = km.ca.PrepareIntermediate(ctx, km.dir, certPEM, keyRef, km.pass); err != nil {
			return err
		}
	}
	keys, loaded, err := km.loadKeys(ctx, rec.tufRefs(km.base))
	if err != nil {
		return err
	}
	if err := km.repo.SetKeys(ctx, keys); err != nil {
		return err
	}
	if prepared != nil {
		km.ca.UseIntermediate(prepared)
		inter := prepared.Certificate()
		km.log.Info("issuing with a new intermediate", "serial", inter.SerialNumber.Text(16), "not_after", inter.NotAfter, "key", ca.RedactKeyRef(rec.Intermediate.Key))
	}
	prev := km.loaded
	km.loaded, km.rec, km.applied = loaded, rec, ks.Version
	var dropped []string
	for ref, h := range prev {
		if _, ok := loaded[ref]; !ok {
			dropped = append(dropped, h.id)
		}
	}
	km.log.Info("using online key record", "version", ks.Version, "updated_by", ks.UpdatedBy, "tuf_keys", km.describeLocked(), "dropped_keyids", dropped)
	return nil
}

func sameIntermediate(a, b *intermediateRecord) bool {
	return a == b || (a != nil && b != nil && *a == *b)
}

// describeLocked lists role=keyid of the TUF keys in use, for logs.
func (km *keyManager) describeLocked() string {
	refs := km.rec.tufRefs(km.base)
	var out []string
	for _, role := range onlineRoles {
		if ref := *roleRef(&refs, role); ref != "" {
			out = append(out, role+"="+km.loaded[ref].id)
		}
	}
	for _, ref := range refs.Extra {
		out = append(out, "extra="+km.loaded[ref].id)
	}
	return strings.Join(out, " ")
}

func (km *keyManager) reportLocked(ctx context.Context, force bool) {
	r := store.KeySetReplica{Name: km.name, Version: km.applied}
	if km.failedErr != nil {
		r.Error = fmt.Sprintf("cannot use key record version %d: %v", km.failed, km.failedErr)
	}
	if !force && r.Version == km.reported.Version && r.Error == km.reported.Error && time.Since(km.reported.SeenAt) < keyHeartbeat {
		return
	}
	if err := km.st.ReportKeySetReplica(ctx, r); err != nil {
		if ctx.Err() == nil {
			km.logError("reporting this fosterd's key record version", err)
		}
		return
	}
	r.SeenAt = time.Now()
	km.reported = r
}

// Ready fails while a newer key record is one this fosterd cannot use.
func (km *keyManager) Ready(context.Context) error {
	km.mu.Lock()
	defer km.mu.Unlock()
	if km.failedErr != nil {
		return fmt.Errorf("cannot use online key record version %d (still on %d): %w", km.failed, km.applied, km.failedErr)
	}
	return nil
}

// currentLocked brings this fosterd to the newest record before a change,
// which is refused if this fosterd cannot use it.
func (km *keyManager) currentLocked(ctx context.Context) error {
	ks, err := km.st.KeySet(ctx)
	if err != nil {
		return err
	}
	if ks.Version != km.applied {
		if err := km.applyLocked(ctx, ks, nil); err != nil {
			return fmt.Errorf("%w: this fosterd cannot use the current key record (version %d): %w", server.ErrKeyConflict, ks.Version, err)
		}
	}
	return nil
}

// writeLocked stores rec as the next version (refused if another fosterd
// changed the record since this one loaded it) and uses it here at once.
func (km *keyManager) writeLocked(ctx context.Context, actor string, rec keyRecord, prepared *ca.PreparedIntermediate) (store.KeySet, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return store.KeySet{}, err
	}
	base := km.applied
	ks, err := km.st.UpdateKeySet(ctx, actor, func(cur store.KeySet) ([]byte, error) {
		if cur.Version != base {
			return nil, fmt.Errorf("%w: the key record changed meanwhile (version %d, by %s); try again", server.ErrKeyConflict, cur.Version, cur.UpdatedBy)
		}
		return body, nil
	})
	if err != nil {
		if prepared != nil {
			prepared.Close()
		}
		return ks, err
	}
	if err := km.applyLocked(ctx, ks, prepared); err != nil {
		return ks, fmt.Errorf("key record version %d is written, but this fosterd cannot use it: %w", ks.Version, err)
	}
	return ks, nil
}

// rootKeys returns the key IDs the current root trusts for each role.
func (km *keyManager) rootKeys() map[string][]string {
	out := map[string][]string{}
	for role, k := range km.repo.Status().Keys {
		out[role] = k.KeyIDs
	}
	return out
}

// HoldTUFKey: server.KeyManager.
func (km *keyManager) HoldTUFKey(ctx context.Context, actor string, req server.HoldKeyRequest) (server.HoldKeyResult, error) {
	km.mu.Lock()
	defer km.mu.Unlock()
	var res server.HoldKeyResult
	if err := km.currentLocked(ctx); err != nil {
		return res, err
	}
	refs := km.rec.tufRefs(km.base)
	cur := *roleRef(&refs, req.Role)
	if cur == "" {
		return res, fmt.Errorf("%w: this fosterd does not hold the %s key (tuf_keys.%s is empty: offline); rotate an offline key with a root ceremony (docs/TUF.md, Rotating keys)", server.ErrKeyConflict, req.Role, req.Role)
	}
	if req.Role == "targets" && refs.Models == "" && len(refs.ModelKeys) == 0 {
		return res, fmt.Errorf("%w: the targets key also signs this instance's model roles (no tuf_keys.models); delegate the models to a key of their own first (docs/TUF.md)", server.ErrKeyConflict)
	}
	trusted := km.rootKeys()
	curID := km.loaded[cur].id
	ref := req.Key
	if req.Generate {
		var err error
		if ref, err = km.generateLocked(ctx, req.Role); err != nil {
			return res, err
		}
	}
	h, err := km.loadOne(ctx, ref)
	if err != nil {
		return res, fmt.Errorf("%w: %w", server.ErrKeyRefused, err)
	}
	if h.id == curID {
		return res, fmt.Errorf("%w: %s is already the %s key (%s)", server.ErrKeyRefused, redactRef(ref), req.Role, h.id)
	}
	for role, ids := range trusted {
		if role != req.Role && slices.Contains(ids, h.id) {
			return res, fmt.Errorf("%w: key %s is root's %s key; give each role a key of its own", server.ErrKeyRefused, h.id, role)
		}
	}
	for role, r := range map[string]string{"targets": refs.Targets, "snapshot": refs.Snapshot, "timestamp": refs.Timestamp} {
		if r != "" && role != req.Role && km.loaded[r].id == h.id {
			return res, fmt.Errorf("%w: key %s is this fosterd's %s key; give each role a key of its own", server.ErrKeyRefused, h.id, role)
		}
	}
	pub, err := h.s.PublicKey()
	if err != nil {
		return res, err
	}
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(pub)
	if err != nil {
		return res, err
	}
	res = server.HoldKeyResult{Role: req.Role, Key: redactRef(ref), KeyID: h.id, PublicKey: string(pubPEM), Replace: []string{}}
	if slices.Contains(trusted[req.Role], h.id) {
		// Root already trusts it: the rotation was published (perhaps
		// through another command); make sure the record says so.
		if err := km.reconcileLocked(ctx, actor); err != nil {
			return res, err
		}
		res.Version, res.Published = km.applied, true
		return res, nil
	}
	if !slices.Contains(trusted[req.Role], curID) {
		return res, fmt.Errorf("%w: root does not trust the configured %s key %s for the role (a rotation whose root is not published yet, or a ceremony that changed it): publish or re-stage that root first (foster keys status, foster tuf status)", server.ErrKeyConflict, req.Role, curID)
	}
	res.Replace = []string{curID}
	rec := km.rec.clone()
	if !slices.Contains(rec.Extra, ref) && !slices.Contains(km.base.Extra, ref) {
		rec.Extra = append(rec.Extra, ref)
		if _, err := km.writeLocked(ctx, actor, rec, nil); err != nil {
			return res, err
		}
		km.log.Info("holding a new key for a rotation", "role", req.Role, "keyid", h.id, "key", redactRef(ref), "by", actor, "key_record", km.applied)
	}
	res.Version = km.applied
	return res, nil
}

// generateLocked creates a new Ed25519 key file in DIR/keys, refusing when
// other replicas would not have it.
func (km *keyManager) generateLocked(ctx context.Context, role string) (string, error) {
	rs, err := km.st.KeySetReplicas(ctx, time.Now().Add(-keyReplicaTTL))
	if err != nil {
		return "", err
	}
	var others []string
	for _, r := range rs {
		if r.Name != km.name {
			others = append(others, r.Name)
		}
	}
	if len(others) > 0 {
		return "", fmt.Errorf("%w: other fosterd share this instance (%s): a key generated here would exist on this one only; create the key where every replica can load it (a KMS, or a file on every replica) and pass --key", server.ErrKeyConflict, strings.Join(others, ", "))
	}
	ref := filepath.Join("keys", fmt.Sprintf("tuf-%s-%s.key", role, time.Now().UTC().Format("20060102T150405Z")))
	if _, err := os.Stat(resolve(km.dir, ref)); err == nil {
		return "", fmt.Errorf("%w: %s exists; try again in a second", server.ErrKeyConflict, ref)
	}
	if _, err := signing.GenerateEd25519File(resolve(km.dir, ref), km.pass); err != nil {
		return "", err
	}
	km.log.Info("generated a new TUF key", "role", role, "file", ref)
	return ref, nil
}

// RootPublished: server.KeyManager.
func (km *keyManager) RootPublished(ctx context.Context, actor string) error {
	km.mu.Lock()
	defer km.mu.Unlock()
	if km.failedErr != nil {
		return nil // not on the current record: reconciled once it is
	}
	return km.reconcileLocked(ctx, actor)
}

// reconcileLocked brings the record up to date with the current root: a
// configured key root no longer trusts for its role is replaced by the held
// key it trusts instead (the end of a rotation), and the old one is dropped.
func (km *keyManager) reconcileLocked(ctx context.Context, actor string) error {
	trusted := km.rootKeys()
	refs := km.rec.tufRefs(km.base)
	rec := km.rec.clone()
	var done []string
	for _, role := range onlineRoles {
		cur := *roleRef(&refs, role)
		if cur == "" || slices.Contains(trusted[role], km.loaded[cur].id) {
			continue
		}
		i := slices.IndexFunc(rec.Extra, func(ref string) bool { return slices.Contains(trusted[role], km.loaded[ref].id) })
		if i < 0 {
			continue // nothing held replaces it: the root's own business (a ceremony)
		}
		// Only the roles that changed are pinned in the record; the others
		// stay config.json's.
		*rec.role(role) = rec.Extra[i]
		done = append(done, fmt.Sprintf("%s %s -> %s", role, km.loaded[cur].id, km.loaded[rec.Extra[i]].id))
		rec.Extra = slices.Delete(rec.Extra, i, i+1)
	}
	if len(done) == 0 {
		return nil
	}
	if _, err := km.writeLocked(ctx, actor, rec, nil); err != nil {
		if errors.Is(err, server.ErrKeyConflict) {
			return nil // another replica reconciled first; the next poll catches up
		}
		return err
	}
	km.log.Info("rotation complete: the new keys are the configured ones, the old ones are dropped", "rotated", strings.Join(done, ", "), "key_record", km.applied)
	return nil
}

// UseIntermediate: server.KeyManager.
func (km *keyManager) UseIntermediate(ctx context.Context, actor string, req server.UseIntermediateRequest) (server.KeyStatus, error) {
	km.mu.Lock()
	if err := km.currentLocked(ctx); err != nil {
		km.mu.Unlock()
		return server.KeyStatus{}, err
	}
	prepared, err := km.ca.PrepareIntermediate(ctx, km.dir, []byte(req.Certificate), req.Key, km.pass)
	if err != nil {
		km.mu.Unlock()
		return server.KeyStatus{}, fmt.Errorf("%w: %w", server.ErrKeyRefused, err)
	}
	inter := prepared.Certificate()
	if cur := km.ca.Intermediate(); cur.Equal(inter) {
		prepared.Close()
		km.mu.Unlock()
		return server.KeyStatus{}, fmt.Errorf("%w: intermediate %s is already the issuing one", server.ErrKeyRefused, inter.SerialNumber.Text(16))
	}
	rec := km.rec.clone()
	rec.Intermediate = &intermediateRecord{
		Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw})),
		Key:         req.Key,
	}
	_, err = km.writeLocked(ctx, actor, rec, prepared)
	km.mu.Unlock()
	if err != nil {
		return server.KeyStatus{}, err
	}
	// A CRL signed by the issuing intermediate, at once (relying parties
	// that check it against the chain of a new certificate).
	if err := km.ca.RefreshCRL(ctx); err != nil && !errors.Is(err, ca.ErrNoCRL) {
		km.log.Error("refreshing the CRL after the intermediate changed", "err", err)
	}
	return km.KeyStatus(ctx)
}

// KeyStatus: server.KeyManager.
func (km *keyManager) KeyStatus(ctx context.Context) (server.KeyStatus, error) {
	ks, err := km.st.KeySet(ctx)
	if err != nil {
		return server.KeyStatus{}, err
	}
	replicas, err := km.st.KeySetReplicas(ctx, time.Now().Add(-keyReplicaTTL))
	if err != nil {
		return server.KeyStatus{}, err
	}
	trusted := km.rootKeys()
	km.mu.Lock()
	defer km.mu.Unlock()
	st := server.KeyStatus{
		Version: ks.Version, UpdatedAt: ks.UpdatedAt, UpdatedBy: ks.UpdatedBy,
		Replica: km.name, Applied: km.applied, Replicas: replicas, TUF: []server.HeldKey{},
	}
	if km.failedErr != nil {
		st.Error = fmt.Sprintf("cannot use key record version %d: %v", km.failed, km.failedErr)
	}
	if st.Replicas == nil {
		st.Replicas = []store.KeySetReplica{}
	}
	refs := km.rec.tufRefs(km.base)
	held := func(role, ref string) {
		h := server.HeldKey{Role: role, Key: redactRef(ref), KeyID: km.loaded[ref].id, TrustedFor: []string{}}
		for _, r := range []string{"root", "targets", "snapshot", "timestamp"} {
			if slices.Contains(trusted[r], h.KeyID) {
				h.TrustedFor = append(h.TrustedFor, r)
			}
		}
		st.TUF = append(st.TUF, h)
	}
	for _, role := range onlineRoles {
		if ref := *roleRef(&refs, role); ref != "" {
			held(role, ref)
		}
	}
	for _, ref := range refs.Extra {
		held("extra", ref)
	}
	inter := km.ca.Intermediate()
	_, keyRef := km.intermediate(km.rec)
	if keyRef == "" {
		keyRef = "keys/intermediate_ca.key"
	}
	st.Intermediate = server.IntermediateInfo{Serial: inter.SerialNumber.Text(16), Subject: inter.Subject.CommonName, NotAfter: inter.NotAfter.UTC(), Key: ca.RedactKeyRef(keyRef)}
	return st, nil
}
