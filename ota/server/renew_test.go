package server_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/store"
)

// renewed renews c over mTLS with its own key and returns the new credential.
func (f *fixture) renewed(c cred, serial string) cred {
	f.t.Helper()
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(c.client, "POST", "/v1/renew", map[string]string{"csr": csrPEM(f.t, c.key.(*ecdsa.PrivateKey), serial)}, 201), &out)
	return f.withKey(out.Certificate, c.key)
}

// A thief who copied the device's certificate and key renews with a CSR
// for the thief's own key, from the certificate the device has just
// replaced and from its current one: before, fosterd issued the
// certificate and moved the device's recorded key to the thief's, so the
// device itself became the clone. Now: 409 key_mismatch, recorded (device
// show lists it), nothing issued, the device's key unchanged.
func TestRenewalWithStolenOldCertCannotTakeOverKey(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	stolen := f.deviceCred("SN-1")
	current := f.renewed(stolen, "SN-1")
	thiefKey := newKey(t)
	before := f.issuedState()
	for _, c := range []cred{stolen, current} {
		r := f.do(c.client, "POST", "/v1/renew", []byte(js(map[string]string{"csr": csrPEM(t, thiefKey, "SN-1")})))
		if r.status != 409 || r.code() != "key_mismatch" {
			t.Fatalf("renewal under the thief's key: %d %s", r.status, r.body)
		}
	}
	if !f.issuedState().equal(before) {
		t.Fatal("a refused renewal issued something")
	}
	var d struct {
		store.Device
		Refusals []store.Refusal
	}
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/devices/SN-1", nil, 200), &d)
	if d.KeySHA256 != ca.PublicKeySHA256(stolen.key.Public()) || d.CertSerial != current.chain[0].SerialNumber.Text(16) {
		t.Fatalf("device changed: %+v", d.Device)
	}
	thief := ca.PublicKeySHA256(thiefKey.Public())
	if len(d.Refusals) != 2 || d.Refusals[0].KeySHA256 != thief || !strings.HasPrefix(d.Refusals[0].Reason, "key_mismatch") {
		t.Fatalf("refusals: %+v", d.Refusals)
	}
	assertAudited(t, f, "device.refused")
	// The device itself still renews with its own key.
	f.renewed(current, "SN-1")
}

// Once the device has used its renewed certificate, the certificate that
// renewal replaced no longer authenticates anywhere, and the CRL lists it
// as superseded (reason 4).
func TestOldCertAfterNewOneUsedIsRefusedAndInCRL(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	old := f.deviceCred("SN-1")
	renewed := f.renewed(old, "SN-1")
	// Until the new one is used, the old one still works (a lost reply).
	if r := f.do(old.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("replaced certificate before the new one is used: %d %s", r.status, r.body)
	}
	if r := f.do(renewed.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("renewed certificate: %d %s", r.status, r.body)
	}
	for _, ep := range []struct{ method, path, body string }{
		{"GET", "/tuf/timestamp.json", ""},
		{"POST", "/v1/renew", js(map[string]string{"csr": csrPEM(t, old.key.(*ecdsa.PrivateKey), "SN-1")})},
		{"POST", "/v1/attestations", "{}"},
	} {
		if r := f.do(old.client, ep.method, ep.path, []byte(ep.body)); r.status != 403 || r.code() != "revoked" {
			t.Fatalf("superseded certificate %s %s: %d %s", ep.method, ep.path, r.status, r.body)
		}
	}
	crl := f.crl()
	if !crlLists(crl, old.chain[0], 4) || crlLists(crl, renewed.chain[0], 4) {
		t.Fatalf("CRL: %+v", crl.RevokedCertificateEntries)
	}
	c, err := f.in.Store.GetCertificate(context.Background(), old.chain[0].SerialNumber.Text(16))
	if err != nil || c.RevokeReasonCode != store.ReasonSuperseded {
		t.Fatalf("old certificate: %+v %v", c, err)
	}
	// A certificate two renewals old is refused at once, even before the
	// newest is used.
	newest := f.renewed(renewed, "SN-1")
	if r := f.do(old.client, "GET", "/tuf/timestamp.json", nil); r.status != 403 {
		t.Fatalf("certificate two renewals old: %d %s", r.status, r.body)
	}
	if r := f.do(newest.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("newest certificate: %d %s", r.status, r.body)
	}
}

// The renewal committed but its reply never reached the device: the device
// retries with the certificate it still holds and gets the same new
// certificate, nothing issued.
func TestLostRenewalReplyRetryWithOldCertStillWorks(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	old := f.deviceCred("SN-1")
	lost := f.renewed(old, "SN-1")
	before := f.issuedState()
	retried := f.renewed(old, "SN-1")
	if retried.chain[0].SerialNumber.Cmp(lost.chain[0].SerialNumber) != 0 {
		t.Fatalf("retry got certificate %x, the lost reply carried %x", retried.chain[0].SerialNumber, lost.chain[0].SerialNumber)
	}
	if !f.issuedState().equal(before) {
		t.Fatal("the retry issued a certificate")
	}
	if r := f.do(retried.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
		t.Fatalf("retried certificate: %d %s", r.status, r.body)
	}
}
