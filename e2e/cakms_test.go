package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Story (docs/CA.md): the operator moves issuance into a KMS key (softkms
// here) with the offline root, points fosterd at it by URI, and gives one
// model 30-day certificates. A device enrolled before the move still works;
// new devices chain through the KMS-held intermediate and verify with
// OpenSSL.
func TestIssuingKeyMovesToKMSAndModelValidity(t *testing.T) {
	bin := requireOpenSSL(t)
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	env.Admin("model", "add", "sensor", "--cert-validity", "720h")
	before := env.NewDevice("SN-0001", "edge-gw")
	before.Enroll(env.Token("SN-0001", "edge-gw"))

	keyPath := filepath.Join(t.TempDir(), "hsm", "issuing.key")
	os.MkdirAll(filepath.Dir(keyPath), 0o700)
	if out, err := exec.Command(bin, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyPath).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	uri := "softkms:path=" + keyPath
	env.stopDaemon()
	env.MustRun("foster", "ca", "certify-intermediate", "--dir", env.DataDir, "--key", uri)
	env.setIdentityConfig(map[string]string{"intermediate_key": uri}) // restarts fosterd

	dev := env.NewDevice("SN-0002", "sensor")
	dev.Enroll(env.Token("SN-0002", "sensor"))
	certPath := filepath.Join(dev.StateDir, "device.crt")
	env.opensslVerify(certPath)
	b, _ := os.ReadFile(certPath)
	blk, _ := pem.Decode(b)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life != 720*time.Hour+time.Minute {
		t.Fatalf("sensor certificate lives %s, want 720h (+1m backdate)", life)
	}
	if r := before.RunOnce(); r.Code != 0 {
		t.Fatalf("device enrolled under the old intermediate: exit %d\n%s", r.Code, r.Stderr)
	}
	if out := env.Admin("model", "list").Stdout; !strings.Contains(out, "720h0m0s") {
		t.Fatalf("model list does not show the validity:\n%s", out)
	}
}
