package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
)

// fixture is a real instance (CA, SQLite store, file blobs, TUF repo)
// behind a real TLS listener.
type fixture struct {
	t     testing.TB
	in    *instance.Instance
	srv   *httptest.Server
	admin *http.Client
	anon  *http.Client
	pool  *x509.CertPool
}

func newFixture(t testing.TB) *fixture { return newFixtureOverrides(t, instance.Overrides{}) }

// newFixtureOverrides is newFixture with fosterd flag overrides.
func newFixtureOverrides(t testing.TB, ov instance.Overrides) *fixture {
	t.Helper()
	dir := t.TempDir()
	if _, err := instance.Init(context.Background(), dir, instance.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return serveInstance(t, dir, ov)
}

// serveInstance opens the instance in dir behind a real TLS listener, with an
// admin and an anonymous client.
func serveInstance(t testing.TB, dir string, ov instance.Overrides) *fixture {
	t.Helper()
	return serveInstanceLog(t, dir, ov, nil)
}

// serveInstanceLog is serveInstance with fosterd logging to log.
func serveInstanceLog(t testing.TB, dir string, ov instance.Overrides, log *slog.Logger) *fixture {
	t.Helper()
	in, err := instance.Open(context.Background(), dir, ov, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	srv := httptest.NewUnstartedServer(in.API.Handler())
	srv.TLS = in.TLS
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f := &fixture{t: t, in: in, srv: srv, pool: in.CA.RootPool()}
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	f.admin = f.client(&cert)
	f.anon = f.client(nil)
	return f
}

func (f *fixture) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// principalClient issues a credential for p straight from the CA and, for
// an admin or auditor, records it as fosterd does (only recorded admin and
// auditor credentials authenticate).
func (f *fixture) principalClient(p identity.Principal) *http.Client {
	chain, key, err := f.in.CA.IssueClient(context.Background(), p)
	if err != nil {
		f.t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		f.t.Fatal(err)
	}
	if p.Role == identity.RoleAdmin || p.Role == identity.RoleAuditor {
		leaf := cert.Leaf
		if _, err := f.in.Store.RecordExistingCredential(context.Background(), store.Certificate{Serial: leaf.SerialNumber.Text(16),
			Subject: p.URI(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IssuedVia: store.IssuedViaAdmin}); err != nil {
			f.t.Fatal(err)
		}
	}
	return f.client(&cert)
}

type apiResp struct {
	status int
	body   []byte
}

func (r apiResp) code() string {
	var e struct{ Code, Error string }
	json.Unmarshal(r.body, &e)
	return e.Code
}

func (f *fixture) do(c *http.Client, method, path string, body []byte) apiResp {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, bytes.NewReader(body))
	resp, err := c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var e struct{ Code, Error string }
		if json.Unmarshal(b, &e) != nil || e.Code == "" || e.Error == "" {
			f.t.Fatalf("%s %s: error response is not {error, code} JSON: %s", method, path, b)
		}
	}
	return apiResp{resp.StatusCode, b}
}

func (f *fixture) mustJSON(c *http.Client, method, path string, in any, want int) []byte {
	f.t.Helper()
	b, _ := json.Marshal(in)
	r := f.do(c, method, path, b)
	if r.status != want {
		f.t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.body, want)
	}
	return r.body
}

func (f *fixture) token(serial, model string) string {
	var out struct{ Token string }
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/tokens", map[string]any{"serial": serial, "model": model}, 201), &out)
	return out.Token
}

func csrPEM(t testing.TB, key *ecdsa.PrivateKey, cn string) string {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *fixture) deviceCount() int {
	ds, err := f.in.Store.ListDevices(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return len(ds)
}

func TestEnrollRefusesBadInputAndIssuesNothing(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	key := newKey(t)
	good := csrPEM(t, key, "SN-1")
	tok := f.token("SN-1", "edge-gw")
	weak, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_ = weak

	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantCode   string
	}{
		{"garbage json", `{{{`, 400, "bad_request"},
		{"unknown field", `{"token":"` + tok + `","serial":"SN-1","model":"edge-gw","csr":"x","admin":true}`, 400, "bad_request"},
		{"oversized body", `{"token":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "too_large"},
		{"malformed token", js(map[string]string{"token": "hello", "serial": "SN-1", "model": "edge-gw", "csr": good}), 401, "token_invalid"},
		{"unknown token", js(map[string]string{"token": "fst_nope", "serial": "SN-1", "model": "edge-gw", "csr": good}), 401, "token_invalid"},
		{"token for another serial", js(map[string]string{"token": tok, "serial": "SN-2", "model": "edge-gw", "csr": csrPEM(t, key, "SN-2")}), 403, "token_invalid"},
		{"unknown model", js(map[string]string{"token": tok, "serial": "SN-1", "model": "nope", "csr": good}), 400, "unknown_model"},
		{"malformed csr", js(map[string]string{"token": tok, "serial": "SN-1", "model": "edge-gw", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}), 400, "bad_request"},
		{"csr names another serial", js(map[string]string{"token": tok, "serial": "SN-1", "model": "edge-gw", "csr": csrPEM(t, key, "SN-9")}), 400, "bad_request"},
		{"invalid serial", js(map[string]string{"token": tok, "serial": "../etc", "model": "edge-gw", "csr": good}), 400, "bad_request"},
		{"missing csr", js(map[string]string{"token": tok, "serial": "SN-1", "model": "edge-gw"}), 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.anon, "POST", "/v1/enroll", []byte(tt.body))
			if r.status != tt.wantStatus || r.code() != tt.wantCode {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.wantStatus, tt.wantCode)
			}
			if n := f.deviceCount(); n != 0 {
				t.Fatalf("refused enrollment recorded %d devices", n)
			}
		})
	}
	// None of the refusals consumed the token.
	f.mustJSON(f.anon, "POST", "/v1/enroll", map[string]string{"token": tok, "serial": "SN-1", "model": "edge-gw", "csr": good}, 201)
	// The spent token enrolls no other key (the same key gets its own
	// certificate back: TestEnrollRetryAfterLostResponse).
	r := f.do(f.anon, "POST", "/v1/enroll", []byte(js(map[string]string{"token": tok, "serial": "SN-1", "model": "edge-gw", "csr": csrPEM(t, newKey(t), "SN-1")})))
	if r.status != 409 || r.code() != "token_used" {
		t.Fatalf("token reuse: %d %s", r.status, r.body)
	}
}

func TestEnrollRefusesExpiredToken(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	var out struct{ Token string }
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/tokens", map[string]any{"serial": "SN-1", "model": "edge-gw", "ttl_seconds": 60}, 201), &out)
	f.in.Store.SetClock(func() time.Time { return time.Now().Add(2 * time.Minute) })
	r := f.do(f.anon, "POST", "/v1/enroll", []byte(js(map[string]string{"token": out.Token, "serial": "SN-1", "model": "edge-gw", "csr": csrPEM(t, newKey(t), "SN-1")})))
	if r.status != 401 || !strings.Contains(string(r.body), "expired") {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// enrolled enrolls serial and returns its mTLS client and key.
func (f *fixture) enrolled(serial string) (*http.Client, *ecdsa.PrivateKey) {
	key := newKey(f.t)
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", map[string]string{"token": f.token(serial, "edge-gw"), "serial": serial, "model": "edge-gw", "csr": csrPEM(f.t, key, serial)}, 201), &out)
	var cert tls.Certificate
	rest := []byte(out.Certificate)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	cert.PrivateKey = key
	return f.client(&cert), key
}

func (f *fixture) release(version string, body []byte) store.Release {
	var rel store.Release
	r := f.do(f.admin, "POST", "/v1/releases?model=edge-gw&version="+version+"&name=fw.bin", body)
	if r.status != 201 {
		f.t.Fatalf("release: %d %s", r.status, r.body)
	}
	json.Unmarshal(r.body, &rel)
	return rel
}

func envelope(t testing.TB, key *ecdsa.PrivateKey, device string, rel store.Release, seq int64) []byte {
	s, err := signing.FromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	env, err := attest.Sign(s, attest.Install{
		Device: device, New: attest.Target{Name: rel.TargetPath, SHA256: rel.SHA256, Length: rel.Length, Version: rel.Version, ReleaseCounter: rel.Counter},
		Outcome: attest.OutcomeCommitted, Sequence: seq, Time: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestAttestationIngestRefusesForgeriesAndReplays(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, key := f.enrolled("SN-1")
	other, otherKey := f.enrolled("SN-2")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()

	forged := rel
	forged.SHA256 = strings.Repeat("00", 32)
	unpublished := rel
	unpublished.TargetPath = "edge-gw/9.9.9/fw.bin"

	tests := []struct {
		name     string
		client   *http.Client
		env      []byte
		status   int
		wantCode string
	}{
		{"wrong device key", dev, envelope(t, otherKey, me, rel, 1), 400, "bad_signature"},
		{"attestation for another device", other, envelope(t, otherKey, me, rel, 1), 403, "forbidden"},
		{"digest of an unsigned target", dev, envelope(t, key, me, forged, 1), 400, "unsigned_target"},
		{"target never published", dev, envelope(t, key, me, unpublished, 1), 400, "unsigned_target"},
		{"garbage", dev, []byte("{not json"), 400, "bad_request"},
		{"oversized", dev, bytes.Repeat([]byte(" "), attest.MaxEnvelopeSize+1), 413, "too_large"},
		{"no client certificate", f.anon, envelope(t, key, me, rel, 1), 401, "unauthorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(tt.client, "POST", "/v1/attestations", tt.env)
			if r.status != tt.status || r.code() != tt.wantCode {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.status, tt.wantCode)
			}
			if as, _ := f.in.Store.ListAttestations(context.Background(), ""); len(as) != 0 {
				t.Fatalf("refused attestation stored: %+v", as)
			}
		})
	}

	good := envelope(t, key, me, rel, 1)
	if r := f.do(dev, "POST", "/v1/attestations", good); r.status != 201 {
		t.Fatalf("valid attestation: %d %s", r.status, r.body)
	}
	// Re-sending the identical envelope (device crashed before filing it) is acknowledged, not duplicated.
	if r := f.do(dev, "POST", "/v1/attestations", good); r.status != 200 {
		t.Fatalf("identical re-send: %d %s", r.status, r.body)
	}
	// A different statement with a used sequence is a replay.
	if r := f.do(dev, "POST", "/v1/attestations", envelope(t, key, me, rel, 1)); r.status != 409 || r.code() != "replay" {
		t.Fatalf("replayed sequence: %d %s", r.status, r.body)
	}
	if as, _ := f.in.Store.ListAttestations(context.Background(), ""); len(as) != 1 {
		t.Fatalf("%d attestations stored, want 1", len(as))
	}

	// Revocation takes effect on the next request.
	if err := f.in.Store.SetDeviceStatus(context.Background(), me, store.DeviceRevoked); err != nil {
		t.Fatal(err)
	}
	if r := f.do(dev, "POST", "/v1/attestations", envelope(t, key, me, rel, 2)); r.status != 403 {
		t.Fatalf("revoked device: %d %s", r.status, r.body)
	}
	if r := f.do(dev, "GET", "/tuf/timestamp.json", nil); r.status != 403 {
		t.Fatalf("revoked device reading metadata: %d", r.status)
	}
}

func TestRolesGateEveryRoute(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, _ := f.enrolled("SN-1")
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "alice"})
	station := f.principalClient(identity.Principal{Role: identity.RoleStation, Name: "line-1"})
	tests := []struct {
		name   string
		client *http.Client
		method string
		path   string
		body   string
		want   int
	}{
		{"device lists devices", dev, "GET", "/v1/devices", "", 403},
		{"device mints token", dev, "POST", "/v1/tokens", `{"serial":"X","model":"edge-gw"}`, 403},
		{"device publishes release", dev, "POST", "/v1/releases?model=edge-gw&version=1.0.0", "fw", 403},
		{"auditor reads devices", auditor, "GET", "/v1/devices", "", 200},
		{"auditor mints token", auditor, "POST", "/v1/tokens", `{"serial":"X","model":"edge-gw"}`, 403},
		{"auditor publishes release", auditor, "POST", "/v1/releases?model=edge-gw&version=1.0.0", "fw", 403},
		{"auditor reads metadata", auditor, "GET", "/tuf/timestamp.json", "", 200}, // audit report --from-log
		{"auditor reads another model's role", auditor, "GET", "/tuf/1.models%2Fother.json", "", 404},
		{"auditor downloads firmware", auditor, "GET", "/targets/edge-gw/1.0.0/fw.bin", "", 403},
		{"station reads metadata", station, "GET", "/tuf/timestamp.json", "", 403},
		{"station lists devices", station, "GET", "/v1/devices", "", 403},
		{"admin reads metadata", f.admin, "GET", "/tuf/timestamp.json", "", 200},
		{"anonymous lists devices", f.anon, "GET", "/v1/devices", "", 401},
		{"device reads metadata", dev, "GET", "/tuf/timestamp.json", "", 200},
		{"traversal in target path", dev, "GET", "/targets/..%2f..%2fconfig.json", "", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(tt.client, tt.method, tt.path, []byte(tt.body))
			if r.status != tt.want {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tt.want)
			}
		})
	}
}

func TestReleaseRefusesBadUploadsAndChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.release("1.0.0", []byte("v1"))
	before, _, _, ts := f.in.Repo.Versions()
	_ = before
	tests := []struct {
		name, query string
		body        []byte
		status      int
	}{
		{"empty firmware", "model=edge-gw&version=1.1.0", nil, 400},
		{"unknown model", "model=nope&version=1.1.0", []byte("x"), 400},
		{"not semver", "model=edge-gw&version=latest", []byte("x"), 400},
		{"duplicate version", "model=edge-gw&version=1.0.0", []byte("x"), 409},
		{"stale counter", "model=edge-gw&version=1.1.0&counter=1", []byte("x"), 409},
		{"bad counter", "model=edge-gw&version=1.1.0&counter=-4", []byte("x"), 400},
		{"file name with slash", "model=edge-gw&version=1.1.0&name=a%2Fb", []byte("x"), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.admin, "POST", "/v1/releases?"+tt.query, tt.body)
			if r.status != tt.status {
				t.Fatalf("got %d %s, want %d", r.status, r.body, tt.status)
			}
			rs, _ := f.in.Store.ListReleases(context.Background(), "")
			_, _, _, now := f.in.Repo.Versions()
			if len(rs) != 1 || now != ts {
				t.Fatalf("refused release changed the repository: %d releases, timestamp v%d -> v%d", len(rs), ts, now)
			}
		})
	}
	rel := f.release("1.1.0", []byte("v2"))
	if rel.Counter != 2 {
		t.Fatalf("counter %d, want 2", rel.Counter)
	}
	ev, _ := f.in.Store.ListAudit(context.Background())
	var actions []string
	for _, e := range ev {
		actions = append(actions, e.Actor+" "+e.Action)
	}
	if got := fmt.Sprint(actions); !strings.Contains(got, "urn:foster:admin:admin release.add") {
		t.Fatalf("admin actions not audited: %v", actions)
	}
}

func TestPanicsBecomeJSONErrors(t *testing.T) {
	// The role check runs before handlers; an unknown route still answers JSON.
	f := newFixture(t)
	r := f.do(f.admin, "GET", "/v1/nope", nil)
	if r.status != 404 || r.code() != "not_found" {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

func TestMetricsCountRequestsByRoute(t *testing.T) {
	f := newFixture(t)
	f.do(f.anon, "GET", "/v1/devices", nil)
	r := f.do(f.admin, "GET", "/metrics", nil) // admin or auditor only: limits_test.go
	if r.status != 200 || !strings.Contains(string(r.body), `foster_http_requests_total{code="401",route="GET /v1/devices"} 1`) {
		t.Fatalf("metrics: %d\n%s", r.status, r.body)
	}
}

func TestAttestationListIsPaged(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, key := f.enrolled("SN-1")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()
	for seq := int64(1); seq <= 3; seq++ {
		if r := f.do(dev, "POST", "/v1/attestations", envelope(t, key, me, rel, seq)); r.status != 201 {
			t.Fatalf("attestation %d: %d %s", seq, r.status, r.body)
		}
	}
	var page []store.Attestation
	json.Unmarshal(f.do(f.admin, "GET", "/v1/attestations?limit=2", nil).body, &page)
	if len(page) != 2 || page[0].Sequence != 1 {
		t.Fatalf("first page: %+v", page)
	}
	json.Unmarshal(f.do(f.admin, "GET", fmt.Sprintf("/v1/attestations?limit=2&after=%d", page[1].ID), nil).body, &page)
	if len(page) != 1 || page[0].Sequence != 3 {
		t.Fatalf("second page: %+v", page)
	}
	for _, q := range []string{"limit=0", "limit=1001", "after=-1", "limit=x"} {
		if r := f.do(f.admin, "GET", "/v1/attestations?"+q, nil); r.status != 400 {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
	}
}

func TestDeviceListIsPaged(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	for _, sn := range []string{"SN-1", "SN-2", "SN-3"} {
		f.enrolled(sn)
	}
	var page []store.Device
	json.Unmarshal(f.do(f.admin, "GET", "/v1/devices?limit=2", nil).body, &page)
	if len(page) != 2 || page[0].Serial != "SN-1" || page[1].Serial != "SN-2" {
		t.Fatalf("first page: %+v", page)
	}
	json.Unmarshal(f.do(f.admin, "GET", "/v1/devices?limit=2&after="+page[1].ID, nil).body, &page)
	if len(page) != 1 || page[0].Serial != "SN-3" {
		t.Fatalf("second page: %+v", page)
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=" + strings.Repeat("a", 300)} {
		if r := f.do(f.admin, "GET", "/v1/devices?"+q, nil); r.status != 400 {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
	}
}

func TestAuditTrailIsPaged(t *testing.T) {
	f := newFixture(t)
	for _, m := range []string{"m1", "m2", "m3"} {
		f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": m}, 201)
	}
	var page []store.AuditEvent
	json.Unmarshal(f.do(f.admin, "GET", "/v1/audit?limit=2", nil).body, &page)
	if len(page) != 2 || page[0].Detail != "m1" {
		t.Fatalf("first page: %+v", page)
	}
	json.Unmarshal(f.do(f.admin, "GET", fmt.Sprintf("/v1/audit?after=%d", page[1].ID), nil).body, &page)
	if len(page) != 1 || page[0].Detail != "m3" {
		t.Fatalf("second page: %+v", page)
	}
	if r := f.do(f.admin, "GET", "/v1/audit?limit=5000", nil); r.status != 400 {
		t.Fatalf("oversized page: %d", r.status)
	}
}
