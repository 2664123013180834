package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// An outsider against a real fosterd: it cannot negotiate a CBC suite, read
// the metrics, hold a connection with a trickled body, hold more than
// --max-connections connections, or keep guessing enrollment tokens; and
// a device at another address enrolls as usual meanwhile.
func TestOutsiderCannotHoldOrHammerFosterd(t *testing.T) {
	metricsAddr := freeAddr(t)
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	e.StartDaemonWith([]string{"--read-timeout", "2s", "--max-connections", "12", "--metrics-listen", metricsAddr})
	caPEM, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	admin, err := tls.LoadX509KeyPair(filepath.Join(e.DataDir, "admin.crt"), filepath.Join(e.DataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	anon, adminc := e.HTTPClient(caPEM, nil), e.HTTPClient(caPEM, &admin)
	e.Admin("model", "add", "edge-gw")

	// 1. TLS 1.2 with only a CBC suite: no handshake. An AEAD suite works.
	hello := func(suite uint16) error {
		c, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}})
		if err == nil {
			c.Close()
		}
		return err
	}
	if hello(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA) == nil {
		t.Fatal("fosterd negotiated TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA")
	}
	if err := hello(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Fatalf("AEAD suite refused: %v", err)
	}

	// 2. Metrics: not for anonymous callers of the API; for admins there and
	// for anyone on the loopback metrics listener.
	get := func(c *http.Client, url string) (int, string) {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(anon, e.URL+"/metrics"); code != 401 || !strings.Contains(body, `"unauthorized"`) {
		t.Fatalf("anonymous /metrics: %d %s", code, body)
	}
	if code, body := get(adminc, e.URL+"/metrics"); code != 200 || !strings.Contains(body, "foster_http_requests_total") {
		t.Fatalf("admin /metrics: %d %.200s", code, body)
	}
	metric := func(series string) float64 {
		_, body := get(http.DefaultClient, "http://"+metricsAddr+"/metrics")
		for line := range strings.SplitSeq(body, "\n") {
			if rest, ok := strings.CutPrefix(line, series+" "); ok {
				v, _ := strconv.ParseFloat(rest, 64)
				return v
			}
		}
		return 0
	}
	if metric("foster_http_connections_open") < 1 {
		t.Fatal("metrics listener: no foster_http_connections_open")
	}

	// 3. A body trickled to /v1/enroll, a byte every 500 ms, is cut at the
	// read timeout (2 s here; 20 s by default) and its connection closed.
	conn, err := tls.Dial("tcp", e.Addr, &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	io.WriteString(conn, "POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n")
	go func() {
		for range 4096 {
			if _, err := conn.Write([]byte{' '}); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	answer, err := io.ReadAll(conn) // until fosterd closes the connection
	took := time.Since(start)
	conn.Close()
	if took > 10*time.Second || !strings.HasPrefix(string(answer), "HTTP/1.1 400") {
		t.Fatalf("slow body: connection held %v (%v), answer %q", took, err, answer)
	}
	if got := metric("foster_http_body_timeouts_total"); got != 1 {
		t.Fatalf("foster_http_body_timeouts_total = %v", got)
	}

	// 4. Guessing tokens from 127.0.0.1: after the burst (20), 429 with
	// Retry-After; a device at 127.0.0.2 enrolls meanwhile.
	enroll := func(from, serial, token string) (*http.Response, string) {
		csr, _ := os.ReadFile(writeCSR(t, t.TempDir(), "edge-gw", serial))
		body, _ := json.Marshal(map[string]string{"token": token, "serial": serial, "model": "edge-gw", "csr": string(csr)})
		d := &net.Dialer{}
		if from != "127.0.0.1" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: d.DialContext, DisableKeepAlives: true}}
		resp, err := c.Post(e.URL+"/v1/enroll", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	var throttled *http.Response
	for i := 0; i < 40 && throttled == nil; i++ {
		resp, body := enroll("127.0.0.1", "SN-X", "fst_guess"+strconv.Itoa(i))
		switch resp.StatusCode {
		case 401:
		case 429:
			throttled = resp
			if !strings.Contains(body, `"throttled"`) {
				t.Fatalf("429 body: %s", body)
			}
		default:
			t.Fatalf("guess %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if throttled == nil {
		t.Fatal("40 failed guesses from one address, none throttled")
	}
	if s, err := strconv.Atoi(throttled.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", throttled.Header.Get("Retry-After"))
	}
	if resp, body := enroll("127.0.0.2", "SN-1", e.Token("SN-1", "edge-gw")); resp.StatusCode != 201 {
		t.Fatalf("device at another address: %d %s", resp.StatusCode, body)
	}
	if got := metric(`foster_http_throttled_total{route="POST /v1/enroll"}`); got != 1 {
		t.Fatalf("foster_http_throttled_total = %v", got)
	}

	// 5. Connections fill fosterd at --max-connections (12; the clients above
	// hold a few idle ones); the next waits until one closes.
	anon.CloseIdleConnections()
	adminc.CloseIdleConnections()
	dial := func() (*tls.Conn, error) {
		raw, err := net.DialTimeout("tcp", e.Addr, time.Second)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		c.SetDeadline(time.Now().Add(time.Second))
		if err := c.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		return c, nil
	}
	var held []*tls.Conn
	for len(held) <= 12 {
		c, err := dial()
		if err != nil {
			break
		}
		held = append(held, c)
	}
	if len(held) > 12 || len(held) < 10 {
		t.Fatalf("%d connections served at once with --max-connections 12", len(held))
	}
	held[0].Close()
	c, err := dial()
	if err != nil {
		t.Fatalf("no connection after one of the %d closed: %v", len(held), err)
	}
	c.Close()
	for _, c := range held[1:] {
		c.Close()
	}
	if metric("foster_http_connection_limit_waits_total") < 1 {
		t.Fatal("connection limit waits not counted")
	}
}
