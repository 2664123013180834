package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/store"
)

// Admin and auditor credentials over their whole life, and fosterd's own
// server certificate, with the real binaries.

func (e *Env) adminList(args ...string) map[string]store.AdminCredential {
	e.t.Helper()
	r := e.MustRun("foster", append(args, "admin", "list", "--json")...)
	var list []store.AdminCredential
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil {
		e.t.Fatalf("admin list --json: %v\n%s", err, r.Stdout)
	}
	m := map[string]store.AdminCredential{}
	for _, a := range list {
		m[a.Serial] = a
	}
	return m
}

// leafSerial is the hex serial of the first certificate in a PEM file or a
// credential bundle.
func leafSerial(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var bundle struct{ Certificate string }
	if json.Unmarshal(b, &bundle) == nil && bundle.Certificate != "" {
		b = []byte(bundle.Certificate)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert.SerialNumber.Text(16)
}

func (e *Env) crlHas(serial string) bool {
	e.t.Helper()
	caPEM, _ := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	resp, err := e.HTTPClient(caPEM, nil).Get(e.URL + "/crl")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		e.t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		e.t.Fatal(err)
	}
	want, _ := new(big.Int).SetString(serial, 16)
	for _, r := range crl.RevokedCertificateEntries {
		if r.SerialNumber.Cmp(want) == 0 {
			return true
		}
	}
	return false
}

// TestAdminLifecycleStory: the first admin is a recorded credential; a name
// gets one live credential; credentials renew over themselves; the first
// admin can be revoked once another admin exists, at once on every command
// and in the CRL; the last admin cannot be.
func TestAdminLifecycleStory(t *testing.T) {
	env := NewEnv(t)
	work := t.TempDir()
	bob, alice := filepath.Join(work, "bob.cred"), filepath.Join(work, "alice.cred")
	env.Admin("admin", "create", "bob", "--role", "admin", "--out", bob)
	env.Admin("admin", "create", "alice", "--role", "auditor", "--out", alice)
	env.MustFail("live credential", "foster", "--instance", env.DataDir, "admin", "create", "bob", "--role", "auditor", "--out", filepath.Join(work, "bob2.cred"))
	env.MustFail("live credential", "foster", "--cred", bob, "admin", "create", "admin", "--role", "admin", "--out", filepath.Join(work, "admin2.cred"))

	adminCrt := filepath.Join(env.DataDir, "admin.crt")
	initSerial := leafSerial(t, adminCrt)
	list := env.adminList("--cred", alice)
	if a := list[initSerial]; a.Name != "admin" || a.Status != store.CredentialActive || a.IssuedVia != store.IssuedViaInit {
		t.Fatalf("the init admin in admin list: %+v", a)
	}
	table := env.MustRun("foster", "--cred", alice, "admin", "list").Stdout
	for _, want := range []string{"NAME", "ROLE", "CERT SERIAL", "VALID UNTIL", "STATUS", "bob", "alice", "auditor", initSerial} {
		if !strings.Contains(table, want) {
			t.Fatalf("admin list lacks %q:\n%s", want, table)
		}
	}

	// The instance's own admin credential renews over admin.crt/admin.key;
	// the old certificate is superseded as the command ends.
	r := env.Admin("admin", "renew")
	renewedSerial := leafSerial(t, adminCrt)
	if renewedSerial == initSerial || !strings.Contains(r.Stdout, "superseded") {
		t.Fatalf("admin renew --instance: serial %s -> %s\n%s", initSerial, renewedSerial, r.Stdout)
	}
	if st := env.adminList("--cred", bob)[initSerial].Status; st != store.CredentialSuperseded || !env.crlHas(initSerial) {
		t.Fatalf("the renewed-away init credential is %q (in CRL: %v)", st, env.crlHas(initSerial))
	}
	// An auditor renews its bundle the same way, and stays an auditor.
	aliceOld := leafSerial(t, alice)
	env.MustRun("foster", "--cred", alice, "admin", "renew")
	if leafSerial(t, alice) == aliceOld {
		t.Fatal("admin renew --cred left the bundle unchanged")
	}
	env.MustRun("foster", "--cred", alice, "device", "list")
	env.MustFail("forbidden", "foster", "--cred", alice, "model", "add", "x")

	// Revoking the first admin: refused at once, on every command.
	env.MustFail("forbidden", "foster", "--cred", alice, "admin", "revoke", "admin")
	r = env.MustRun("foster", "--cred", bob, "admin", "revoke", "admin", "--reason", "affiliationChanged")
	if !strings.Contains(r.Stdout, renewedSerial) {
		t.Fatalf("admin revoke output lacks the revoked serial %s:\n%s", renewedSerial, r.Stdout)
	}
	for _, args := range [][]string{{"device", "list"}, {"model", "add", "m"}, {"admin", "list"}, {"admin", "renew"}} {
		env.MustFail("revoked", "foster", append([]string{"--instance", env.DataDir}, args...)...)
	}
	if !env.crlHas(renewedSerial) {
		t.Fatal("the revoked admin credential is not in the CRL")
	}
	env.MustFail("last active admin", "foster", "--cred", bob, "admin", "revoke", "bob")
	env.MustRun("foster", "--cred", bob, "model", "add", "edge-gw")

	audit := env.MustRun("foster", "--cred", bob, "admin", "list", "--json").Stdout
	if !strings.Contains(audit, `"status": "revoked"`) || !strings.Contains(audit, `"status": "superseded"`) {
		t.Fatalf("admin list does not show revoked and superseded credentials:\n%s", audit)
	}
	pair, err := tls.X509KeyPair([]byte(bundleField(t, bob, "certificate")), []byte(bundleField(t, bob, "key")))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	resp, err := env.HTTPClient(caPEM, &pair).Get(env.URL + "/v1/audit")
	if err != nil {
		t.Fatal(err)
	}
	var events []struct{ Actor, Action string }
	json.NewDecoder(resp.Body).Decode(&events)
	resp.Body.Close()
	var got []string
	for _, e := range events {
		got = append(got, e.Actor+" "+e.Action)
	}
	for _, want := range []string{"urn:foster:admin:admin admin.renew", "urn:foster:admin:admin admin.supersede", "urn:foster:auditor:alice admin.renew", "urn:foster:admin:bob admin.revoke"} {
		if !strings.Contains(strings.Join(got, "\n"), want) {
			t.Fatalf("audit trail lacks %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

func bundleField(t *testing.T, path, field string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m[field].(string)
	return s
}

// servedSerial is the serial of the certificate fosterd presents now.
func (e *Env) servedSerial() string {
	e.t.Helper()
	caPEM, _ := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Time: func() time.Time { return time.Now().Add(e.Clock) }})
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

// TestServerCertificateReplacedAndReloadedOnSIGHUP: an operator replaces
// server.crt/server.key and sends SIGHUP; the running fosterd serves the new
// certificate, without a restart. A broken replacement is refused and the
// current certificate kept.
func TestServerCertificateReplacedAndReloadedOnSIGHUP(t *testing.T) {
	env := NewEnv(t)
	pid := env.daemon.Process.Pid
	before := env.servedSerial()
	authority, err := ca.Open(env.DataDir, ca.Options{ServerValidity: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := authority.IssueServer(context.Background(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	authority.Close()
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(chain, key)
	want := pair.Leaf.SerialNumber.Text(16)
	crt, keyPath := filepath.Join(env.DataDir, "server.crt"), filepath.Join(env.DataDir, "server.key")
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crt, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := env.servedSerial(); got != before {
		t.Fatalf("fosterd switched to %s before SIGHUP", got)
	}
	hangup := func() {
		if err := env.daemon.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	hangup()
	deadline := time.Now().Add(10 * time.Second)
	for env.servedSerial() != want {
		if time.Now().After(deadline) {
			t.Fatalf("fosterd still serves %s 10 s after SIGHUP, want %s", env.servedSerial(), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.WriteFile(crt, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	hangup()
	time.Sleep(500 * time.Millisecond)
	if got := env.servedSerial(); got != want || env.daemon.Process.Pid != pid || !env.healthy() {
		t.Fatalf("after a broken replacement: serving %s (want %s), healthy %v", got, want, env.healthy())
	}
}
