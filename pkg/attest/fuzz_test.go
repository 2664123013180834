package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"github.com/foster-ota/foster/pkg/signing"
)

// Seeds: testdata/fuzz/Fuzz*/ holds real envelopes and statements signed by
// foster-agent in the e2e tests, plus the ones added here.

func fuzzKey(f *testing.F) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	return k
}

// FuzzVerifyEnvelope feeds arbitrary envelopes to Verify and PeekDevice:
// they fail with ErrMalformed or ErrBadSignature, never panic, and whatever
// Verify accepts PeekDevice reads identically.
func FuzzVerifyEnvelope(f *testing.F) {
	k := fuzzKey(f)
	s, _ := signing.FromPrivateKey(k)
	env, err := Sign(s, sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(env)
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"","signatures":[]}`))
	f.Fuzz(func(t *testing.T, env []byte) {
		in, err := Verify(env, &k.PublicKey)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) {
				t.Fatalf("untyped error: %v", err)
			}
		} else if dev, err := PeekDevice(env); err != nil || dev != in.Device {
			t.Fatalf("verified envelope peeks as %q, %v", dev, err)
		}
		if _, err := PeekDevice(env); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("untyped PeekDevice error: %v", err)
		}
	})
}

// FuzzStatement signs arbitrary payloads properly, so the statement parser
// behind the signature check is reached: a device key holder (a compromised
// device) must not be able to crash the server or smuggle an invalid
// predicate past Validate.
func FuzzStatement(f *testing.F) {
	k := fuzzKey(f)
	s, _ := signing.FromPrivateKey(k)
	env, err := Sign(s, sample())
	if err != nil {
		f.Fatal(err)
	}
	var e struct{ Payload []byte }
	if err := json.Unmarshal(env, &e); err != nil {
		f.Fatal(err)
	}
	f.Add(e.Payload)
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"x","predicate":{}}`))
	ds := dsse.WrapSigner(s, PayloadType)
	f.Fuzz(func(t *testing.T, payload []byte) {
		env, err := ds.SignMessage(bytes.NewReader(payload))
		if err != nil {
			t.Skip()
		}
		in, err := Verify(env, &k.PublicKey)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("validly signed payload: untyped error %v", err)
			}
			return
		}
		if err := in.Validate(); err != nil {
			t.Fatalf("accepted an invalid predicate: %v", err)
		}
	})
}
