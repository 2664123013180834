package server_test

import (
	"context"
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// credentialRoutes are every route an admin or auditor certificate opens
// (admin-only and read routes), with concrete paths.
var credentialRoutes = []struct{ method, path string }{
	{"GET", "/v1/admins"}, {"POST", "/v1/admins"}, {"POST", "/v1/admins/renew"}, {"POST", "/v1/admins/bob/revoke"},
	{"GET", "/v1/models"}, {"POST", "/v1/models"}, {"GET", "/v1/models/edge-gw"}, {"PATCH", "/v1/models/edge-gw"}, {"POST", "/v1/tokens"},
	{"GET", "/v1/releases"}, {"POST", "/v1/releases"}, {"GET", "/v1/releases/edge-gw/1.0.0"}, {"POST", "/v1/releases/edge-gw/1.0.0/revoke"},
	{"GET", "/v1/devices"}, {"GET", "/v1/devices/SN-1"}, {"POST", "/v1/devices/SN-1/revoke"}, {"POST", "/v1/devices/SN-1/reprovision"},
	{"GET", "/v1/attestations"}, {"GET", "/v1/attestations/x/1/bundle"}, {"GET", "/v1/audit"},
	{"GET", "/v1/stations"}, {"GET", "/v1/stations/l1"}, {"POST", "/v1/stations"}, {"POST", "/v1/stations/l1/revoke"},
	{"GET", "/v1/log/inclusion"}, {"GET", "/v1/log/entries"}, {"GET", "/v1/reports/fleet"}, {"GET", "/v1/reports/fleet/summary"}, {"GET", "/v1/reports/fleet/devices"},
	{"GET", "/v1/tuf"}, {"GET", "/v1/tuf/metadata/root"}, {"POST", "/v1/tuf/publish"},
	{"GET", "/v1/keys"}, {"POST", "/v1/keys/tuf"}, {"POST", "/v1/keys/intermediate"},
}

type issuedCred struct {
	Principal, Certificate, Key, Supersedes string
}

func (f *fixture) createAdmin(name, role string) (issuedCred, cred) {
	f.t.Helper()
	var out issuedCred
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/admins", map[string]string{"name": name, "role": role}, 201), &out)
	return out, f.credFromPEM(out.Certificate, out.Key)
}

func (f *fixture) adminList() map[string]store.AdminCredential {
	f.t.Helper()
	var list []store.AdminCredential
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/admins", nil, 200), &list)
	m := map[string]store.AdminCredential{}
	for _, a := range list {
		m[a.Serial] = a
	}
	return m
}

func (f *fixture) inCRL(serial string) bool {
	f.t.Helper()
	want, _ := new(big.Int).SetString(serial, 16)
	for _, e := range f.crl().RevokedCertificateEntries {
		if e.SerialNumber.Cmp(want) == 0 {
			return true
		}
	}
	return false
}

// A revoked admin's certificate is refused on every route at once, is in
// the CRL, and the revocation is audited.
func TestRevokedAdminCertificateIsRefusedOnEveryRoute(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	_, bob := f.createAdmin("bob", "admin")
	_, alice := f.createAdmin("alice", "auditor")
	f.mustJSON(bob.client, "GET", "/v1/devices", nil, 200)
	f.mustJSON(alice.client, "GET", "/v1/devices", nil, 200)
	var rev struct {
		Name    string
		Revoked []store.Certificate
	}
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/admins/bob/revoke", map[string]string{"reason": "keyCompromise"}, 200), &rev)
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/admins/alice/revoke", map[string]string{}, 200), &rev)
	for i, c := range []cred{bob, alice} {
		for _, rt := range credentialRoutes {
			// An auditor already meets "forbidden" on admin-only routes.
			r := f.do(c.client, rt.method, rt.path, []byte(`{}`))
			if r.status != 403 || (r.code() != "revoked" && (i == 0 || r.code() != "forbidden")) {
				t.Fatalf("revoked %s %s %s: %d %s", c.chain[0].Subject.CommonName, rt.method, rt.path, r.status, r.body)
			}
		}
		serial := c.chain[0].SerialNumber.Text(16)
		if !f.inCRL(serial) {
			t.Fatalf("revoked credential %s is not in the CRL", serial)
		}
		if st := f.adminList()[serial].Status; st != store.CredentialRevoked {
			t.Fatalf("admin list shows %s as %q", serial, st)
		}
	}
	assertAudited(t, f, "admin.revoke")
	if r := f.do(f.admin, "POST", "/v1/admins/bob/revoke", []byte(`{}`)); r.status != 409 {
		t.Fatalf("revoking bob twice: %d %s", r.status, r.body)
	}
	for _, tt := range []struct {
		path, body string
		status     int
	}{
		{"/v1/admins/nobody/revoke", `{}`, 404},
		{"/v1/admins/bob/revoke", `{"reason":"because"}`, 400},
		{"/v1/admins/..%2Fx/revoke", `{}`, 400},
		{"/v1/admins/bob/revoke", `{"reason":"keyCompromise","extra":1}`, 400},
	} {
		if r := f.do(f.admin, "POST", tt.path, []byte(tt.body)); r.status != tt.status {
			t.Fatalf("POST %s %s: %d %s", tt.path, tt.body, r.status, r.body)
		}
	}
	if r := f.do(alice.client, "POST", "/v1/admins/admin/revoke", []byte(`{}`)); r.status != 403 {
		t.Fatalf("an auditor revoking: %d", r.status)
	}
}

// The first admin, written at init, is a recorded credential like any
// other: listed, and revocable once another admin exists.
func TestInitAdminIsRevocable(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	initSerial := ""
	for s, a := range f.adminList() {
		if a.Name == "admin" && a.Role == "admin" && a.Status == store.CredentialActive && a.IssuedVia == store.IssuedViaInit {
			initSerial = s
		}
	}
	if initSerial == "" {
		t.Fatalf("the init admin is not listed as an active credential: %v", f.adminList())
	}
	_, bob := f.createAdmin("bob", "admin")
	f.mustJSON(bob.client, "POST", "/v1/admins/admin/revoke", map[string]string{"reason": "affiliationChanged"}, 200)
	if r := f.do(f.admin, "GET", "/v1/devices", nil); r.status != 403 || r.code() != "revoked" {
		t.Fatalf("the revoked init admin: %d %s", r.status, r.body)
	}
	if !f.inCRL(initSerial) {
		t.Fatal("the revoked init admin is not in the CRL")
	}
}

// Issuing a second credential under an existing name (the init admin's
// included, in either role) would give two people one identity: 409.
func TestSecondCredentialForExistingNameIsRefused(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	for _, body := range []string{`{"name":"admin","role":"admin"}`, `{"name":"admin","role":"auditor"}`} {
		if r := f.do(f.admin, "POST", "/v1/admins", []byte(body)); r.status != 409 || r.code() != "conflict" {
			t.Fatalf("%s: %d %s", body, r.status, r.body)
		}
	}
	_, bob := f.createAdmin("bob", "auditor")
	if r := f.do(f.admin, "POST", "/v1/admins", []byte(`{"name":"bob","role":"admin"}`)); r.status != 409 {
		t.Fatalf("bob again as admin: %d %s", r.status, r.body)
	}
	f.mustJSON(f.admin, "POST", "/v1/admins/bob/revoke", map[string]string{}, 200)
	_, bob2 := f.createAdmin("bob", "admin")
	f.mustJSON(bob2.client, "GET", "/v1/devices", nil, 200)
	if r := f.do(bob.client, "GET", "/v1/devices", nil); r.status != 403 {
		t.Fatalf("bob's first credential after re-issue: %d", r.status)
	}
}

// Revoking the last admin would leave nobody able to run the instance:
// refused with a clear 409, auditors notwithstanding.
func TestLastAdminCannotBeRevoked(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	f.createAdmin("alice", "auditor")
	r := f.do(f.admin, "POST", "/v1/admins/admin/revoke", []byte(`{}`))
	if r.status != 409 || r.code() != "last_admin" || !strings.Contains(string(r.body), "last active admin") {
		t.Fatalf("revoking the last admin: %d %s", r.status, r.body)
	}
	f.mustJSON(f.admin, "GET", "/v1/devices", nil, 200)
}

// An admin certificate the store never recorded (signed outside fosterd's
// admin API, e.g. with a copied intermediate key) opens nothing.
func TestUnrecordedAdminCertificateIsRefused(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	chain, key, err := f.in.CA.IssueClient(context.Background(), identity.Principal{Role: identity.RoleAdmin, Name: "mallory"})
	if err != nil {
		t.Fatal(err)
	}
	m := f.credFromPEM(string(chain), string(key))
	for _, rt := range credentialRoutes {
		if r := f.do(m.client, rt.method, rt.path, []byte(`{}`)); r.status != 403 || !strings.Contains(string(r.body), "never recorded") {
			t.Fatalf("unrecorded admin %s %s: %d %s", rt.method, rt.path, r.status, r.body)
		}
	}
}

// A renewed credential keeps its holder's role and lifetime; the old one
// stays valid until the new one is used (a lost answer costs a retry),
// then is superseded and in the CRL.
func TestAdminRenewalSupersedesOldCredentialOnFirstUse(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	_, alice := f.createAdmin("alice", "auditor")
	var out issuedCred
	json.Unmarshal(f.mustJSON(alice.client, "POST", "/v1/admins/renew", map[string]string{}, 201), &out)
	renewed := f.credFromPEM(out.Certificate, out.Key)
	oldSerial := alice.chain[0].SerialNumber.Text(16)
	if out.Supersedes != oldSerial || out.Principal != "urn:foster:auditor:alice" {
		t.Fatalf("renewal answer: %+v", out)
	}
	if got, want := renewed.chain[0].NotAfter.Sub(renewed.chain[0].NotBefore), alice.chain[0].NotAfter.Sub(alice.chain[0].NotBefore); got != want {
		t.Fatalf("renewed lifetime %s, want %s", got, want)
	}
	f.mustJSON(alice.client, "GET", "/v1/devices", nil, 200) // not superseded before the new one is used
	f.mustJSON(renewed.client, "GET", "/v1/devices", nil, 200)
	if r := f.do(alice.client, "GET", "/v1/devices", nil); r.status != 403 || r.code() != "revoked" {
		t.Fatalf("old credential after the renewed one was used: %d %s", r.status, r.body)
	}
	if st := f.adminList()[oldSerial].Status; st != store.CredentialSuperseded {
		t.Fatalf("old credential listed as %q", st)
	}
	if !f.inCRL(oldSerial) {
		t.Fatal("the superseded credential is not in the CRL")
	}
	if r := f.do(renewed.client, "POST", "/v1/admins", []byte(`{"name":"x","role":"admin"}`)); r.status != 403 {
		t.Fatalf("a renewed auditor gained admin rights: %d", r.status)
	}
	assertAudited(t, f, "admin.renew")
	assertAudited(t, f, "admin.supersede")
	st := f.station(stationSpec{name: "l1", quota: 1})
	if r := f.do(st.client, "POST", "/v1/admins/renew", []byte(`{}`)); r.status != 403 {
		t.Fatalf("a station renewing through the admin route: %d", r.status)
	}
}
