package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/signing"
)

// TestKeyChangesRefuseBadInputAndChangeNothing: malformed and refused key
// changes get a clear 4xx and leave the key record as it was; a good one is
// audited.
func TestKeyChangesRefuseBadInputAndChangeNothing(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	p384 := filepath.Join(t.TempDir(), "p384.key")
	writeP384(t, p384)
	for _, tt := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"root is a ceremony", "/v1/keys/tuf", `{"role":"root","key":"keys/x.key"}`, 400, "bad_request"},
		{"no key", "/v1/keys/tuf", `{"role":"timestamp"}`, 400, "bad_request"},
		{"key and generate", "/v1/keys/tuf", `{"role":"timestamp","key":"keys/x.key","generate":true}`, 400, "bad_request"},
		{"unknown field", "/v1/keys/tuf", `{"role":"timestamp","key":"keys/x.key","threshold":2}`, 400, "bad_request"},
		{"missing key file", "/v1/keys/tuf", `{"role":"timestamp","key":"keys/missing.key"}`, 400, "key_refused"},
		{"P-384 key", "/v1/keys/tuf", `{"role":"snapshot","key":"` + p384 + `"}`, 400, "key_refused"},
		{"the current key again", "/v1/keys/tuf", `{"role":"timestamp","key":"keys/tuf-timestamp.key"}`, 400, "key_refused"},
		{"another role's key", "/v1/keys/tuf", `{"role":"timestamp","key":"keys/tuf-snapshot.key"}`, 400, "key_refused"},
		{"not a certificate", "/v1/keys/intermediate", `{"certificate":"hello","key":"keys/intermediate_ca.key"}`, 400, "key_refused"},
		{"the root as intermediate", "/v1/keys/intermediate", `{"certificate":` + jsonString(t, f.in.Dir, "ca.pem") + `,"key":"keys/root_ca.key"}`, 400, "key_refused"},
		{"no certificate", "/v1/keys/intermediate", `{"key":"keys/intermediate_ca.key"}`, 400, "bad_request"},
	} {
		r := f.do(f.admin, "POST", tt.path, []byte(tt.body))
		if r.status != tt.status || r.code() != tt.code {
			t.Errorf("%s: %d %s, want %d %s", tt.name, r.status, r.body, tt.status, tt.code)
		}
	}
	var st server.KeyStatus
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/keys", nil, 200), &st)
	if st.Version != 0 || len(st.TUF) != 3 {
		t.Fatalf("refused changes changed the key record: %+v", st)
	}
	// A good one: fosterd generates the key (it is the only fosterd).
	var held server.HoldKeyResult
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/keys/tuf", map[string]any{"role": "timestamp", "generate": true}, 200), &held)
	if held.Version != 1 || len(held.Replace) != 1 || held.Published {
		t.Fatalf("hold: %+v", held)
	}
	assertAudited(t, f, "keys.tuf.hold")
}

func writeP384(t *testing.T, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.WritePrivateKey(path, k, nil); err != nil {
		t.Fatal(err)
	}
}

func jsonString(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := json.Marshal(string(b))
	return string(s)
}
