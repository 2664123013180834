// Package clienttest is a throwaway Foster server for the agent's tests: a real
// PKI (minica), real TLS with client certificates, a real signed TUF
// repository (go-tuf metadata) and fault injection for the target and
// attestation endpoints. Test code only: nothing in the agent binary imports
// it (cmd/foster-agent's dependency test checks).
package clienttest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"go.step.sm/crypto/minica"
)

// PKI is a throwaway Foster CA.
type PKI struct {
	CA      *minica.CA
	RootPEM []byte
}

// NewPKI creates a root + intermediate (24 h validity).
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	ca, err := minica.New(minica.WithName("Foster Test"))
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: ca, RootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw})}
}

// ServerCert issues a TLS server certificate for localhost/127.0.0.1.
func (p *PKI) ServerCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	crt, err := p.CA.Sign(&x509.Certificate{
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		PublicKey:   key.Public(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{crt.Raw, p.CA.Intermediate.Raw}, PrivateKey: key, Leaf: crt}
}

// WriteFile writes data to dir/name and returns the path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Repo is a signed TUF repository with consistent snapshots. Not safe for
// concurrent use except through Server (which locks).
type Repo struct {
	keys      map[string]ed25519.PrivateKey
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	delegated *metadata.Metadata[metadata.TargetsType] // nil unless delegating
	delegName string
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	published bool

	// Meta maps served metadata file names (decoded) to bytes.
	Meta map[string][]byte
	// Blobs maps /targets/ paths (consistent snapshot names) to bytes.
	Blobs map[string][]byte
}

// NewRepo creates a repository; when delegateModel is set, targets for that
// model live in a delegated role models/<model> (paths <model>/*/*).
func NewRepo(t testing.TB, delegateModel string) *Repo {
	return NewRepoExpiring(t, delegateModel, time.Now().Add(7*24*time.Hour))
}

// NewRepoExpiring is NewRepo with every role expiring at exp.
func NewRepoExpiring(t testing.TB, delegateModel string, exp time.Time) *Repo {
	t.Helper()
	exp = exp.UTC().Truncate(time.Second)
	r := &Repo{
		keys:      map[string]ed25519.PrivateKey{},
		root:      metadata.Root(exp),
		targets:   metadata.Targets(exp),
		snapshot:  metadata.Snapshot(exp),
		timestamp: metadata.Timestamp(exp),
		Meta:      map[string][]byte{},
		Blobs:     map[string][]byte{},
	}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		r.keys[role] = priv
		k, err := metadata.KeyFromPublicKey(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.root.Signed.AddKey(k, role); err != nil {
			t.Fatal(err)
		}
	}
	if delegateModel != "" {
		r.delegName = "models/" + delegateModel
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		r.keys[r.delegName] = priv
		k, _ := metadata.KeyFromPublicKey(priv.Public())
		id, _ := k.ID()
		r.targets.Signed.Delegations = &metadata.Delegations{
			Keys: map[string]*metadata.Key{id: k},
			Roles: []metadata.DelegatedRole{{
				Name: r.delegName, KeyIDs: []string{id}, Threshold: 1, Terminating: true,
				Paths: []string{delegateModel + "/*/*"},
			}},
		}
		r.delegated = metadata.Targets(exp)
	}
	sign(t, r.root, r.keys[metadata.ROOT])
	b, err := r.root.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	r.Meta["1.root.json"] = b
	r.Publish(t)
	return r
}

func sign[T metadata.Roles](t testing.TB, m *metadata.Metadata[T], key ed25519.PrivateKey) {
	t.Helper()
	s, err := signature.LoadSigner(key, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	m.ClearSignatures()
	if _, err := m.Sign(s); err != nil {
		t.Fatal(err)
	}
}

// RootJSON is the trusted root a device is provisioned with.
func (r *Repo) RootJSON() []byte { return r.Meta["1.root.json"] }

// Custom is Foster's target custom metadata.
type Custom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
	MinFromVersion string   `json:"min_from_version,omitempty"`
}

// AddTarget adds data as target name (<model>/<version>/<file>) with custom
// metadata, without publishing. The signed length and hashes come from data.
func (r *Repo) AddTarget(t testing.TB, name string, data []byte, c Custom) *metadata.TargetFiles {
	t.Helper()
	tf, err := metadata.TargetFile().FromBytes(name, data, "sha256", "sha512")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(c)
	rm := json.RawMessage(raw)
	tf.Custom = &rm
	role := r.targets
	if r.delegated != nil && path.Dir(path.Dir(name)) == c.Model {
		role = r.delegated
	}
	role.Signed.Targets[name] = tf
	sum := sha256.Sum256(data)
	dir, base := path.Split(name)
	r.Blobs[dir+hex.EncodeToString(sum[:])+"."+base] = data
	return tf
}

// SetExpiry sets the expiry of targets, snapshot and timestamp (and the
// delegated role) for the next Publish.
func (r *Repo) SetExpiry(exp time.Time) {
	exp = exp.UTC().Truncate(time.Second)
	r.targets.Signed.Expires, r.snapshot.Signed.Expires, r.timestamp.Signed.Expires = exp, exp, exp
	if r.delegated != nil {
		r.delegated.Signed.Expires = exp
	}
}

// Timestamp returns the current signed timestamp metadata.
func (r *Repo) Timestamp() *metadata.Metadata[metadata.TimestampType] { return r.timestamp }

// RotateRoot publishes the next root version (same keys, new expiry),
// signed by the current root key: a device offline across many rotations
// walks the chain on its next refresh.
func (r *Repo) RotateRoot(t testing.TB, exp time.Time) {
	t.Helper()
	r.root.Signed.Version++
	r.root.Signed.Expires = exp.UTC().Truncate(time.Second)
	sign(t, r.root, r.keys[metadata.ROOT])
	b, err := r.root.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	r.Meta[fmt.Sprintf("%d.root.json", r.root.Signed.Version)] = b
}

// SignTimestampWith re-signs the current timestamp with a key the root does
// not trust (arbitrary-software attacks on metadata).
func (r *Repo) SignTimestampWith(t testing.TB, key ed25519.PrivateKey) {
	t.Helper()
	sign(t, r.timestamp, key)
	b, err := r.timestamp.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	r.Meta["timestamp.json"] = b
}

// Handler serves the repository without authentication, as a plain TUF
// repository: /metadata/<file> and /targets/<path>. Requests are appended to
// log (if not nil) as "metadata/<file>" or "targets/<path>".
func (r *Repo) Handler(mu *sync.Mutex, log *[]string) http.Handler {
	mux := http.NewServeMux()
	serve := func(kind string, get func(string) ([]byte, bool)) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			name := req.PathValue("file")
			mu.Lock()
			if log != nil {
				*log = append(*log, kind+"/"+name)
			}
			b, ok := get(name)
			mu.Unlock()
			if !ok {
				http.NotFound(w, req)
				return
			}
			http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(b))
		}
	}
	mux.HandleFunc("GET /metadata/{file...}", serve("metadata", func(n string) ([]byte, bool) { b, ok := r.Meta[n]; return b, ok }))
	mux.HandleFunc("GET /targets/{file...}", serve("targets", func(n string) ([]byte, bool) { b, ok := r.Blobs[n]; return b, ok }))
	return mux
}

// Publish re-signs targets, snapshot and timestamp with bumped versions.
func (r *Repo) Publish(t testing.TB) {
	t.Helper()
	if r.published {
		r.targets.Signed.Version++
		r.snapshot.Signed.Version++
		r.timestamp.Signed.Version++
		if r.delegated != nil {
			r.delegated.Signed.Version++
		}
	}
	r.published = true
	put := func(name string, b []byte, err error) {
		if err != nil {
			t.Fatal(err)
		}
		r.Meta[name] = b
	}
	if r.delegated != nil {
		sign(t, r.delegated, r.keys[r.delegName])
		b, err := r.delegated.ToBytes(false)
		put(fmt.Sprintf("%d.%s.json", r.delegated.Signed.Version, r.delegName), b, err)
		r.snapshot.Signed.Meta[r.delegName+".json"] = metadata.MetaFile(r.delegated.Signed.Version)
	}
	sign(t, r.targets, r.keys[metadata.TARGETS])
	b, err := r.targets.ToBytes(false)
	put(fmt.Sprintf("%d.targets.json", r.targets.Signed.Version), b, err)
	r.snapshot.Signed.Meta["targets.json"] = metadata.MetaFile(r.targets.Signed.Version)
	sign(t, r.snapshot, r.keys[metadata.SNAPSHOT])
	b, err = r.snapshot.ToBytes(false)
	put(fmt.Sprintf("%d.snapshot.json", r.snapshot.Signed.Version), b, err)
	r.timestamp.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snapshot.Signed.Version)
	sign(t, r.timestamp, r.keys[metadata.TIMESTAMP])
	b, err = r.timestamp.ToBytes(false)
	put("timestamp.json", b, err)
}

// Versions returns the current targets and snapshot versions.
func (r *Repo) Versions() (targets, snapshot int64) {
	return r.targets.Signed.Version, r.snapshot.Signed.Version
}

// EnrollRequest is what a device sent to /v1/enroll.
type EnrollRequest struct {
	Token, Serial, Model string
	CSR                  *x509.CertificateRequest
}

type token struct {
	serial, model string
	used          bool
}

// Received is an attestation the server accepted.
type Received struct {
	Envelope []byte
	Install  *attest.Install
}

// Server is a fake fosterd over real mTLS.
type Server struct {
	URL  string
	PKI  *PKI
	Repo *Repo
	srv  *httptest.Server

	mu           sync.Mutex
	tokens       map[string]*token
	Enrolls      []EnrollRequest
	Attestations []Received
	// Resends counts attestations re-sent with identical bytes (accepted
	// idempotently, as fosterd does, and not appended again).
	Resends int
	// TargetHook, when set, serves /targets/ instead of the repository
	// (fault injection). body is what the repository would have served;
	// ServeRange serves it honouring Range.
	TargetHook func(w http.ResponseWriter, r *http.Request, body []byte)
	// MetaHook, when set, may serve /tuf/ instead of the repository (return
	// true when it did). body is nil for files the repository lacks.
	MetaHook func(w http.ResponseWriter, r *http.Request, file string, body []byte) bool
	// AttestationHook, when set, handles /v1/attestations (fault injection).
	AttestationHook func(w http.ResponseWriter, r *http.Request) bool
	TargetRequests  []string
	// TargetRanges holds the Range header of each target request ("" for none).
	TargetRanges []string
	MetaRequests []string
	// Renewals and ExpiredRenewals count POST /v1/renew and /v1/renew-expired.
	Renewals, ExpiredRenewals int
	lastSeq                   map[string]int64
	// conns counts open client connections (OpenConnections).
	conns atomic.Int64
}

// NewServer starts a server with a fresh PKI and repository.
func NewServer(t testing.TB, repo *Repo) *Server {
	t.Helper()
	s := &Server{PKI: NewPKI(t), Repo: repo, tokens: map[string]*token{}, lastSeq: map[string]int64{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/enroll", s.enroll)
	mux.HandleFunc("GET /tuf/{file...}", s.device(s.tuf))
	mux.HandleFunc("GET /targets/{path...}", s.device(s.target))
	mux.HandleFunc("POST /v1/attestations", s.device(s.attestation))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok"}`)
	})
	mux.HandleFunc("POST /v1/renew", s.device(s.renew))
	mux.HandleFunc("POST /v1/renew-expired", func(w http.ResponseWriter, r *http.Request) {
		s.Lock(func() { s.ExpiredRenewals++ })
		apierr.Write(w, apierr.New(403, apierr.CodeForbidden, "renewal after expiry is not offered by the test server"))
	})
	s.srv = httptest.NewUnstartedServer(mux)
	s.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			s.conns.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.conns.Add(-1)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.PKI.CA.Root)
	s.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{s.PKI.ServerCert(t)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL
	return s
}

// OpenConnections is how many client connections are open now, idle
// keep-alive ones included.
func (s *Server) OpenConnections() int { return int(s.conns.Load()) }

// Lock runs f with the server's lock held (to mutate the repo or hooks).
func (s *Server) Lock(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

// AddToken registers a one-time enrollment token.
func (s *Server) AddToken(tok, serial, model string) {
	s.Lock(func() { s.tokens[tok] = &token{serial: serial, model: model} })
}

// Received returns the accepted attestations.
func (s *Server) Received() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.Attestations...)
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	var req struct{ Token, Serial, Model, CSR string }
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "malformed request: %v", err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	blk, _ := pem.Decode([]byte(req.CSR))
	if blk == nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "csr is not PEM"))
		return
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "bad csr"))
		return
	}
	s.Enrolls = append(s.Enrolls, EnrollRequest{Token: req.Token, Serial: req.Serial, Model: req.Model, CSR: csr})
	tok, ok := s.tokens[req.Token]
	switch {
	case !ok:
		apierr.Write(w, apierr.New(401, apierr.CodeTokenInvalid, "unknown enrollment token"))
		return
	case tok.used:
		apierr.Write(w, apierr.New(409, apierr.CodeTokenUsed, "enrollment token already used"))
		return
	case tok.serial != req.Serial || tok.model != req.Model:
		apierr.Write(w, apierr.New(403, apierr.CodeTokenInvalid, "token is bound to another device"))
		return
	}
	p, err := identity.FromCertificate(&x509.Certificate{URIs: csr.URIs})
	if err != nil || p != identity.Device(req.Model, req.Serial) || csr.Subject.CommonName != req.Serial {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "csr identity does not match"))
		return
	}
	tok.used = true
	crt, err := s.PKI.CA.SignCSR(csr)
	if err != nil {
		apierr.Write(w, err)
		return
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crt.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.PKI.CA.Intermediate.Raw})...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]string{"device_id": "dev-" + req.Serial, "certificate": string(chain)})
}

// renew re-issues the presented device certificate for the CSR's key.
func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	var req struct{ CSR string }
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "malformed request: %v", err))
		return
	}
	blk, _ := pem.Decode([]byte(req.CSR))
	if blk == nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "csr is not PEM"))
		return
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "bad csr"))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Renewals++
	crt, err := s.PKI.CA.SignCSR(csr)
	if err != nil {
		apierr.Write(w, err)
		return
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crt.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.PKI.CA.Intermediate.Raw})...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]string{"device_id": r.TLS.PeerCertificates[0].URIs[0].String(), "certificate": string(chain)})
}

// device requires a verified device client certificate.
func (s *Server) device(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			apierr.Write(w, apierr.New(401, apierr.CodeUnauthorized, "client certificate required"))
			return
		}
		if p, err := identity.FromCertificate(r.TLS.PeerCertificates[0]); err != nil || p.Role != identity.RoleDevice {
			apierr.Write(w, apierr.New(403, apierr.CodeForbidden, "not a device"))
			return
		}
		h(w, r)
	}
}

func (s *Server) tuf(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	file := r.PathValue("file")
	s.MetaRequests = append(s.MetaRequests, file)
	b, ok := s.Repo.Meta[file]
	hook := s.MetaHook
	s.mu.Unlock()
	if hook != nil && hook(w, r, file, b) {
		return
	}
	if !ok {
		apierr.Write(w, apierr.New(404, apierr.CodeNotFound, "no such metadata"))
		return
	}
	w.Write(b)
}

func (s *Server) target(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	p := r.PathValue("path")
	s.TargetRequests = append(s.TargetRequests, p)
	s.TargetRanges = append(s.TargetRanges, r.Header.Get("Range"))
	b, ok := s.Repo.Blobs[p]
	hook := s.TargetHook
	s.mu.Unlock()
	if !ok {
		apierr.Write(w, apierr.New(404, apierr.CodeNotFound, "no such target"))
		return
	}
	if hook != nil {
		hook(w, r, b)
		return
	}
	ServeRange(w, r, b)
}

// ServeRange serves body honouring Range, as fosterd does.
func ServeRange(w http.ResponseWriter, r *http.Request, body []byte) {
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

func (s *Server) attestation(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	hook := s.AttestationHook
	s.mu.Unlock()
	if hook != nil && hook(w, r) {
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "want application/json"))
		return
	}
	env, err := io.ReadAll(io.LimitReader(r.Body, attest.MaxEnvelopeSize+1))
	if err != nil || len(env) > attest.MaxEnvelopeSize {
		apierr.Write(w, apierr.New(413, apierr.CodeTooLarge, "envelope too large"))
		return
	}
	leaf := r.TLS.PeerCertificates[0]
	in, err := attest.Verify(env, leaf.PublicKey)
	if err != nil {
		apierr.Write(w, apierr.New(400, apierr.CodeBadRequest, "%v", err))
		return
	}
	p, _ := identity.FromCertificate(leaf)
	if in.Device != p.URI() {
		apierr.Write(w, apierr.New(403, apierr.CodeForbidden, "attestation is for another device"))
		return
	}
	// Replay rules of fosterd: sequence numbers only go up; re-sending the
	// identical envelope (an answer lost on the way back) is accepted again.
	s.mu.Lock()
	status, id := http.StatusCreated, 0
	if in.Sequence <= s.lastSeq[in.Device] {
		for i, prev := range s.Attestations {
			if prev.Install.Device == in.Device && prev.Install.Sequence == in.Sequence && bytes.Equal(prev.Envelope, env) {
				status, id = http.StatusOK, i+1
			}
		}
		if status != http.StatusOK {
			s.mu.Unlock()
			apierr.Write(w, apierr.New(409, "replay", "sequence %d is not above %d", in.Sequence, s.lastSeq[in.Device]))
			return
		}
		s.Resends++
	} else {
		s.lastSeq[in.Device] = in.Sequence
		s.Attestations = append(s.Attestations, Received{Envelope: env, Install: in})
		id = len(s.Attestations)
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"id": fmt.Sprint(id), "device_id": "dev-" + p.Serial()})
}

// DropConnection is an AttestationHook/TargetHook helper simulating a
// network failure: the connection is closed without a response.
func DropConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("response writer cannot hijack")
	}
	c, _, err := hj.Hijack()
	if err == nil {
		c.Close()
	}
}

// BundleMeta returns the repository's metadata as an offline bundle
// carries it (pkg/offline): the current timestamp and snapshot re-signed
// with the same versions, expiring at exp, the timestamp marked with
// signedAt under signedAtField (pkg/offline.SignedAtField; the agent must
// not depend on this package for it).
func (r *Repo) BundleMeta(t testing.TB, exp, signedAt time.Time, signedAtField string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte, len(r.Meta))
	for k, v := range r.Meta {
		out[k] = v
	}
	sn, err := metadata.Snapshot().FromBytes(r.Meta[fmt.Sprintf("%d.snapshot.json", r.snapshot.Signed.Version)])
	if err != nil {
		t.Fatal(err)
	}
	sn.Signed.Expires = exp.UTC().Truncate(time.Second)
	sign(t, sn, r.keys[metadata.SNAPSHOT])
	b, err := sn.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	out[fmt.Sprintf("%d.snapshot.json", sn.Signed.Version)] = b
	ts, err := metadata.Timestamp().FromBytes(r.Meta["timestamp.json"])
	if err != nil {
		t.Fatal(err)
	}
	ts.Signed.Expires = exp.UTC().Truncate(time.Second)
	if ts.Signed.UnrecognizedFields == nil {
		ts.Signed.UnrecognizedFields = map[string]any{}
	}
	ts.Signed.UnrecognizedFields[signedAtField] = signedAt.UTC().Truncate(time.Second).Format(time.RFC3339)
	sign(t, ts, r.keys[metadata.TIMESTAMP])
	if out["timestamp.json"], err = ts.ToBytes(false); err != nil {
		t.Fatal(err)
	}
	return out
}
