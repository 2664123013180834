package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// lockedBuffer collects fosterd's log lines across handler goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// eachBackend runs fn against a fosterd instance on SQLite and on PostgreSQL.
func eachBackend(t *testing.T, fn func(t *testing.T, f *fixture, log *lockedBuffer)) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var ov instance.Overrides
			if backend == "postgres" {
				ov.DB = storetest.PostgresDSN(t)
			}
			dir := t.TempDir()
			if _, err := instance.Init(context.Background(), dir, instance.InitOptions{}); err != nil {
				t.Fatal(err)
			}
			log := &lockedBuffer{}
			f := serveInstanceLog(t, dir, ov, slog.New(slog.NewTextHandler(log, nil)))
			f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
			fn(t, f, log)
		})
	}
}

// refusalsOf returns what `foster device show` lists as refused enrollments.
func (f *fixture) refusalsOf(serial string) []json.RawMessage {
	f.t.Helper()
	var d struct{ Refusals []json.RawMessage }
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/devices/urn:foster:device:edge-gw:"+serial, nil, 200), &d)
	return d.Refusals
}

// TestEnrollRetryAfterLostResponse: the enrollment committed but its
// response never reached the device; the device retries with the same
// token and key and gets exactly what the first attempt answered, while
// nothing new is issued, spent or charged, and the replay is logged.
func TestEnrollRetryAfterLostResponse(t *testing.T) {
	eachBackend(t, func(t *testing.T, f *fixture, log *lockedBuffer) {
		line1 := f.station(stationSpec{name: "line-1", quota: 1})
		for _, tc := range []struct {
			name, serial, token string
		}{
			{"admin token", "SN-0001", f.token("SN-0001", "edge-gw")},
			{"station token at its station's last unit", "SN-0002", stationToken(t, line1, "SN-0002", "edge-gw")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				key := newKey(t)
				body := []byte(enrollBody(tc.token, tc.serial, "edge-gw", csrPEM(t, key, tc.serial)))
				first := f.do(f.anon, "POST", "/v1/enroll", body)
				if first.status != 201 {
					t.Fatalf("enroll: %d %s", first.status, first.body)
				}
				before := f.issuedState()
				// A fresh CSR for the same key: the CSR's signature is what
				// proves the key, not the bytes of the first request.
				for _, retry := range [][]byte{body, []byte(enrollBody(tc.token, tc.serial, "edge-gw", csrPEM(t, key, tc.serial)))} {
					r := f.do(f.anon, "POST", "/v1/enroll", retry)
					if r.status != 201 || !bytes.Equal(r.body, first.body) {
						t.Fatalf("retry: %d %s\nwant 201 %s", r.status, r.body, first.body)
					}
				}
				if !f.issuedState().equal(before) {
					t.Fatalf("a replay issued or charged something: %+v, was %+v", f.issuedState(), before)
				}
				var out struct{ Certificate string }
				json.Unmarshal(first.body, &out)
				dev := f.withKey(out.Certificate, key)
				if r := f.do(dev.client, "GET", "/tuf/timestamp.json", nil); r.status != 200 {
					t.Fatalf("replayed certificate over mTLS: %d %s", r.status, r.body)
				}
				if n := len(f.refusalsOf(tc.serial)); n != 0 {
					t.Fatalf("a replay was recorded as %d refusals", n)
				}
			})
		}
		if got := strings.Count(log.String(), "device enrollment replayed"); got != 4 {
			t.Fatalf("%d replays logged, want 4:\n%s", got, log.String())
		}
	})
}

// TestEnrollReplayIsNotAClone: a spent token with another key (a clone, or a
// stolen token) is refused as before (409 token_used, nothing issued, no
// refusal recorded), and so is the original key after the device was
// revoked or renewed since.
func TestEnrollReplayIsNotAClone(t *testing.T) {
	eachBackend(t, func(t *testing.T, f *fixture, log *lockedBuffer) {
		line1 := f.station(stationSpec{name: "line-1", quota: 10})
		type enrolled struct {
			serial string
			cred   cred
		}
		// enroll enrolls serial and returns a retry of that enrollment, with
		// the same key or another one.
		enroll := func(serial, token string) (enrolled, func(sameKey bool) []byte) {
			key := newKey(t)
			body := []byte(enrollBody(token, serial, "edge-gw", csrPEM(t, key, serial)))
			var out struct{ Certificate string }
			json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", json.RawMessage(body), 201), &out)
			retry := func(sameKey bool) []byte {
				if sameKey {
					return body
				}
				return []byte(enrollBody(token, serial, "edge-gw", csrPEM(t, newKey(t), serial)))
			}
			return enrolled{serial: serial, cred: f.withKey(out.Certificate, key)}, retry
		}
		tests := []struct {
			name     string
			token    func(serial string) string
			sameKey  bool
			after    func(e enrolled)
			wantCode string
		}{
			{"admin token, another key", func(s string) string { return f.token(s, "edge-gw") }, false, nil, "token_used"},
			{"station token, another key", func(s string) string { return stationToken(t, line1, s, "edge-gw") }, false, nil, "token_used"},
			{"admin token, device revoked", func(s string) string { return f.token(s, "edge-gw") }, true, func(e enrolled) {
				f.mustJSON(f.admin, "POST", "/v1/devices/"+e.serial+"/revoke", map[string]string{"reason": "keyCompromise"}, 200)
			}, "token_used"},
			{"station token, device revoked", func(s string) string { return stationToken(t, line1, s, "edge-gw") }, true, func(e enrolled) {
				f.mustJSON(f.admin, "POST", "/v1/devices/"+e.serial+"/revoke", map[string]string{"reason": "keyCompromise"}, 200)
			}, "token_used"},
			{"station token, device renewed", func(s string) string { return stationToken(t, line1, s, "edge-gw") }, true, func(e enrolled) {
				f.mustJSON(e.cred.client, "POST", "/v1/renew", map[string]string{"csr": csrPEM(t, e.cred.key.(*ecdsa.PrivateKey), e.serial)}, 201)
			}, "token_used"},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				serial := "SN-01" + string(rune('0'+i)) + "0"
				e, retry := enroll(serial, tt.token(serial))
				if tt.after != nil {
					tt.after(e)
				}
				before, refusals := f.issuedState(), len(f.refusalsOf(serial))
				r := f.do(f.anon, "POST", "/v1/enroll", retry(tt.sameKey))
				if r.status != 409 || r.code() != tt.wantCode {
					t.Fatalf("got %d %s, want 409 %s", r.status, r.body, tt.wantCode)
				}
				if !f.issuedState().equal(before) || len(f.refusalsOf(serial)) != refusals {
					t.Fatal("a refused replay changed the store")
				}
			})
		}
		if strings.Contains(log.String(), "device enrollment replayed") {
			t.Fatalf("a refusal was logged as a replay:\n%s", log.String())
		}
	})
}
