package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/signing"
)

func sample() Install {
	return Install{
		Device:   "urn:foster:device:edge-gw:SN-0001",
		New:      Target{Name: "edge-gw/1.0.1/fw.bin", SHA256: strings.Repeat("ab", 32), Length: 10, Version: "1.0.1", ReleaseCounter: 1},
		Outcome:  OutcomeCommitted,
		Sequence: 1,
		Time:     time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, k *ecdsa.PrivateKey, in Install) []byte {
	s, err := signing.FromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	env, err := Sign(s, in)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestSignVerifyRoundTrip(t *testing.T) {
	k := newKey(t)
	env := sign(t, k, sample())
	got, err := Verify(env, &k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got.Device != sample().Device || got.New != sample().New || got.Sequence != 1 {
		t.Fatalf("got %+v", got)
	}
	dev, err := PeekDevice(env)
	if err != nil || dev != sample().Device {
		t.Fatalf("PeekDevice %q %v", dev, err)
	}
}

func TestVerifyRefusesWrongDeviceKey(t *testing.T) {
	env := sign(t, newKey(t), sample())
	if _, err := Verify(env, &newKey(t).PublicKey); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("got %v, want ErrBadSignature", err)
	}
}

func TestVerifyRefusesTamperedPayload(t *testing.T) {
	k := newKey(t)
	env := sign(t, k, sample())
	var e map[string]any
	json.Unmarshal(env, &e)
	payload, _ := base64.StdEncoding.DecodeString(e["payload"].(string))
	tampered := strings.Replace(string(payload), `"outcome":"committed"`, `"outcome":"failed"`, 1)
	if tampered == string(payload) {
		t.Fatal("test did not tamper")
	}
	e["payload"] = base64.StdEncoding.EncodeToString([]byte(tampered))
	bad, _ := json.Marshal(e)
	if _, err := Verify(bad, &k.PublicKey); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("got %v, want ErrBadSignature", err)
	}
}

func TestSignRefusesInvalidPredicate(t *testing.T) {
	s, _ := signing.FromPrivateKey(newKey(t))
	tests := []struct {
		name string
		mut  func(*Install)
	}{
		{"no device", func(i *Install) { i.Device = "" }},
		{"bad digest", func(i *Install) { i.New.SHA256 = "zz" }},
		{"unknown outcome", func(i *Install) { i.Outcome = "bricked" }},
		{"zero sequence", func(i *Install) { i.Sequence = 0 }},
		{"negative length", func(i *Install) { i.New.Length = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := sample()
			tt.mut(&in)
			if _, err := Sign(s, in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestVerifyRefusesGarbageAndOversized(t *testing.T) {
	k := newKey(t)
	for name, env := range map[string][]byte{
		"empty":     nil,
		"not json":  []byte("{{{"),
		"oversized": []byte(strings.Repeat(" ", MaxEnvelopeSize+1)),
		"no sigs":   []byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}`),
	} {
		if _, err := Verify(env, &k.PublicKey); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
}
