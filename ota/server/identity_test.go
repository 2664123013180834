package server_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// fixtureOpts build instances whose PKI was created in the past (to hold
// certificates that expired years ago) or with identity settings.
type fixtureOpts struct {
	pkiCreated time.Time
	identity   instance.IdentityConfig
	// prepare runs on the initialised data directory before fosterd opens it.
	prepare func(t *testing.T, dir string, cfg *instance.Config)
}

func newFixtureWith(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if !o.pkiCreated.IsZero() {
		if err := ca.InitPKI(dir, ca.InitOptions{Now: func() time.Time { return o.pkiCreated }}); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := instance.Init(ctx, dir, instance.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Identity = o.identity
	if o.prepare != nil {
		o.prepare(t, dir, cfg)
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(instance.PathsOf(dir).Config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f := serveInstance(t, dir, instance.Overrides{})
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "other"}, 201)
	return f
}

// cred is a certificate chain, its key and an mTLS client presenting them.
type cred struct {
	chain  []*x509.Certificate
	key    crypto.Signer
	client *http.Client
}

func (f *fixture) credFromPEM(chainPEM, keyPEM string) cred {
	f.t.Helper()
	pair, err := tls.X509KeyPair([]byte(chainPEM), []byte(keyPEM))
	if err != nil {
		f.t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, _ := x509.ParseCertificate(der)
		chain = append(chain, c)
	}
	return cred{chain: chain, key: pair.PrivateKey.(crypto.Signer), client: f.client(&pair)}
}

type stationSpec struct {
	name     string
	quota    int64
	validFor time.Duration
	models   []string
	pattern  string
}

func (f *fixture) station(s stationSpec) cred {
	f.t.Helper()
	if s.quota == 0 {
		s.quota = 100
	}
	if s.models == nil {
		s.models = []string{"edge-gw"}
	}
	var out struct{ Certificate, Key string }
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/stations", map[string]any{
		"name": s.name, "quota": s.quota, "valid_for_seconds": int64(s.validFor.Seconds()), "models": s.models, "serial_pattern": s.pattern,
	}, 201), &out)
	return f.credFromPEM(out.Certificate, out.Key)
}

func stationToken(t *testing.T, st cred, serial, model string, mut ...func(*x5ctoken.Claims)) string {
	t.Helper()
	p, err := identity.FromCertificate(st.chain[0])
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cl := x5ctoken.Claims{Issuer: p.URI(), Subject: identity.Device(model, serial).URI(), Audience: x5ctoken.EnrollAudience, IssuedAt: now, Expiry: now.Add(24 * time.Hour)}
	for _, m := range mut {
		m(&cl)
	}
	tok, err := x5ctoken.Sign(st.chain, st.key, cl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func enrollBody(tok, serial, model, csr string) string {
	return js(map[string]string{"token": tok, "serial": serial, "model": model, "csr": csr})
}

func csrWith(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// issuedState is what a refused request must leave untouched.
type issuedState struct {
	devices, certs int
	used           map[string]int64
}

func (f *fixture) issuedState() issuedState {
	ctx := context.Background()
	ds, _ := f.in.Store.ListDevices(ctx)
	cs, _ := f.in.Store.ListCertificates(ctx, "")
	sts, _ := f.in.Store.ListStations(ctx)
	st := issuedState{devices: len(ds), certs: len(cs), used: map[string]int64{}}
	for _, s := range sts {
		st.used[s.Name] = s.Used
	}
	return st
}

func (a issuedState) equal(b issuedState) bool {
	if a.devices != b.devices || a.certs != b.certs || len(a.used) != len(b.used) {
		return false
	}
	for k, v := range a.used {
		if b.used[k] != v {
			return false
		}
	}
	return true
}

// TestStationEnrollmentRefusesBadInputAndIssuesNothing is the issue's list
// of bad enrollments, each a clear 4xx JSON error that issues nothing.
func TestStationEnrollmentRefusesBadInputAndIssuesNothing(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	line1 := f.station(stationSpec{name: "line-1", pattern: `^SN-[0-9]{4,12}$`})
	full := f.station(stationSpec{name: "full", quota: 1})
	gone := f.station(stationSpec{name: "gone"})
	f.mustJSON(f.admin, "POST", "/v1/stations/gone/revoke", map[string]string{"reason": "keyCompromise"}, 200)
	// A station whose certificate expired: issued by this CA a week ago for a day.
	expiredStation := f.expiredStation("old")

	key := newKey(t)
	good := csrPEM(t, key, "SN-0001")
	// Spend full's quota and a token of line-1.
	f.mustJSON(f.anon, "POST", "/v1/enroll", json.RawMessage(enrollBody(stationToken(t, full, "SN-0100", "edge-gw"), "SN-0100", "edge-gw", csrPEM(t, newKey(t), "SN-0100"))), 201)
	used := stationToken(t, line1, "SN-0200", "edge-gw")
	f.mustJSON(f.anon, "POST", "/v1/enroll", json.RawMessage(enrollBody(used, "SN-0200", "edge-gw", csrPEM(t, newKey(t), "SN-0200"))), 201)

	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	otherURN, _ := url.Parse(identity.Device("edge-gw", "SN-0002").URI())
	tok := stationToken(t, line1, "SN-0001", "edge-gw")
	dev := f.deviceCred("SN-0300")

	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"malformed CSR", enrollBody(tok, "SN-0001", "edge-gw", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 400, "bad_request", "certificate request"},
		{"CSR subject disagrees with the token", enrollBody(tok, "SN-0001", "edge-gw", csrPEM(t, key, "SN-0002")), 400, "bad_request", "identity mismatch"},
		{"CSR SAN disagrees with the token", enrollBody(tok, "SN-0001", "edge-gw", csrWith(t, key, &x509.CertificateRequest{URIs: []*url.URL{otherURN}})), 400, "bad_request", "identity mismatch"},
		{"CSR asks for a DNS name", enrollBody(tok, "SN-0001", "edge-gw", csrWith(t, key, &x509.CertificateRequest{DNSNames: []string{"fosterd.example"}})), 400, "bad_request", "identity mismatch"},
		{"weak key RSA-1024", enrollBody(tok, "SN-0001", "edge-gw", csrWith(t, rsa1024, &x509.CertificateRequest{})), 400, "bad_request", "key not allowed"},
		{"unsupported curve P-224", enrollBody(tok, "SN-0001", "edge-gw", csrWith(t, p224, &x509.CertificateRequest{})), 400, "bad_request", ""},
		{"reused token", enrollBody(used, "SN-0200", "edge-gw", csrPEM(t, newKey(t), "SN-0200")), 409, "token_used", "already used"},
		{"token for another serial", enrollBody(tok, "SN-0002", "edge-gw", csrPEM(t, key, "SN-0002")), 403, "token_invalid", "bound to another device"},
		{"token for another model", enrollBody(tok, "SN-0001", "other", good), 403, "token_invalid", "bound to another device"},
		{"expired token", enrollBody(stationToken(t, line1, "SN-0001", "edge-gw", func(c *x5ctoken.Claims) {
			c.IssuedAt, c.Expiry = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}), "SN-0001", "edge-gw", good), 401, "token_invalid", "expired"},
		{"token with a long lifetime", enrollBody(stationToken(t, line1, "SN-0001", "edge-gw", func(c *x5ctoken.Claims) { c.Expiry = time.Now().Add(400 * 24 * time.Hour) }), "SN-0001", "edge-gw", good), 401, "token_invalid", "lifetime"},
		{"token for renewal, not enrollment", enrollBody(stationToken(t, line1, "SN-0001", "edge-gw", func(c *x5ctoken.Claims) { c.Audience = x5ctoken.RenewAudience }), "SN-0001", "edge-gw", good), 401, "token_invalid", "audience"},
		{"token from a revoked station", enrollBody(stationToken(t, gone, "SN-0001", "edge-gw"), "SN-0001", "edge-gw", good), 403, "revoked", "revoked"},
		{"token from an expired station", enrollBody(stationToken(t, expiredStation, "SN-0001", "edge-gw", func(c *x5ctoken.Claims) {
			c.IssuedAt, c.Expiry = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		}), "SN-0001", "edge-gw", good), 401, "token_invalid", "expired"},
		{"token minted by a device", enrollBody(stationToken(t, dev, "SN-0001", "edge-gw"), "SN-0001", "edge-gw", good), 401, "token_invalid", "not a factory station"},
		{"station over quota", enrollBody(stationToken(t, full, "SN-0001", "edge-gw"), "SN-0001", "edge-gw", good), 403, "station_refused", "quota"},
		{"model not allowed", enrollBody(stationToken(t, line1, "SN-0001", "other"), "SN-0001", "other", good), 403, "station_refused", "model"},
		{"serial off the station's pattern", enrollBody(stationToken(t, line1, "XX-0001", "edge-gw"), "XX-0001", "edge-gw", csrPEM(t, key, "XX-0001")), 403, "station_refused", "pattern"},
		{"oversized body", `{"token":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "too_large", ""},
		{"tampered token", enrollBody(tok[:len(tok)-4]+"AAAA", "SN-0001", "edge-gw", good), 401, "token_invalid", ""},
	}
	before := f.issuedState()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.anon, "POST", "/v1/enroll", []byte(tt.body))
			if r.status != tt.wantStatus || r.code() != tt.wantCode || !strings.Contains(string(r.body), tt.wantMsg) {
				t.Fatalf("got %d %s, want %d %s mentioning %q", r.status, r.body, tt.wantStatus, tt.wantCode, tt.wantMsg)
			}
			if after := f.issuedState(); !after.equal(before) {
				t.Fatalf("refused enrollment changed the store: %+v -> %+v", before, after)
			}
		})
	}
	// None of the refusals spent the token or quota: it still enrolls.
	f.mustJSON(f.anon, "POST", "/v1/enroll", json.RawMessage(enrollBody(tok, "SN-0001", "edge-gw", good)), 201)
	st, _ := f.in.Store.GetStation(context.Background(), "line-1")
	if st.Used != 2 || st.Remaining() != 98 {
		t.Fatalf("line-1 quota: %+v", st)
	}
}

// TestStationWindowIsEnforcedServerSide: a station valid for 30 days is
// refused on day 31 by the store's own clock, even if its certificate were
// still accepted.
func TestStationWindowIsEnforcedServerSide(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	st := f.station(stationSpec{name: "line-1", validFor: 30 * 24 * time.Hour})
	tok := stationToken(t, st, "SN-1", "edge-gw")
	f.in.Store.SetClock(func() time.Time { return time.Now().Add(31 * 24 * time.Hour) })
	r := f.do(f.anon, "POST", "/v1/enroll", []byte(enrollBody(tok, "SN-1", "edge-gw", csrPEM(t, newKey(t), "SN-1"))))
	if r.status != 403 || r.code() != "station_refused" || f.deviceCount() != 0 {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

// expiredStation registers a station whose certificate expired days ago.
func (f *fixture) expiredStation(name string) cred {
	f.t.Helper()
	then, err := ca.Open(f.in.Dir, ca.Options{Now: func() time.Time { return time.Now().Add(-3 * time.Minute) }})
	if err != nil {
		f.t.Fatal(err)
	}
	p := identity.Principal{Role: identity.RoleStation, Name: name}
	chainPEM, keyPEM, err := then.IssueClient(context.Background(), p, ca.WithValidity(time.Minute))
	if err != nil {
		f.t.Fatal(err)
	}
	c := f.credFromPEM(string(chainPEM), string(keyPEM))
	leaf := c.chain[0]
	if _, err := f.in.Store.CreateStation(context.Background(), store.Station{Name: name, Quota: 10, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Models: []string{"edge-gw"}},
		store.Certificate{Serial: leaf.SerialNumber.Text(16), Subject: p.URI(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IssuedVia: "admin"}); err != nil {
		f.t.Fatal(err)
	}
	return c
}

// deviceCred enrolls serial with an admin token and returns its credential.
func (f *fixture) deviceCred(serial string) cred {
	f.t.Helper()
	key := newKey(f.t)
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", map[string]string{"token": f.token(serial, "edge-gw"), "serial": serial, "model": "edge-gw", "csr": csrPEM(f.t, key, serial)}, 201), &out)
	return f.withKey(out.Certificate, key)
}

func (f *fixture) withKey(chainPEM string, key crypto.Signer) cred {
	f.t.Helper()
	var pair tls.Certificate
	var chain []*x509.Certificate
	for rest := []byte(chainPEM); ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			f.t.Fatal(err)
		}
		pair.Certificate = append(pair.Certificate, b.Bytes)
		chain = append(chain, c)
	}
	pair.PrivateKey = key
	return cred{chain: chain, key: key, client: f.client(&pair)}
}

func TestStationSubmitsCSRItselfOverMTLS(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	st := f.station(stationSpec{name: "line-1", quota: 2, pattern: `^SN-[0-9]{4}$`})
	body := func(serial, model string) map[string]string {
		return map[string]string{"serial": serial, "model": model, "csr": csrPEM(t, newKey(t), serial)}
	}
	var out struct {
		DeviceID    string `json:"device_id"`
		Certificate string
	}
	json.Unmarshal(f.mustJSON(st.client, "POST", "/v1/station/enroll", body("SN-0001", "edge-gw"), 201), &out)
	if out.DeviceID != "urn:foster:device:edge-gw:SN-0001" || !strings.Contains(out.Certificate, "BEGIN CERTIFICATE") {
		t.Fatalf("%+v", out)
	}
	before := f.issuedState()
	for _, tt := range []struct {
		name   string
		client *http.Client
		body   map[string]string
		status int
		code   string
	}{
		{"serial off pattern", st.client, body("SN-1", "edge-gw"), 403, "station_refused"},
		{"model not allowed", st.client, body("SN-0002", "other"), 403, "station_refused"},
		{"admin is not a station", f.admin, body("SN-0002", "edge-gw"), 403, "forbidden"},
		{"no client certificate", f.anon, body("SN-0002", "edge-gw"), 401, "unauthorized"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := json.Marshal(tt.body)
			r := f.do(tt.client, "POST", "/v1/station/enroll", b)
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s", r.status, r.body)
			}
			if !f.issuedState().equal(before) {
				t.Fatal("refused station enrollment changed the store")
			}
		})
	}
	f.mustJSON(st.client, "POST", "/v1/station/enroll", body("SN-0002", "edge-gw"), 201)
	r := f.do(st.client, "POST", "/v1/station/enroll", []byte(js(body("SN-0003", "edge-gw"))))
	if r.status != 403 || !strings.Contains(string(r.body), "quota") {
		t.Fatalf("over quota: %d %s", r.status, r.body)
	}
	// Revocation stops the station at the TLS edge at once.
	f.mustJSON(f.admin, "POST", "/v1/stations/line-1/revoke", map[string]string{}, 200)
	r = f.do(st.client, "POST", "/v1/station/enroll", []byte(js(body("SN-0004", "edge-gw"))))
	if r.status != 403 || r.code() != "revoked" {
		t.Fatalf("revoked station: %d %s", r.status, r.body)
	}
	var sts []store.Station
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/stations", nil, 200), &sts)
	if len(sts) != 1 || sts[0].Used != 2 || sts[0].Status != "revoked" {
		t.Fatalf("%+v", sts)
	}
}

func TestCloneIsRefusedRecordedAndReprovisionable(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	orig := f.deviceCred("SN-1")
	cloneKey := newKey(t)
	r := f.do(f.anon, "POST", "/v1/enroll", []byte(enrollBody(f.token("SN-1", "edge-gw"), "SN-1", "edge-gw", csrPEM(t, cloneKey, "SN-1"))))
	if r.status != 409 || r.code() != "clone" {
		t.Fatalf("clone: %d %s", r.status, r.body)
	}
	var d struct {
		store.Device
		Refusals     []store.Refusal
		Certificates []store.Certificate
	}
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/devices/SN-1", nil, 200), &d)
	if len(d.Refusals) != 1 || d.Refusals[0].KeySHA256 != ca.PublicKeySHA256(cloneKey.Public()) || len(d.Certificates) != 1 {
		t.Fatalf("device show: %+v", d)
	}
	// The original device is unaffected.
	if r := f.do(orig.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("original after a clone attempt: %d", r.status)
	}
	// An auditor may not allow re-provisioning: refused, nothing changes.
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "eve"})
	if r := f.do(auditor, "POST", "/v1/devices/SN-1/reprovision", []byte(`{}`)); r.status != 403 || !strings.Contains(string(r.body), "auditor may not") {
		t.Fatalf("auditor's reprovision: %d %s", r.status, r.body)
	}
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/devices/SN-1", nil, 200), &d)
	if !d.ReprovisionAllowedAt.IsZero() {
		t.Fatalf("an auditor allowed re-provisioning: %+v", d.Device)
	}
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-1/reprovision", map[string]string{}, 200)
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", json.RawMessage(enrollBody(f.token("SN-1", "edge-gw"), "SN-1", "edge-gw", csrPEM(t, cloneKey, "SN-1"))), 201), &out)
	replacement := f.withKey(out.Certificate, cloneKey)
	// The superseded certificate stops working; the new one works.
	if r := f.do(orig.client, "GET", "/tuf/timestamp.json", nil); r.status != 403 || r.code() != "revoked" {
		t.Fatalf("superseded certificate: %d %s", r.status, r.body)
	}
	if r := f.do(replacement.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("re-provisioned device: %d %s", r.status, r.body)
	}
	assertAudited(t, f, "device.reprovision", "device.refused")
}

func TestRenewalOverMTLS(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	dev := f.deviceCred("SN-1")
	// Same key.
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(dev.client, "POST", "/v1/renew", map[string]string{"csr": csrPEM(t, dev.key.(*ecdsa.PrivateKey), "SN-1")}, 201), &out)
	same := f.withKey(out.Certificate, dev.key)
	if same.chain[0].SerialNumber.Cmp(dev.chain[0].SerialNumber) == 0 || !same.chain[0].NotAfter.After(dev.chain[0].NotAfter.Add(-time.Second)) {
		t.Fatal("renewal did not issue a fresh certificate")
	}
	if r := f.do(same.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("renewed certificate: %d", r.status)
	}
	got, _ := f.in.Store.GetDevice(context.Background(), "urn:foster:device:edge-gw:SN-1")
	if got.KeySHA256 != ca.PublicKeySHA256(dev.key.Public()) || got.CertSerial != same.chain[0].SerialNumber.Text(16) {
		t.Fatalf("store after renewal: %+v", got)
	}
	rekeyed, newK := same, dev.key.(*ecdsa.PrivateKey)
	before := f.issuedState()
	for _, tt := range []struct {
		name   string
		client *http.Client
		body   string
		status int
		code   string
	}{
		{"CSR for another device", rekeyed.client, js(map[string]string{"csr": csrPEM(t, newK, "SN-2")}), 400, "bad_request"},
		{"no CSR", rekeyed.client, `{}`, 400, "bad_request"},
		{"admin renews", f.admin, js(map[string]string{"csr": csrPEM(t, newK, "SN-1")}), 403, "forbidden"},
		{"CSR for a new key", rekeyed.client, js(map[string]string{"csr": csrPEM(t, newKey(t), "SN-1")}), 409, "key_mismatch"},
		{"certificate the renewal replaced, after the new one was used", dev.client, js(map[string]string{"csr": csrPEM(t, newK, "SN-1")}), 403, "revoked"},
		{"oversized", rekeyed.client, `{"csr":"` + strings.Repeat("a", 40<<10) + `"}`, 413, "too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(tt.client, "POST", "/v1/renew", []byte(tt.body))
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s", r.status, r.body)
			}
			if !f.issuedState().equal(before) {
				t.Fatal("refused renewal issued something")
			}
		})
	}
	// Revocation: immediate on every mTLS endpoint, and in the CRL.
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-1/revoke", map[string]string{"reason": "keyCompromise"}, 200)
	for _, c := range []cred{dev, same} {
		for _, ep := range []struct{ method, path, body string }{
			{"POST", "/v1/renew", js(map[string]string{"csr": csrPEM(t, c.key.(*ecdsa.PrivateKey), "SN-1")})},
			{"GET", "/tuf/timestamp.json", ""},
			{"POST", "/v1/attestations", "{}"},
		} {
			if r := f.do(c.client, ep.method, ep.path, []byte(ep.body)); r.status != 403 || r.code() != "revoked" {
				t.Fatalf("revoked device %s %s: %d %s", ep.method, ep.path, r.status, r.body)
			}
		}
	}
	crl := f.crl()
	if !crlLists(crl, same.chain[0], 1) || !crlLists(crl, dev.chain[0], 4) {
		t.Fatalf("CRL does not list the current certificate as keyCompromise and the replaced one as superseded: %+v", crl.RevokedCertificateEntries)
	}
	if r := f.do(f.admin, "POST", "/v1/devices/SN-1/revoke", []byte(`{"reason":"keyCompromise"}`)); r.status != 409 {
		t.Fatalf("second revoke: %d %s", r.status, r.body)
	}
	if r := f.do(f.admin, "POST", "/v1/devices/SN-2/revoke", []byte(`{"reason":"bogus"}`)); r.status != 400 {
		t.Fatalf("bad reason: %d %s", r.status, r.body)
	}
	assertAudited(t, f, "device.revoke")
}

func (f *fixture) crl() *x509.RevocationList {
	f.t.Helper()
	resp, err := f.anon.Get(f.srv.URL + "/crl")
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/pkix-crl" {
		f.t.Fatalf("GET /crl: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(f.in.CA.Intermediate()); err != nil {
		f.t.Fatalf("CRL signature: %v", err)
	}
	return crl
}

func crlLists(crl *x509.RevocationList, cert *x509.Certificate, reason int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 && e.ReasonCode == reason {
			return true
		}
	}
	return false
}

func assertAudited(t *testing.T, f *fixture, actions ...string) {
	t.Helper()
	ev, _ := f.in.Store.ListAudit(context.Background())
	for _, a := range actions {
		found := false
		for _, e := range ev {
			found = found || e.Action == a && e.Actor != "" && !e.At.IsZero()
		}
		if !found {
			t.Fatalf("no %s audit event in %+v", a, ev)
		}
	}
}

// TestRenewalAfterYearsOffline: a device whose certificate expired more than
// two years ago renews by proving possession of its key, within the grace
// period, and only while it is not revoked or being re-provisioned.
func TestRenewalAfterYearsOffline(t *testing.T) {
	now := time.Now()
	f := newFixtureWith(t, fixtureOpts{pkiCreated: now.AddDate(-4, 0, 0)})
	ctx := context.Background()
	then, err := ca.Open(f.in.Dir, ca.Options{Now: func() time.Time { return now.AddDate(-3, 0, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	// Enroll SN-1 and SN-2 three years ago (recorded through the store, as
	// fosterd did then).
	old := map[string]cred{}
	for _, serial := range []string{"SN-1", "SN-2", "SN-3"} {
		key := newKey(t)
		dr, err := then.CheckDeviceCSR([]byte(csrPEM(t, key, serial)), "edge-gw", serial)
		if err != nil {
			t.Fatal(err)
		}
		f.in.Store.CreateToken(ctx, store.Token{Hash: serial, Serial: serial, Model: "edge-gw", ExpiresAt: now.Add(time.Hour)})
		dev, err := f.in.Store.EnrollDevice(ctx, store.EnrollRequest{Serial: serial, Model: "edge-gw", KeySHA256: dr.KeySHA256, TokenHash: serial}, func() (store.Issued, error) {
			chain, err := then.IssueDeviceRequest(ctx, dr)
			if err != nil {
				return store.Issued{}, err
			}
			pemChain := ""
			for _, c := range chain {
				pemChain += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
			}
			return store.Issued{Serial: chain[0].SerialNumber.Text(16), NotBefore: chain[0].NotBefore, NotAfter: chain[0].NotAfter, KeySHA256: dr.KeySHA256, ChainPEM: pemChain}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		old[serial] = f.withKey(dev.CertPEM, key)
		if !old[serial].chain[0].NotAfter.Before(now.AddDate(-2, 0, 0)) {
			t.Fatal("test certificate did not expire years ago")
		}
	}
	// TLS refuses the expired certificate outright.
	if _, err := old["SN-1"].client.Get(f.srv.URL + "/tuf/timestamp.json"); err == nil {
		t.Fatal("an expired client certificate passed the TLS handshake")
	}

	renewToken := func(c cred, csr string, mut ...func(*x5ctoken.Claims)) string {
		p, _ := identity.FromCertificate(c.chain[0])
		block, _ := pem.Decode([]byte(csr))
		cl := x5ctoken.Claims{Issuer: p.URI(), Subject: p.URI(), Audience: x5ctoken.RenewAudience, IssuedAt: time.Now(), Expiry: time.Now().Add(5 * time.Minute), CSRSHA256: x5ctoken.CSRDigest(block.Bytes)}
		for _, m := range mut {
			m(&cl)
		}
		tok, err := x5ctoken.Sign(c.chain, c.key, cl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	body := func(tok, csr string) []byte { return []byte(js(map[string]string{"token": tok, "csr": csr})) }

	csr1 := csrPEM(t, old["SN-1"].key.(*ecdsa.PrivateKey), "SN-1")
	tok1 := renewToken(old["SN-1"], csr1)
	var out struct{ Certificate string }
	r := f.do(f.anon, "POST", "/v1/renew-expired", body(tok1, csr1))
	if r.status != 201 {
		t.Fatalf("renew after expiry: %d %s", r.status, r.body)
	}
	json.Unmarshal(r.body, &out)
	renewed := f.withKey(out.Certificate, old["SN-1"].key)
	if !renewed.chain[0].NotAfter.After(now.Add(80 * 24 * time.Hour)) {
		t.Fatalf("renewed certificate expires %s", renewed.chain[0].NotAfter)
	}
	// The token is single use, even while the old certificate may still
	// retry (the device has not used the new one yet).
	if r := f.do(f.anon, "POST", "/v1/renew-expired", body(tok1, csr1)); r.status != 409 || r.code() != "token_used" {
		t.Fatalf("replayed token: %d %s", r.status, r.body)
	}
	if r := f.do(renewed.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("renewed device: %d %s", r.status, r.body)
	}

	// Refusals.
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-2/revoke", map[string]string{"reason": "keyCompromise"}, 200)
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-3/reprovision", map[string]string{}, 200)
	csr2 := csrPEM(t, old["SN-2"].key.(*ecdsa.PrivateKey), "SN-2")
	csr3 := csrPEM(t, old["SN-3"].key.(*ecdsa.PrivateKey), "SN-3")
	station := f.station(stationSpec{name: "line-1"})
	stationCSR := csrPEM(t, newKey(t), "SN-1")
	before := f.issuedState()
	for _, tt := range []struct {
		name   string
		body   []byte
		status int
		code   string
	}{
		{"replayed token of the certificate the device has replaced", body(tok1, csr1), 403, "revoked"},
		{"token bound to another CSR", body(renewToken(old["SN-1"], csr1), csrPEM(t, newKey(t), "SN-1")), 401, "token_invalid"},
		{"revoked device", body(renewToken(old["SN-2"], csr2), csr2), 403, "revoked"},
		{"device being re-provisioned", body(renewToken(old["SN-3"], csr3), csr3), 403, "forbidden"},
		{"enrollment audience", body(renewToken(old["SN-1"], csr1, func(c *x5ctoken.Claims) { c.Audience = x5ctoken.EnrollAudience }), csr1), 401, "token_invalid"},
		{"expired token", body(renewToken(old["SN-1"], csr1, func(c *x5ctoken.Claims) { c.IssuedAt, c.Expiry = now.Add(-time.Hour), now.Add(-50*time.Minute) }), csr1), 401, "token_invalid"},
		{"signed by a station", body(renewToken(station, stationCSR, func(c *x5ctoken.Claims) { c.Subject = "urn:foster:device:edge-gw:SN-1" }), stationCSR), 401, "token_invalid"},
		{"not a token", body("fst_abc", csr1), 401, "token_invalid"},
		{"oversized", []byte(`{"token":"` + strings.Repeat("a", 40<<10) + `"}`), 413, "too_large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.anon, "POST", "/v1/renew-expired", tt.body)
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.status, tt.code)
			}
			if !f.issuedState().equal(before) {
				t.Fatal("refused renewal issued something")
			}
		})
	}
}

func TestRenewGraceIsConfigurable(t *testing.T) {
	now := time.Now()
	f := newFixtureWith(t, fixtureOpts{pkiCreated: now.AddDate(-4, 0, 0), identity: instance.IdentityConfig{RenewGrace: "8760h"}})
	then, _ := ca.Open(f.in.Dir, ca.Options{Now: func() time.Time { return now.AddDate(-3, 0, 0) }})
	key := newKey(t)
	chain, err := then.IssueDevice(context.Background(), []byte(csrPEM(t, key, "SN-1")), "edge-gw", "SN-1")
	if err != nil {
		t.Fatal(err)
	}
	csr := csrPEM(t, key, "SN-1")
	block, _ := pem.Decode([]byte(csr))
	p := identity.Device("edge-gw", "SN-1")
	tok, _ := x5ctoken.Sign(chain, key, x5ctoken.Claims{Issuer: p.URI(), Subject: p.URI(), Audience: x5ctoken.RenewAudience, IssuedAt: now, Expiry: now.Add(time.Minute), CSRSHA256: x5ctoken.CSRDigest(block.Bytes)})
	r := f.do(f.anon, "POST", "/v1/renew-expired", []byte(js(map[string]string{"token": tok, "csr": csr})))
	if r.status != 403 || r.code() != "grace_expired" {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestAdminAndAuditorCredentials(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	var out struct{ Principal, Certificate, Key string }
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/admins", map[string]string{"name": "alice", "role": "auditor"}, 201), &out)
	alice := f.credFromPEM(out.Certificate, out.Key)
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/admins", map[string]string{"name": "bob", "role": "admin"}, 201), &out)
	bob := f.credFromPEM(out.Certificate, out.Key)
	if r := f.do(alice.client, "GET", "/v1/devices", nil); r.status != 200 {
		t.Fatalf("auditor reads: %d", r.status)
	}
	for _, path := range []string{"/v1/stations", "/v1/admins", "/v1/models"} {
		if r := f.do(alice.client, "POST", path, []byte(`{"name":"x","role":"admin","quota":1}`)); r.status != 403 {
			t.Fatalf("auditor POST %s: %d", path, r.status)
		}
	}
	f.mustJSON(bob.client, "POST", "/v1/models", map[string]any{"name": "bobs-model"}, 201)
	for _, tt := range []struct {
		body   string
		status int
	}{
		{`{"name":"alice","role":"auditor"}`, 409},
		{`{"name":"eve","role":"station"}`, 400},
		{`{"name":"eve","role":"device"}`, 400},
		{`{"name":"../eve","role":"admin"}`, 400},
	} {
		if r := f.do(f.admin, "POST", "/v1/admins", []byte(tt.body)); r.status != tt.status {
			t.Fatalf("%s: %d %s", tt.body, r.status, r.body)
		}
	}
	ev, _ := f.in.Store.ListAudit(context.Background())
	var got []string
	for _, e := range ev {
		got = append(got, e.Actor+" "+e.Action)
	}
	for _, want := range []string{"urn:foster:admin:admin admin.create", "urn:foster:admin:bob model.create"} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Fatalf("audit trail lacks %q: %v", want, got)
		}
	}
}

func TestStationCreateValidatesAndAudits(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	for _, tt := range []struct {
		body   string
		status int
	}{
		{`{"name":"l1","quota":0}`, 400},
		{`{"name":"l1","quota":10,"valid_for_seconds":-1}`, 400},
		{`{"name":"l1","quota":10,"models":["nope"]}`, 400},
		{`{"name":"l1","quota":10,"serial_pattern":"(("}`, 400},
		{`{"name":"bad name","quota":10}`, 400},
	} {
		if r := f.do(f.admin, "POST", "/v1/stations", []byte(tt.body)); r.status != tt.status {
			t.Fatalf("%s: %d %s", tt.body, r.status, r.body)
		}
	}
	f.station(stationSpec{name: "l1", validFor: 720 * time.Hour})
	if r := f.do(f.admin, "POST", "/v1/stations", []byte(`{"name":"l1","quota":10,"models":["*"]}`)); r.status != 409 {
		t.Fatalf("duplicate: %d", r.status)
	}
	var st store.Station
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/stations/l1", nil, 200), &st)
	if d := st.NotAfter.Sub(st.NotBefore); d < 720*time.Hour || d > 721*time.Hour {
		t.Fatalf("station window %s", d)
	}
	assertAudited(t, f, "station.create")
}
