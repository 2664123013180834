package instance_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/store"
)

func newInstance(t *testing.T) (string, instance.Paths) {
	t.Helper()
	dir := t.TempDir()
	if _, err := instance.Init(context.Background(), dir, instance.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir, instance.PathsOf(dir)
}

// writeServerCert replaces the instance's server certificate with one this
// CA issues with the given lifetime.
func writeServerCert(t *testing.T, dir string, life time.Duration) *x509.Certificate {
	t.Helper()
	authority, err := ca.Open(dir, ca.Options{ServerValidity: life})
	if err != nil {
		t.Fatal(err)
	}
	defer authority.Close()
	chain, key, err := authority.IssueServer(context.Background(), []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := instance.PathsOf(dir)
	if err := atomicfile.WritePair(p.ServerCert, chain, p.ServerKey, key); err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(chain, key)
	return pair.Leaf
}

func serve(t *testing.T, dir string, checkEvery time.Duration) (*instance.Instance, string) {
	t.Helper()
	in, err := instance.Open(context.Background(), dir, instance.Overrides{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.CertCheckInterval = checkEvery
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; in.Close() })
	return in, ln.Addr().String()
}

// presented is the certificate a TLS client that trusts the Foster root
// sees at addr now.
func presented(t *testing.T, in *instance.Instance, addr string) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: in.CA.RootPool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// fosterd's own certificate must not lapse: one that reaches two thirds of
// its life is replaced, on disk and on the listener, without a restart.
func TestServerCertificateNearExpiryIsRenewedWithoutRestart(t *testing.T) {
	dir, p := newInstance(t)
	// 35 s of validity plus the CA's one minute of backdating: two thirds of
	// its life pass about 3 s after issuance.
	short := writeServerCert(t, dir, 35*time.Second)
	in, addr := serve(t, dir, 200*time.Millisecond)
	if got := presented(t, in, addr); got.SerialNumber.Cmp(short.SerialNumber) != 0 {
		t.Fatalf("serving %x before renewal, want %x", got.SerialNumber, short.SerialNumber)
	}
	deadline := time.Now().Add(30 * time.Second)
	var got *x509.Certificate
	for {
		got = presented(t, in, addr)
		if got.SerialNumber.Cmp(short.SerialNumber) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving %x at %s (expires %s)", got.SerialNumber, time.Now(), short.NotAfter)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got.NotAfter.Sub(got.NotBefore) < 300*24*time.Hour || !slicesEqual(got.DNSNames, short.DNSNames) || len(got.IPAddresses) != len(short.IPAddresses) {
		t.Fatalf("renewed certificate: names %v %v, valid %s to %s", got.DNSNames, got.IPAddresses, got.NotBefore, got.NotAfter)
	}
	pair, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	if pair.Leaf.SerialNumber.Cmp(got.SerialNumber) != 0 {
		t.Fatalf("server.crt holds %x, the listener serves %x", pair.Leaf.SerialNumber, got.SerialNumber)
	}
}

// A replaced server.crt/server.key is served after a reload (fosterd's
// SIGHUP); a broken or expired replacement is refused and the current
// certificate kept.
func TestServerCertificateReloadKeepsServingOnBadReplacement(t *testing.T) {
	dir, p := newInstance(t)
	in, addr := serve(t, dir, time.Hour)
	first := presented(t, in, addr)
	if err := os.WriteFile(p.ServerCert, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := in.ReloadServerCertificate(); err == nil {
		t.Fatal("a broken server.crt was accepted")
	}
	if got := presented(t, in, addr); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("a refused reload changed the certificate to %x", got.SerialNumber)
	}
	next := writeServerCert(t, dir, 24*time.Hour)
	if err := in.ReloadServerCertificate(); err != nil {
		t.Fatal(err)
	}
	if got := presented(t, in, addr); got.SerialNumber.Cmp(next.SerialNumber) != 0 {
		t.Fatalf("after reload serving %x, want %x", got.SerialNumber, next.SerialNumber)
	}
}

// An instance created before admin credentials were recorded has an
// admin.crt the store does not know; fosterd records it at startup so it
// keeps working and can be listed and revoked.
func TestLegacyInitAdminIsRecordedAtStartup(t *testing.T) {
	dir, p := newInstance(t)
	raw, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "foster.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`DELETE FROM certificates`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	in, err := instance.Open(context.Background(), dir, instance.Overrides{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	pair, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := in.Store.ListAdminCredentials(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 1 || creds[0].Serial != pair.Leaf.SerialNumber.Text(16) || creds[0].Name != "admin" ||
		creds[0].Status != store.CredentialActive || creds[0].IssuedVia != store.IssuedViaInit {
		t.Fatalf("credentials after startup: %+v", creds)
	}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A config.json with a TUF lifetime out of bounds does not open: fosterd
// refuses to start, naming the setting.
func TestOpenRefusesBadTUFLifetimes(t *testing.T) {
	dir, p := newInstance(t)
	cfg, err := instance.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TUFLifetimes = instance.TUFLifetimes{Timestamp: "30s"}
	writeConfig(t, p.Config, cfg)
	if in, err := instance.Open(context.Background(), dir, instance.Overrides{}, nil, nil); err == nil {
		in.Close()
		t.Fatal("opened an instance with a 30s timestamp lifetime")
	} else if !strings.Contains(err.Error(), "tuf_lifetimes.timestamp 30s") {
		t.Fatalf("error does not name the setting: %v", err)
	}
	cfg.TUFLifetimes = instance.TUFLifetimes{Timestamp: "10m", Snapshot: "1h", Delegated: "48h"}
	writeConfig(t, p.Config, cfg)
	in, err := instance.Open(context.Background(), dir, instance.Overrides{}, nil, nil)
	if err != nil {
		t.Fatalf("valid lifetimes: %v", err)
	}
	in.Close()
}

func writeConfig(t *testing.T, path string, cfg *instance.Config) {
	t.Helper()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
