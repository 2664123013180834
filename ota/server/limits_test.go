package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/identity"
)

// limitedFixture is an instance served exactly as fosterd serves it
// (server.HTTPServer on server.LimitListener), with config.json "http"
// settings httpCfg.
func limitedFixture(t *testing.T, httpCfg map[string]any, ov instance.Overrides) *fixture {
	t.Helper()
	dir := t.TempDir()
	if _, err := instance.Init(context.Background(), dir, instance.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	path := instance.PathsOf(dir).Config
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	json.Unmarshal(raw, &cfg)
	cfg["http"] = httpCfg
	raw, _ = json.Marshal(cfg)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := instance.Open(context.Background(), dir, ov, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := in.API.HTTPServer(in.TLS, log.New(io.Discard, "", 0))
	go hs.ServeTLS(in.API.LimitListener(ln), "", "")
	t.Cleanup(func() { hs.Close() })
	f := &fixture{t: t, in: in, srv: &httptest.Server{URL: "https://" + ln.Addr().String()}, pool: in.CA.RootPool()}
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	f.admin, f.anon = f.client(&cert), f.client(nil)
	return f
}

// protoClient is a client speaking HTTP/1.1 or HTTP/2 only, with a small
// socket receive buffer (so a slow reader really holds the server back),
// dialling from localAddr ("" for any).
func (f *fixture) protoClient(proto, localAddr string, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
	}}
	if localAddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localAddr)}
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: d.DialContext}
	if proto == "h2" {
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
	}
	return &http.Client{Timeout: 60 * time.Second, Transport: tr}
}

// trickle is a body that sends n bytes, step bytes every pause.
type trickle struct {
	n, step int
	pause   time.Duration
	sent    int
}

func (r *trickle) Read(p []byte) (int, error) {
	if r.sent >= r.n {
		return 0, io.EOF
	}
	if r.sent > 0 && r.sent%r.step == 0 {
		time.Sleep(r.pause)
	}
	k := min(r.step-r.sent%r.step, r.n-r.sent, len(p))
	for i := range k {
		p[i] = byte(r.sent + i)
	}
	r.sent += k
	return k, nil
}

func metricValue(t *testing.T, f *fixture, series string) float64 {
	t.Helper()
	r := f.do(f.admin, "GET", "/metrics", nil)
	for line := range strings.SplitSeq(string(r.body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// TestSlowBodyToEnrollIsCut: an anonymous client trickling a body to
// /v1/enroll, one byte at a time, is cut at the read timeout (here 1 s;
// fosterd's default is 20 s), over HTTP/1.1 and HTTP/2, instead of holding
// its connection for as long as it likes.
func TestSlowBodyToEnrollIsCut(t *testing.T) {
	f := limitedFixture(t, map[string]any{"read_timeout": "1s"}, instance.Overrides{})
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			c := f.protoClient(proto, "", nil)
			body := &trickle{n: 1000, step: 1, pause: 200 * time.Millisecond} // 200 s if never cut
			start := time.Now()
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/enroll", body)
			req.ContentLength = int64(body.n)
			resp, err := c.Do(req)
			took := time.Since(start)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode < 400 {
					t.Fatalf("slow body answered %d %s", resp.StatusCode, b)
				}
			}
			if took > 5*time.Second {
				t.Fatalf("slow body held the request for %v (err %v)", took, err)
			}
			if proto == "http1" && body.sent >= body.n {
				t.Fatalf("the whole body was read")
			}
			t.Logf("%s: cut after %v, %d bytes sent (%v)", proto, took.Round(time.Millisecond), body.sent, err)
		})
	}
	if got := metricValue(t, f, "foster_http_body_timeouts_total"); got < 2 {
		t.Fatalf("foster_http_body_timeouts_total = %v, want 2", got)
	}
}

// TestSlowButFlowingUploadAndDownloadOutlastTimeouts: with a 1 s read and
// write timeout, a 24 MiB release upload and download that each take about
// 3 s but keep moving data succeed, over HTTP/1.1 and HTTP/2 (the timeouts
// must not cut a 4 GiB release or a slow device's download).
func TestSlowButFlowingUploadAndDownloadOutlastTimeouts(t *testing.T) {
	f := limitedFixture(t, map[string]any{"read_timeout": "1s", "write_timeout": "1s", "transfer_window": "1s"},
		instance.Overrides{PublicRepository: true})
	p := instance.PathsOf(f.in.Dir)
	admin, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	const size = 24 << 20
	for _, proto := range []string{"http1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			model := "gw-" + proto
			f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": model}, 201)
			body := &trickle{n: size, step: 256 << 10, pause: 32 * time.Millisecond} // ~8 MiB/s: ~3 s
			start := time.Now()
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/releases?model="+model+"&version=1.0.0&name=fw.bin", body)
			req.ContentLength = size
			resp, err := f.protoClient(proto, "", &admin).Do(req)
			if err != nil {
				t.Fatalf("upload: %v", err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 201 {
				t.Fatalf("upload after %v: %d %s", time.Since(start), resp.StatusCode, out)
			}
			var rel struct{ SHA256 string }
			json.Unmarshal(out, &rel)
			t.Logf("upload of %d MiB took %v", size>>20, time.Since(start).Round(time.Millisecond))

			start = time.Now()
			resp, err = f.protoClient(proto, "", nil).Get(f.srv.URL + "/targets/" + model + "/1.0.0/" + rel.SHA256 + ".fw.bin")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			buf := make([]byte, 256<<10)
			for {
				n, err := io.ReadFull(resp.Body, buf)
				h.Write(buf[:n])
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("download cut after %v: %v", time.Since(start), err)
					}
					break
				}
				time.Sleep(32 * time.Millisecond)
			}
			if got := fmt.Sprintf("%x", h.Sum(nil)); resp.StatusCode != 200 || got != rel.SHA256 {
				t.Fatalf("download after %v: %d, sha256 %s, want %s", time.Since(start), resp.StatusCode, got, rel.SHA256)
			}
			t.Logf("download of %d MiB took %v", size>>20, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestConnectionCapHolds: with max_connections 3, three idle connections
// fill fosterd; a fourth is not served until one of them closes.
func TestConnectionCapHolds(t *testing.T) {
	f := limitedFixture(t, map[string]any{"max_connections": 3}, instance.Overrides{})
	addr := strings.TrimPrefix(f.srv.URL, "https://")
	cfg := &tls.Config{RootCAs: f.pool, ServerName: "localhost"}
	dial := func() (*tls.Conn, error) {
		raw, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, cfg)
		c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		if err := c.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
	var held []*tls.Conn
	for i := range 3 {
		c, err := dial()
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		held = append(held, c)
	}
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("a fourth connection was served while three were open")
	}
	held[0].Close()
	var c *tls.Conn
	var err error
	for range 5 { // the slot frees as soon as fosterd sees the close
		if c, err = dial(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("no connection after one closed: %v", err)
	}
	c.Close()
	for _, c := range held[1:] {
		c.Close()
	}
	if got := metricValue(t, f, "foster_http_connection_limit_waits_total"); got < 1 {
		t.Fatalf("foster_http_connection_limit_waits_total = %v", got)
	}
}

// TestRepeatedFailedEnrollmentsAreThrottledPerAddress: a client guessing
// enrollment tokens from one address gets 429 throttled with Retry-After
// after its burst of failures, even for a valid request, while a device at
// another address enrolls as usual, as many times as it succeeds.
func TestRepeatedFailedEnrollmentsAreThrottledPerAddress(t *testing.T) {
	f := limitedFixture(t, map[string]any{"throttle_burst": 3, "throttle_every": "10s"}, instance.Overrides{})
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	attacker, honest := f.protoClient("http1", "127.0.0.1", nil), f.protoClient("http1", "127.0.0.2", nil)
	enroll := func(c *http.Client, serial, token string) (*http.Response, apiResp) {
		key := newKey(t)
		b, _ := json.Marshal(map[string]string{"token": token, "serial": serial, "model": "edge-gw", "csr": csrPEM(t, key, serial)})
		resp, err := c.Post(f.srv.URL+"/v1/enroll", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, apiResp{resp.StatusCode, body}
	}
	for i := range 3 {
		if _, r := enroll(attacker, "SN-X", fmt.Sprintf("fst_guess%d", i)); r.status != 401 {
			t.Fatalf("guess %d: %d %s", i, r.status, r.body)
		}
	}
	resp, r := enroll(attacker, "SN-A", f.token("SN-A", "edge-gw"))
	secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if r.status != 429 || r.code() != "throttled" || secs < 1 || secs > 10 {
		t.Fatalf("after 3 failures: %d %s, Retry-After %q", r.status, r.body, resp.Header.Get("Retry-After"))
	}
	for i := range 5 {
		serial := fmt.Sprintf("SN-B%d", i)
		if _, r := enroll(honest, serial, f.token(serial, "edge-gw")); r.status != 201 {
			t.Fatalf("honest device at another address: %d %s", r.status, r.body)
		}
	}
	if got := metricValue(t, f, `foster_http_throttled_total{route="POST /v1/enroll"}`); got != 1 {
		t.Fatalf("foster_http_throttled_total = %v, want 1", got)
	}
	if f.deviceCount() != 5 {
		t.Fatalf("%d devices, want the 5 honest ones", f.deviceCount())
	}
}

// TestUnauthenticatedMetricsAreRefused: /metrics on the API listener needs
// an admin or auditor certificate.
func TestUnauthenticatedMetricsAreRefused(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, _ := f.enrolled("SN-1")
	tests := []struct {
		name string
		c    *http.Client
		want int
	}{
		{"anonymous", f.anon, 401},
		{"device", dev, 403},
		{"station", f.principalClient(identity.Principal{Role: identity.RoleStation, Name: "line-1"}), 403},
		{"auditor", f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "eve"}), 200},
		{"admin", f.admin, 200},
	}
	for _, tt := range tests {
		r := f.do(tt.c, "GET", "/metrics", nil)
		if r.status != tt.want || (r.status == 200) != strings.Contains(string(r.body), "foster_http_requests_total") {
			t.Errorf("%s: %d %.80s, want %d", tt.name, r.status, r.body, tt.want)
		}
	}
}

// TestTLS12CBCSuiteIsRefused: a client offering only a CBC-mode (SHA-1
// MAC) suite in TLS 1.2 gets no connection; an AEAD suite works.
func TestTLS12CBCSuiteIsRefused(t *testing.T) {
	f := newFixture(t)
	addr := strings.TrimPrefix(f.srv.URL, "https://")
	hello := func(suite uint16) (uint16, error) {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: f.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.ConnectionState().CipherSuite, nil
	}
	for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256} {
		if got, err := hello(suite); err == nil {
			t.Errorf("%s: negotiated %s", tls.CipherSuiteName(suite), tls.CipherSuiteName(got))
		}
	}
	for _, suite := range []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256} {
		if got, err := hello(suite); err != nil || got != suite {
			t.Errorf("%s: %s, %v", tls.CipherSuiteName(suite), tls.CipherSuiteName(got), err)
		}
	}
}
