package attest

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"testing"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"
)

// sslibVerifier is the secure-systems-lab reference verifier (its own ECDSA
// code, not sigstore's) for pub, knowing the key by keyID, as an auditor
// configures it from the device certificate.
func sslibVerifier(t *testing.T, pubDER []byte, keyID string) *ssldsse.EnvelopeVerifier {
	t.Helper()
	sv, err := signerverifier.NewECDSASignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyType: signerverifier.ECDSAKeyType, Scheme: signerverifier.ECDSAKeyScheme, KeyID: keyID,
		KeyIDHashAlgorithms: []string{"sha256"},
		KeyVal:              signerverifier.KeyVal{Public: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))},
	})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ssldsse.NewEnvelopeVerifier(sv)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// Independent DSSE tooling matches a signature to its key by keyid: Foster
// sets it to the hex SHA-256 of the device key's SubjectPublicKeyInfo
// (docs/ATTESTATIONS.md), and the reference verifier accepts the envelope.
func TestAttestationVerifiesWithIndependentDSSEVerifierByKeyID(t *testing.T) {
	k := newKey(t)
	raw := sign(t, k, sample())
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	sum := sha256.Sum256(der)
	want := hex.EncodeToString(sum[:])

	var env ssldsse.Envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	if len(env.Signatures) != 1 || env.Signatures[0].KeyID != want {
		t.Fatalf("signatures %+v, want one with keyid %s", env.Signatures, want)
	}
	if id, err := KeyID(&k.PublicKey); err != nil || id != want {
		t.Fatalf("KeyID = %q, %v", id, err)
	}
	accepted, err := sslibVerifier(t, der, want).Verify(context.Background(), &env)
	if err != nil || len(accepted) != 1 || accepted[0].KeyID != want {
		t.Fatalf("reference verifier: %v %+v", err, accepted)
	}
	// The same verifier, told the key has another keyid, does not match it:
	// the keyid is what it goes by.
	if _, err := sslibVerifier(t, der, "0000").Verify(context.Background(), &env); err == nil {
		t.Fatal("the reference verifier accepted a signature whose keyid names another key")
	}
}

// Envelopes signed before Foster set keyids (keyid "") still verify.
func TestAttestationWithoutKeyIDStillVerifies(t *testing.T) {
	k := newKey(t)
	var env ssldsse.Envelope
	if err := json.Unmarshal(sign(t, k, sample()), &env); err != nil {
		t.Fatal(err)
	}
	env.Signatures[0].KeyID = ""
	old, _ := json.Marshal(env)
	if _, err := Verify(old, &k.PublicKey); err != nil {
		t.Fatalf("old envelope: %v", err)
	}
}

// A signature whose keyid names another key is not taken for this one's,
// and a keyid alone proves nothing: relabelling a signature by another key
// with this key's keyid still fails the signature check.
func TestAttestationKeyIDNamingAnotherKeyIsRefused(t *testing.T) {
	k, other := newKey(t), newKey(t)
	var env ssldsse.Envelope
	if err := json.Unmarshal(sign(t, k, sample()), &env); err != nil {
		t.Fatal(err)
	}
	otherID, _ := KeyID(&other.PublicKey)
	env.Signatures[0].KeyID = otherID
	relabelled, _ := json.Marshal(env)
	if _, err := Verify(relabelled, &k.PublicKey); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("keyid of another key: %v", err)
	}
	if _, err := Verify(relabelled, &other.PublicKey); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("signature by k relabelled as other's: %v", err)
	}
}
