package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// BenchmarkEnrollHTTP measures device enrollments per second through the
// real HTTP API (TLS, JSON, token verification, CSR checks, step-ca
// issuance, the store transaction) with a load generator of concurrent
// clients sending real tokens and CSRs prepared beforehand (key generation
// and CSR signing happen on devices, so they are not timed). In the same
// run it measures the raw rate of x509.CreateCertificate on all cores, and
// reports enrollments/s as a percentage of it. After the run every returned
// certificate must be recorded in the store.
//
//	go test -run '^$' -bench BenchmarkEnrollHTTP -benchtime 10000x ./ota/server/
func BenchmarkEnrollHTTP(b *testing.B) {
	for _, tc := range []struct {
		name    string
		backend string
		token   string
	}{
		{"sqlite/station-jwt", "sqlite", "station"},
		{"sqlite/admin-token", "sqlite", "admin"},
		{"postgres/station-jwt", "postgres", "station"},
		{"postgres/admin-token", "postgres", "admin"},
		// Each enrollment charges its station's quota row, which PostgreSQL
		// keeps locked until the commit: one station's enrollments commit one
		// after another; several stations' in parallel.
		{"postgres/station-jwt-4-stations", "postgres", "station4"},
	} {
		b.Run(tc.name, func(b *testing.B) { benchEnroll(b, tc.backend, tc.token) })
	}
}

const benchClients = 64

func benchEnroll(b *testing.B, backend, tokenKind string) {
	f := newBenchEnv(b, backend)
	ctx := context.Background()

	// Devices: keys, CSRs and tokens, prepared off the clock.
	bodies := make([][]byte, b.N)
	var stations []cred
	switch tokenKind {
	case "station":
		stations = []cred{f.station(b, "line-1", int64(b.N)+1)}
	case "station4":
		for i := range 4 {
			stations = append(stations, f.station(b, fmt.Sprintf("line-%d", i+1), int64(b.N)+1))
		}
	}
	var wg sync.WaitGroup
	var next atomic.Int64
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				serial := fmt.Sprintf("SN-%08d", i)
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}}, key)
				var tok string
				if len(stations) > 0 {
					tok = benchStationToken(b, stations[i%len(stations)], serial)
				} else {
					tok = fmt.Sprintf("fst_bench%08d", i)
					if err := f.in.Store.CreateToken(ctx, store.Token{Hash: hashTok(tok), Serial: serial, Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
						panic(err)
					}
				}
				bodies[i], _ = json.Marshal(map[string]string{"token": tok, "serial": serial, "model": "edge-gw", "csr": string(pemCSR(csr))})
			}
		}()
	}
	wg.Wait()

	client := f.anon
	url := f.srv.URL + "/v1/enroll"
	serials := make([]string, b.N)
	var failed atomic.Int64
	next.Store(0)
	rawBefore, rawCPUBefore := rawCreateCertificateRate(b, 2*time.Second, runtime.GOMAXPROCS(0))
	raw1Before, _ := rawCreateCertificateRate(b, time.Second, 1)
	runtime.GC()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				resp, err := client.Post(url, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					failed.Add(1)
					continue
				}
				var out struct{ Certificate string }
				err = json.NewDecoder(resp.Body).Decode(&out)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated || err != nil {
					failed.Add(1)
					continue
				}
				// Bookkeeping only (the nothing-lost check): the leaf's serial.
				blk, _ := pem.Decode([]byte(out.Certificate))
				if blk == nil {
					failed.Add(1)
					continue
				}
				leaf, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					failed.Add(1)
					continue
				}
				serials[i] = leaf.SerialNumber.Text(16)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	rawAfter, rawCPUAfter := rawCreateCertificateRate(b, 2*time.Second, runtime.GOMAXPROCS(0))
	raw1After, _ := rawCreateCertificateRate(b, time.Second, 1)

	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d enrollments failed", n, b.N)
	}
	// Nothing lost: every certificate handed out is recorded.
	recorded, err := f.in.Store.ListCertificates(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	inStore := map[string]bool{}
	for _, c := range recorded {
		inStore[c.Serial] = true
	}
	for i, s := range serials {
		if !inStore[s] {
			b.Fatalf("certificate %s of device %d is not in the store", s, i)
		}
	}
	// The machine is shared: wall-clock rates move with other load, so the
	// raw rate is measured just before and just after, and CPU time per
	// operation (this process, load generator included) is reported too.
	rate := float64(b.N) / elapsed.Seconds()
	raw := (rawBefore + rawAfter) / 2
	cpuPerEnroll := cpu.Seconds() / float64(b.N)
	cpuPerRaw := (rawCPUBefore + rawCPUAfter) / 2
	b.ReportMetric(rate, "enrollments/s")
	b.ReportMetric(raw, "raw-certs/s")
	b.ReportMetric(100*rate/raw, "%-of-raw")
	// What a plain `go test -bench` of x509.CreateCertificate reports: one
	// goroutine, so one core.
	raw1 := (raw1Before + raw1After) / 2
	b.ReportMetric(raw1, "raw-1-goroutine-certs/s")
	b.ReportMetric(100*rate/raw1, "%-of-raw-1-goroutine")
	b.ReportMetric(cpuPerEnroll*1e3, "cpu-ms/enrollment")
	b.ReportMetric(cpuPerRaw*1e3, "cpu-ms/raw-cert")
	b.ReportMetric(100*cpuPerRaw/cpuPerEnroll, "%-of-raw-by-cpu")
	b.ReportMetric(0, "ns/op") // the rates above are the result
}

// cpuTime is this process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchEnv is a real instance behind a real TLS listener, on SQLite or on a
// fresh schema of the test PostgreSQL.
type benchEnv struct {
	in          *instance.Instance
	srv         *httptest.Server
	admin, anon *http.Client
}

func newBenchEnv(b *testing.B, backend string) *benchEnv {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	cfg, err := instance.Init(ctx, dir, instance.InitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if backend == "postgres" {
		cfg.DB = benchPostgres(b)
		raw, _ := json.Marshal(cfg)
		if err := os.WriteFile(instance.PathsOf(dir).Config, raw, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	in, err := instance.Open(ctx, dir, instance.Overrides{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close() })
	srv := httptest.NewUnstartedServer(in.API.Handler())
	srv.TLS = in.TLS
	srv.EnableHTTP2 = true
	srv.StartTLS()
	b.Cleanup(srv.Close)
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		b.Fatal(err)
	}
	mk := func(c *tls.Certificate) *http.Client {
		tc := &tls.Config{RootCAs: in.CA.RootPool(), ServerName: "localhost"}
		if c != nil {
			tc.Certificates = []tls.Certificate{*c}
		}
		return &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: benchClients}}
	}
	e := &benchEnv{in: in, srv: srv, admin: mk(&cert), anon: mk(nil)}
	e.post(b, e.admin, "/v1/models", `{"name":"edge-gw"}`, nil)
	return e
}

func (e *benchEnv) post(b *testing.B, c *http.Client, path, body string, out any) {
	resp, err := c.Post(e.srv.URL+path, "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		b.Fatalf("POST %s: %d %s", path, resp.StatusCode, raw)
	}
	if out != nil {
		json.Unmarshal(raw, out)
	}
}

func (e *benchEnv) station(b *testing.B, name string, quota int64) cred {
	var out struct{ Certificate, Key string }
	e.post(b, e.admin, "/v1/stations", fmt.Sprintf(`{"name":%q,"quota":%d,"models":["edge-gw"]}`, name, quota), &out)
	pair, err := tls.X509KeyPair([]byte(out.Certificate), []byte(out.Key))
	if err != nil {
		b.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, _ := x509.ParseCertificate(der)
		chain = append(chain, c)
	}
	return cred{chain: chain, key: pair.PrivateKey.(crypto.Signer)}
}

// benchPostgres creates a fresh schema in the test PostgreSQL (skipping
// when it is unreachable) and returns a DSN that uses it.
func benchPostgres(b *testing.B) string {
	base := storetest.PostgresBase()
	db, err := sql.Open("pgx", base)
	if err == nil {
		err = db.Ping()
	}
	if err != nil {
		b.Skipf("PostgreSQL at %s unreachable: %v", base, err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	schema := fmt.Sprintf("foster_bench_%x", rnd)
	if _, err := db.Exec("CREATE SCHEMA " + schema); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		db.Exec("DROP SCHEMA " + schema + " CASCADE")
		db.Close()
	})
	return base + "&search_path=" + schema
}

func hashTok(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func pemCSR(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func benchStationToken(b *testing.B, st cred, serial string) string {
	p, _ := identity.FromCertificate(st.chain[0])
	now := time.Now()
	tok, err := x5ctoken.Sign(st.chain, st.key, x5ctoken.Claims{Issuer: p.URI(), Subject: identity.Device("edge-gw", serial).URI(),
		Audience: x5ctoken.EnrollAudience, IssuedAt: now, Expiry: now.Add(time.Hour)})
	if err != nil {
		panic(err)
	}
	return tok
}

// rawCreateCertificateRate is x509.CreateCertificate calls per second by
// workers goroutines for d: a P-256 leaf signed by a P-256 CA, the work at the heart
// of an enrollment with nothing around it.
func rawCreateCertificateRate(b *testing.B, d time.Duration, workers int) (perSecond, cpuSecondsEach float64) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		b.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); time.Now().Before(deadline); i++ {
				tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(w)<<40 | i), Subject: pkix.Name{CommonName: "SN-1"},
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
					ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
				if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, leafKey.Public(), caKey); err != nil {
					panic(err)
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds() / float64(n.Load())
}
