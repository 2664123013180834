package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/secure-systems-lab/go-securesystemslib/signerverifier"
)

// verifyWithReferenceDSSE checks a real agent's envelope (from the bundle
// it kept) with the secure-systems-lab reference verifier and its own ECDSA
// code, knowing the device key only from the device certificate and by the
// keyid docs/ATTESTATIONS.md documents: hex SHA-256 of the SubjectPublicKeyInfo.
func verifyWithReferenceDSSE(t *testing.T, bundlePath, stateDir string) {
	t.Helper()
	var b struct {
		Envelope []byte `json:"envelope"`
	}
	raw, err := os.ReadFile(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	var env ssldsse.Envelope
	if err := json.Unmarshal(b.Envelope, &env); err != nil {
		t.Fatalf("bundle envelope: %v", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(stateDir, "device.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	keyID := hex.EncodeToString(sum[:])
	sv, err := signerverifier.NewECDSASignerVerifierFromSSLibKey(&signerverifier.SSLibKey{
		KeyType: signerverifier.ECDSAKeyType, Scheme: signerverifier.ECDSAKeyScheme, KeyID: keyID,
		KeyIDHashAlgorithms: []string{"sha256"},
		KeyVal:              signerverifier.KeyVal{Public: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: cert.RawSubjectPublicKeyInfo}))},
	})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := ssldsse.NewEnvelopeVerifier(sv)
	if err != nil {
		t.Fatal(err)
	}
	accepted, err := ev.Verify(context.Background(), &env)
	if err != nil || len(accepted) != 1 || accepted[0].KeyID != keyID || env.Signatures[0].KeyID != keyID {
		t.Fatalf("reference DSSE verifier on a real attestation: %v (accepted %+v, envelope keyid %q, want %s; envelope %s)",
			err, accepted, env.Signatures[0].KeyID, keyID, base64.StdEncoding.EncodeToString(b.Envelope))
	}
}
