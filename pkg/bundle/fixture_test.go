package bundle_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"go.step.sm/crypto/minica"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/signing"
)

const (
	logOrigin = "foster.test/attestations"
	model     = "edge-gw"
)

// world is a throwaway Foster: a CA (minica), a TUF root and targets
// metadata listing one release per model, and an in-memory RFC 6962 log
// with its note key. Everything is real crypto.
type world struct {
	ca          *minica.CA
	rootKey     ed25519.PrivateKey
	targetsKey  ed25519.PrivateKey
	rootJSON    []byte
	targetsJSON []byte
	fw          attest.Target // the signed release for model
	logSigner   note.Signer
	logVerifier note.Verifier
	tree        *testonly.Tree
}

func newWorld(t testing.TB) *world {
	t.Helper()
	ca, err := minica.New(minica.WithName("Foster Test"))
	if err != nil {
		t.Fatal(err)
	}
	w := &world{ca: ca, tree: testonly.New(rfc6962.DefaultHasher)}
	_, w.rootKey, _ = ed25519.GenerateKey(rand.Reader)
	_, w.targetsKey, _ = ed25519.GenerateKey(rand.Reader)
	w.rootJSON = w.signRoot(t, 1, w.rootKey, w.targetsKey, w.rootKey)

	sum := sha256.Sum256([]byte("firmware 1.0.1"))
	w.fw = attest.Target{Name: model + "/1.0.1/fw.bin", SHA256: hex.EncodeToString(sum[:]), Length: 14, Version: "1.0.1", ReleaseCounter: 1}
	w.targetsJSON = w.signTargets(t, 1, w.targetsKey, map[string]targetSpec{
		w.fw.Name:                 {w.fw, model},
		"other-model/2.0.0/x.bin": {attest.Target{SHA256: hex.EncodeToString(sum[:]), Length: 14, Version: "2.0.0", ReleaseCounter: 1}, "other-model"},
	})

	skey, vkey, err := note.GenerateKey(rand.Reader, logOrigin)
	if err != nil {
		t.Fatal(err)
	}
	w.logSigner, _ = note.NewSigner(skey)
	w.logVerifier, _ = note.NewVerifier(vkey)
	// Some history before our entries.
	for i := range 5 {
		w.tree.AppendData(fmt.Appendf(nil, "earlier entry %d", i))
	}
	return w
}

func signer(t testing.TB, k crypto.PrivateKey) signature.Signer {
	t.Helper()
	s, err := signing.FromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tufKey(t testing.TB, k ed25519.PrivateKey) *metadata.Key {
	t.Helper()
	key, err := metadata.KeyFromPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// signRoot makes root metadata of version v trusting rootKey and
// targetsKey, signed by signers.
func (w *world) signRoot(t testing.TB, v int64, rootKey, targetsKey ed25519.PrivateKey, signers ...ed25519.PrivateKey) []byte {
	t.Helper()
	r := metadata.Root(time.Now().Add(365 * 24 * time.Hour))
	r.Signed.Version = v
	if err := r.Signed.AddKey(tufKey(t, rootKey), metadata.ROOT); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := r.Signed.AddKey(tufKey(t, targetsKey), role); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range signers {
		if _, err := r.Sign(signer(t, k)); err != nil {
			t.Fatal(err)
		}
	}
	b, err := r.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type targetSpec struct {
	t     attest.Target
	model string
}

func (w *world) signTargets(t testing.TB, v int64, key ed25519.PrivateKey, targets map[string]targetSpec) []byte {
	t.Helper()
	return w.signDelegating(t, v, key, nil, targets)
}

// delegation delegates paths (nil: succinct bins of bitLength) to key.
func delegation(t testing.TB, name string, key ed25519.PrivateKey, paths []string, bitLength int) *metadata.Delegations {
	t.Helper()
	k := tufKey(t, key)
	id, err := k.ID()
	if err != nil {
		t.Fatal(err)
	}
	d := &metadata.Delegations{Keys: map[string]*metadata.Key{id: k}}
	if paths != nil {
		d.Roles = []metadata.DelegatedRole{{Name: name, KeyIDs: []string{id}, Threshold: 1, Terminating: true, Paths: paths}}
	} else {
		d.SuccinctRoles = &metadata.SuccinctRoles{KeyIDs: []string{id}, Threshold: 1, BitLength: bitLength, NamePrefix: name}
	}
	return d
}

func (w *world) signDelegating(t testing.TB, v int64, key ed25519.PrivateKey, d *metadata.Delegations, targets map[string]targetSpec) []byte {
	t.Helper()
	m := metadata.Targets(time.Now().Add(365 * 24 * time.Hour))
	m.Signed.Version = v
	m.Signed.Delegations = d
	for path, spec := range targets {
		h, _ := hex.DecodeString(spec.t.SHA256)
		custom, _ := json.Marshal(map[string]any{"model": spec.model, "version": spec.t.Version, "release_counter": spec.t.ReleaseCounter, "hardware_ids": []string{}})
		raw := json.RawMessage(custom)
		m.Signed.Targets[path] = &metadata.TargetFiles{Path: path, Length: spec.t.Length, Hashes: metadata.Hashes{"sha256": h}, Custom: &raw}
	}
	if _, err := m.Sign(signer(t, key)); err != nil {
		t.Fatal(err)
	}
	b, err := m.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// device issues a device certificate chain (leaf, intermediate) for serial.
func (w *world) device(t testing.TB, model, serial string) (*ecdsa.PrivateKey, []*x509.Certificate) {
	t.Helper()
	return w.issue(t, "urn:foster:device:"+model+":"+serial, serial, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour))
}

func (w *world) issue(t testing.TB, urn, cn string, notBefore, notAfter time.Time) (*ecdsa.PrivateKey, []*x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(urn)
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	cert, err := w.ca.Sign(&x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: cn}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notAfter, PublicKey: key.Public(),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		t.Fatal(err)
	}
	return key, []*x509.Certificate{cert, w.ca.Intermediate}
}

func (w *world) install(device string, seq int64) attest.Install {
	return attest.Install{
		Device: device, New: w.fw, TargetsVersion: 1, SnapshotVersion: 1,
		Outcome: attest.OutcomeCommitted, BootCounter: 3, Sequence: seq, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func (w *world) envelope(t testing.TB, key crypto.PrivateKey, in attest.Install) []byte {
	t.Helper()
	env, err := attest.Sign(signer(t, key), in)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// log appends the entry for envelope, then a few more, and returns the
// bundle with a proof against a freshly signed checkpoint.
func (w *world) log(t testing.TB, envelope []byte, chain []*x509.Certificate, at time.Time) *bundle.Bundle {
	t.Helper()
	e := bundle.NewEntry(envelope, chain, at)
	leaf, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	idx := w.tree.Size()
	w.tree.AppendData(leaf)
	w.tree.AppendData([]byte("later entry"))
	return w.prove(t, e, idx)
}

func (w *world) prove(t testing.TB, e bundle.Entry, idx uint64) *bundle.Bundle {
	t.Helper()
	size := w.tree.Size()
	proof, err := w.tree.InclusionProof(idx, size)
	if err != nil {
		t.Fatal(err)
	}
	return &bundle.Bundle{
		MediaType: bundle.MediaType, Envelope: e.Envelope, CertChain: bundle.ChainPEM(e.CertChain), IntegratedTime: e.IntegratedTime,
		Log: bundle.LogProof{LeafIndex: int64(idx), TreeSize: int64(size), InclusionProof: proof, Checkpoint: string(w.checkpoint(t, size, w.tree.Hash()))},
		TUF: bundle.TUFEvidence{Targets: w.targetsJSON},
	}
}

func (w *world) checkpoint(t testing.TB, size uint64, root []byte) []byte {
	t.Helper()
	return signNote(t, w.logSigner, fmt.Sprintf("%s\n%d\n%s\n", logOrigin, size, b64(root)))
}

func signNote(t testing.TB, s note.Signer, text string) []byte {
	t.Helper()
	n, err := note.Sign(&note.Note{Text: text}, s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (w *world) verifier(t testing.TB) *bundle.Verifier {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(w.ca.Root)
	v, err := bundle.NewVerifier(bundle.TrustRoots{CARoots: pool, TUFRoot: w.rootJSON, LogKey: w.logVerifier})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// good returns a valid bundle for a fresh device and its parts.
func (w *world) good(t testing.TB) (*bundle.Bundle, *ecdsa.PrivateKey, []*x509.Certificate) {
	t.Helper()
	key, chain := w.device(t, model, "SN-0001")
	env := w.envelope(t, key, w.install("urn:foster:device:"+model+":SN-0001", 1))
	return w.log(t, env, chain, time.Now()), key, chain
}
