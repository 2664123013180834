package attest

import (
	"encoding/json"
	"reflect"
	"testing"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// FuzzDecodeCommonEnvelope: what the fast decoder accepts, json.Unmarshal
// decodes to the same Envelope.
func FuzzDecodeCommonEnvelope(f *testing.F) {
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"ab01","sig":"MEU="}]}`))
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"","sig":"MEU="}]}`))
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e\u0030=","signatures":[{"keyid":"ab","sig":"MEU="}]}`))
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"ab","sig":"MEU="},{"keyid":"cd","sig":"MEU="}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeCommonEnvelope(b)
		if !ok {
			return
		}
		var slow ssldsse.Envelope
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast decoder accepted what json.Unmarshal refuses (%v): %q", err, b)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("fast %+v, json %+v", fast, slow)
		}
	})
}

// TestDecodeCommonEnvelopeTakesSignedEnvelopes: Sign's output takes the
// fast path (else it would only cost time).
func TestDecodeCommonEnvelopeTakesSignedEnvelopes(t *testing.T) {
	env := ssldsse.Envelope{PayloadType: PayloadType, Payload: "eyJ9", Signatures: []ssldsse.Signature{{KeyID: "0a1b", Sig: "MEUCIQ=="}}}
	b, _ := json.Marshal(env)
	got, ok := decodeCommonEnvelope(b)
	if !ok || !reflect.DeepEqual(got, env) {
		t.Fatalf("declined %s: %+v", b, got)
	}
}
