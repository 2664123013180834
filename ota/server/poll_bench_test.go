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
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
)

// BenchmarkTimestampPoll: devices polling /tuf/timestamp.json with a
// conditional GET (If-None-Match: the ETag they hold), answered 304 while
// nothing was published, over HTTPS keep-alive connections (64 devices'
// worth). The load generator runs in the same process, on the same cores.
//
//	go test -run '^$' -bench BenchmarkTimestampPoll -benchtime 10s ./ota/server/
func BenchmarkTimestampPoll(b *testing.B) {
	for _, mode := range []struct {
		name   string
		public bool
		cond   bool
	}{
		{"mtls-device/304", false, true},
		{"mtls-device/200", false, false},
		{"public/304", true, true},
		{"public/200", true, false},
	} {
		b.Run(mode.name, func(b *testing.B) {
			benchPolls(b, mode.public, mode.cond)
		})
	}
}

// pollServer is an initialised instance behind a real TLS listener, and
// the TLS client settings of one device (or of anyone, when public).
func pollServer(b *testing.B, public bool) (url string, cfg *tls.Config) {
	url, cfg, _, _ = pollInstance(b, public)
	return url, cfg
}

// pollInstance is pollServer that also returns the instance and an admin
// client.
func pollInstance(b *testing.B, public bool) (url string, cfg *tls.Config, in *instance.Instance, ac *http.Client) {
	ctx := context.Background()
	dir := b.TempDir()
	if _, err := instance.Init(ctx, dir, instance.InitOptions{}); err != nil {
		b.Fatal(err)
	}
	var err error
	in, err = instance.Open(ctx, dir, instance.Overrides{PublicRepository: public}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close() })
	srv := httptest.NewUnstartedServer(in.API.Handler())
	srv.TLS = in.TLS
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	b.Cleanup(srv.Close)
	p := instance.PathsOf(dir)
	admin, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		b.Fatal(err)
	}
	cfg = &tls.Config{RootCAs: in.CA.RootPool(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(128)}
	ac = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: in.CA.RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{admin}}}}
	post := func(c *http.Client, path string, in, out any) {
		body, _ := json.Marshal(in)
		resp, err := c.Post(srv.URL+path, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			msg, _ := io.ReadAll(resp.Body)
			b.Fatalf("%s: %d %s", path, resp.StatusCode, msg)
		}
		if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
	}
	post(ac, "/v1/models", map[string]any{"name": "edge-gw"}, nil)
	if !public {
		var tok struct{ Token string }
		post(ac, "/v1/tokens", map[string]any{"serial": "SN-POLL", "model": "edge-gw"}, &tok)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-POLL"}}, key)
		csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		var out struct{ Certificate string }
		post(&http.Client{Transport: &http.Transport{TLSClientConfig: cfg.Clone()}}, "/v1/enroll", map[string]string{"token": tok.Token, "serial": "SN-POLL", "model": "edge-gw", "csr": csr}, &out)
		var cert tls.Certificate
		rest := []byte(out.Certificate)
		for {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			cert.Certificate = append(cert.Certificate, blk.Bytes)
		}
		cert.PrivateKey = key
		cfg.Certificates = []tls.Certificate{cert}
		// Sessions resumed from the enrollment (no client certificate)
		// would authenticate as nobody.
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(128)
	}
	return srv.URL, cfg, in, ac
}

func benchPolls(b *testing.B, public, cond bool) {
	base, cfg := pollServer(b, public)
	tr := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128, IdleConnTimeout: time.Minute}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	url := base + "/tuf/timestamp.json"
	resp, err := client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	etag := resp.Header.Get("ETag")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || etag == "" {
		b.Fatalf("first poll: %d etag %q", resp.StatusCode, etag)
	}
	want := 200
	if cond {
		want = 304
	}
	b.SetParallelism(32) // 64 concurrent devices on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", url, nil)
			if cond {
				req.Header.Set("If-None-Match", etag)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				b.Errorf("poll: %d, want %d", resp.StatusCode, want)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "polls/s")
}
