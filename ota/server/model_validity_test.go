package server_test

import (
	"encoding/json"
	"testing"
	"time"
)

// TestModelCertValidity: a model's cert_validity_seconds sets the lifetime
// of its devices' certificates at enrollment and at renewal; other models get
// the instance default (90 days); out-of-bounds lifetimes are refused.
func TestModelCertValidity(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	for _, tt := range []struct {
		name    string
		seconds int64
		status  int
	}{
		{"under an hour", 1800, 400},
		{"negative", -3600, 400},
		{"beyond the intermediate", int64((20 * 365 * 24 * time.Hour).Seconds()), 400},
		{"absurd", 1 << 62, 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.admin, "POST", "/v1/models", mustMarshal(map[string]any{"name": "bad-gw", "cert_validity_seconds": tt.seconds}))
			if r.status != tt.status || r.code() != "bad_request" {
				t.Fatalf("%d %s, want %d bad_request", r.status, r.body, tt.status)
			}
		})
	}
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "sensor", "cert_validity_seconds": 720 * 3600}, 201)

	lifetime := func(c cred) time.Duration {
		return c.chain[0].NotAfter.Sub(c.chain[0].NotBefore) - time.Minute // backdate
	}
	if got := lifetime(f.deviceCred("SN-DEF-1")); got != 90*24*time.Hour {
		t.Fatalf("default model: certificate lives %s, want 2160h", got)
	}
	key := newKey(t)
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", map[string]string{"token": f.token("SN-S-1", "sensor"), "serial": "SN-S-1", "model": "sensor", "csr": csrPEM(t, key, "SN-S-1")}, 201), &out)
	dev := f.withKey(out.Certificate, key)
	if got := lifetime(dev); got != 720*time.Hour {
		t.Fatalf("enrollment: certificate lives %s, want 720h", got)
	}
	json.Unmarshal(f.mustJSON(dev.client, "POST", "/v1/renew", map[string]string{"csr": csrPEM(t, key, "SN-S-1")}, 201), &out)
	if got := lifetime(f.withKey(out.Certificate, key)); got != 720*time.Hour {
		t.Fatalf("renewal: certificate lives %s, want 720h", got)
	}
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
