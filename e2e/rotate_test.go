package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// Key changes without restarts (docs/TUF.md "Rotating keys", docs/CA.md):
// two real fosterd on one PostgreSQL schema and one S3 bucket; an admin
// changes an online key through one of them, and both use it, neither
// restarted.

// newCluster starts fosterd A (a new dev instance on PostgreSQL and S3,
// public repository) and its replica B, following each other every 250 ms.
func newCluster(t *testing.T) (a, b *Env) {
	db := storetest.PostgresDSN(t)
	bucket := s3test.StartServer(t).NewBucket(t)
	const follow = "FOSTER_TEST_SYNC_INTERVAL=250ms"
	a = NewEnvWith(t, []string{"--db", db, "--blobs", bucket, "--public-repository"}, follow)
	b = a.Replica([]string{"--public-repository"}, follow)
	return a, b
}

// keyStatusJSON is `foster keys status --json`.
type keyStatusJSON struct {
	Version int64 `json:"version"`
	Applied int64 `json:"applied"`
	TUF     []struct {
		Role       string   `json:"role"`
		KeyID      string   `json:"keyid"`
		TrustedFor []string `json:"trusted_for"`
	} `json:"tuf_keys"`
	Intermediate struct {
		Serial string `json:"serial"`
	} `json:"intermediate"`
	Replicas []struct {
		Name    string `json:"name"`
		Version int64  `json:"version"`
		Error   string `json:"error"`
	} `json:"replicas"`
}

func (e *Env) keyStatus() keyStatusJSON {
	e.t.Helper()
	var st keyStatusJSON
	if err := json.Unmarshal([]byte(e.Admin("keys", "status", "--json").Stdout), &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

// servedTimestamp returns the version of the timestamp.json e serves and
// the key IDs that signed it.
func (e *Env) servedTimestamp() (int64, []string) {
	e.t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.HTTPClient(caPEM, nil).Get(e.URL + "/tuf/timestamp.json")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var ts struct {
		Signatures []struct {
			KeyID string `json:"keyid"`
		} `json:"signatures"`
		Signed struct {
			Version int64 `json:"version"`
		} `json:"signed"`
	}
	if resp.StatusCode != 200 {
		e.t.Fatalf("GET %s/tuf/timestamp.json: %s", e.URL, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&ts); err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, s := range ts.Signatures {
		ids = append(ids, s.KeyID)
	}
	slices.Sort(ids)
	return ts.Signed.Version, ids
}

// awaitTimestampSignedBy waits until every replica serves the same
// timestamp.json, signed by exactly the keys want.
func awaitTimestampSignedBy(t *testing.T, within time.Duration, want []string, replicas ...*Env) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	deadline := time.Now().Add(within)
	for {
		ok := true
		var got []string
		var v0 int64
		for i, r := range replicas {
			v, ids := r.servedTimestamp()
			got = append(got, r.URL+": v"+strconv.FormatInt(v, 10)+" "+strings.Join(ids, ","))
			if i == 0 {
				v0 = v
			}
			ok = ok && v == v0 && slices.Equal(ids, want)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v replicas serve timestamps %v, want all the same, signed by %v", within, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTimestampKeyRotatesOnEveryReplicaWithoutRestart: the timestamp key is
// rotated through replica A with the dev instance's root key. Within a
// bounded wait both replicas serve timestamps signed by the new key, a new
// publish through B is signed by the new key alone (the old key no longer
// signs anything), a go-tuf client and a device that hold only root 1
// update through both, and B restarts without the old key file (it is
// dropped). Refused first, changing nothing: an auditor (403), a key that
// does not load, a key type TUF clients cannot verify, a key generated on
// one host of a cluster.
func TestTimestampKeyRotatesOnEveryReplicaWithoutRestart(t *testing.T) {
	a, b := newCluster(t)
	a.Admin("model", "add", "edge-gw")
	fw1, _ := writeFirmware(t, 64<<10)
	a.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	// go-tuf clients that trust root 1 only, one per replica, up to date.
	oldRoot := map[*Env]*tufClient{}
	for _, e := range []*Env{a, b} {
		oldRoot[e] = e.stockClient(nil)
		oldRoot[e].mustRefresh()
	}
	dev := a.NewDevice("SN-ROT-1", "edge-gw")
	dev.Enroll(a.Token("SN-ROT-1", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device before the rotation: exit %d\n%s", r.Code, r.Stderr)
	}
	_, oldIDs := a.servedTimestamp()
	if len(oldIDs) != 1 {
		t.Fatalf("timestamp signed by %v before the rotation", oldIDs)
	}

	work := t.TempDir()
	next := filepath.Join(work, "next-timestamp.key") // on both "hosts": a mounted secret
	newID := strings.TrimSpace(a.MustRun("foster", "tuf", "keygen", "--out", next).Stdout)
	rootKey := filepath.Join(a.DataDir, "keys", "tuf-root.key")

	// Refusals change nothing.
	aud := filepath.Join(work, "aud.cred")
	a.Admin("admin", "create", "aud", "--role", "auditor", "--out", aud)
	a.MustFail("forbidden", "foster", "--cred", aud, "--server", a.URL, "tuf", "rotate", "timestamp", "--key", next, "--root-key", rootKey)
	a.MustFail("key_refused", "foster", "--instance", a.DataDir, "tuf", "rotate", "timestamp", "--key", filepath.Join(work, "missing.key"), "--root-key", rootKey)
	p384 := filepath.Join(work, "p384.key")
	writeECKey(t, p384, elliptic.P384())
	a.MustFail("P-384", "foster", "--instance", a.DataDir, "tuf", "rotate", "timestamp", "--key", p384, "--root-key", rootKey)
	a.MustFail("other fosterd share this instance", "foster", "--instance", a.DataDir, "tuf", "rotate", "timestamp", "--root-key", rootKey)
	if st := a.keyStatus(); st.Version != 0 {
		t.Fatalf("refused rotations changed the key record: %+v", st)
	}
	awaitTimestampSignedBy(t, 0, oldIDs, a, b)

	// The rotation, through A.
	r := a.Admin("tuf", "rotate", "timestamp", "--key", next, "--root-key", rootKey, "--json")
	var res struct {
		Held struct {
			KeyID   string   `json:"keyid"`
			Replace []string `json:"replace_keyids"`
		} `json:"held"`
		Published bool `json:"published"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || !res.Published || res.Held.KeyID != newID || !slices.Equal(res.Held.Replace, oldIDs) {
		t.Fatalf("rotate: %+v %v\n%s", res, err, r.Stdout)
	}
	// Both replicas, at once: the publish of root 2 is signed by old and new.
	awaitTimestampSignedBy(t, 30*time.Second, append([]string{newID}, oldIDs...), a, b)
	for _, e := range []*Env{a, b} {
		st := e.keyStatus()
		for _, k := range st.TUF {
			if k.Role == "extra" || (k.Role == "timestamp" && (k.KeyID != newID || !slices.Equal(k.TrustedFor, []string{"timestamp"}))) {
				t.Fatalf("%s holds %+v after the rotation", e.URL, st.TUF)
			}
		}
		if len(st.Replicas) != 2 || st.Replicas[0].Version != st.Version || st.Replicas[1].Version != st.Version {
			t.Fatalf("%s: replicas %+v, key record %d", e.URL, st.Replicas, st.Version)
		}
	}

	// B publishes, signing with the new key alone.
	fw2, fw2Bytes := writeFirmware(t, 64<<10)
	b.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw2)
	awaitTimestampSignedBy(t, 30*time.Second, []string{newID}, a, b)

	// Clients that trust only root 1 follow the rotation through either.
	for _, e := range []*Env{a, b} {
		c := oldRoot[e]
		up := c.mustRefresh()
		if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 2 {
			t.Fatalf("client through %s trusts root %d, want 2", e.URL, v)
		}
		if data, err := c.download(up, "edge-gw/1.0.1/fw.bin"); err != nil || !bytes.Equal(data, fw2Bytes) {
			t.Fatalf("client through %s: %v", e.URL, err)
		}
	}
	agentJSON := filepath.Join(dev.StateDir, "agent.json")
	editJSON(t, agentJSON, agentJSON, func(m map[string]any) { m["server"] = b.URL })
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device trusting root 1, through B: exit %d\n%s", r.Code, r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fw2Bytes) {
		t.Fatal("device did not install 1.0.1 after the rotation")
	}

	// The old key is dropped: B starts without it.
	b.KillDaemon()
	if err := os.Remove(filepath.Join(b.DataDir, "keys", "tuf-timestamp.key")); err != nil {
		t.Fatal(err)
	}
	b.StartDaemonWith([]string{"--public-repository"}, "FOSTER_TEST_SYNC_INTERVAL=250ms")
	fw3, _ := writeFirmware(t, 64<<10)
	b.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", fw3)
	awaitTimestampSignedBy(t, 30*time.Second, []string{newID}, a, b)
}

// TestIssuingIntermediateMovesOnEveryReplicaWithoutRestart: a new
// intermediate for a key outside the data directory (softkms, standing in
// for a KMS or HSM) is certified with the root while the cluster runs and
// activated through A: new devices enrolling through A and through B get
// certificates chaining to it, and a device enrolled before keeps working
// through both and moves over at its next renewal. Refused first, changing
// nothing: an auditor (403), a key that does not match the certificate, a
// key that does not load.
func TestIssuingIntermediateMovesOnEveryReplicaWithoutRestart(t *testing.T) {
	a, b := newCluster(t)
	a.Admin("model", "add", "edge-gw")
	before := a.NewDevice("SN-CA-0", "edge-gw")
	before.Enroll(a.Token("SN-CA-0", "edge-gw"))
	oldSerial := a.keyStatus().Intermediate.Serial

	work := t.TempDir()
	hsmKey := filepath.Join(work, "hsm", "issuing.key")
	writeECKey(t, hsmKey, elliptic.P256())
	uri := "softkms:path=" + hsmKey
	newPEM := filepath.Join(work, "new-intermediate.pem")
	a.MustRun("foster", "ca", "certify-intermediate", "--dir", a.DataDir, "--key", uri, "--out", newPEM)
	inter := readCerts(t, newPEM)[0]

	aud := filepath.Join(work, "aud.cred")
	a.Admin("admin", "create", "aud", "--role", "auditor", "--out", aud)
	a.MustFail("forbidden", "foster", "--cred", aud, "--server", a.URL, "ca", "use-intermediate", "--cert", newPEM, "--key", uri)
	other := filepath.Join(work, "other.key")
	writeECKey(t, other, elliptic.P256())
	a.MustFail("does not match", "foster", "--instance", a.DataDir, "ca", "use-intermediate", "--cert", newPEM, "--key", "softkms:path="+other)
	a.MustFail("key_refused", "foster", "--instance", a.DataDir, "ca", "use-intermediate", "--cert", newPEM, "--key", filepath.Join(work, "missing.key"))
	if st := a.keyStatus(); st.Version != 0 || st.Intermediate.Serial != oldSerial {
		t.Fatalf("refused changes changed the key record: %+v", st)
	}

	a.Admin("ca", "use-intermediate", "--cert", newPEM, "--key", uri)
	for _, e := range []*Env{a, b} {
		if st := e.keyStatus(); st.Intermediate.Serial != inter.SerialNumber.Text(16) || st.Applied != st.Version {
			t.Fatalf("%s after use-intermediate: %+v", e.URL, st)
		}
	}
	for i, e := range []*Env{a, b} {
		serial := "SN-CA-" + strconv.FormatInt(int64(i+1), 10)
		d := e.NewDevice(serial, "edge-gw")
		d.Enroll(a.Token(serial, "edge-gw"))
		chain := readCerts(t, filepath.Join(d.StateDir, "device.crt"))
		if len(chain) < 2 || !chain[1].Equal(inter) || chain[0].CheckSignatureFrom(inter) != nil {
			t.Fatalf("device enrolled through %s is not issued by the new intermediate", e.URL)
		}
	}

	// The device enrolled before, through B: still works, then renews
	// onto the new intermediate.
	agentJSON := filepath.Join(before.StateDir, "agent.json")
	editJSON(t, agentJSON, agentJSON, func(m map[string]any) { m["server"] = b.URL })
	if r := before.RunOnce(); r.Code != 0 {
		t.Fatalf("device enrolled under the old intermediate, through B: exit %d\n%s", r.Code, r.Stderr)
	}
	if chain := readCerts(t, filepath.Join(before.StateDir, "device.crt")); chain[1].SerialNumber.Text(16) != oldSerial {
		t.Fatal("the device's certificate changed without a renewal")
	}
	a.MustRun("foster-agent", "--state-dir", before.StateDir, "renew", "--force")
	if chain := readCerts(t, filepath.Join(before.StateDir, "device.crt")); !chain[1].Equal(inter) {
		t.Fatal("a renewal through B is not issued by the new intermediate")
	}
	if r := before.RunOnce(); r.Code != 0 {
		t.Fatalf("device after renewal: exit %d\n%s", r.Code, r.Stderr)
	}
}

// writeECKey writes a new ECDSA key (PKCS#8 PEM, 0600) at path.
func writeECKey(t *testing.T, path string, curve elliptic.Curve) {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no certificate", path)
	}
	return out
}

// readyz returns fosterd's /readyz status code and body.
func (e *Env) readyz() (int, string) {
	e.t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.HTTPClient(caPEM, nil).Get(e.URL + "/readyz")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	return resp.StatusCode, body.String()
}

// TestReplicaThatCannotLoadANewKeyKeepsItsKeysAndHoldsUpTheRotation: the
// new snapshot key exists on A only. A holds it; B cannot load it, keeps
// its keys, says so in /readyz and in the key status, and the rotation
// stops before any root is staged: both replicas keep serving metadata
// signed by the old key alone and root 1. Once the key is on B too, B
// picks it up by itself and the same command completes.
func TestReplicaThatCannotLoadANewKeyKeepsItsKeysAndHoldsUpTheRotation(t *testing.T) {
	a, b := newCluster(t)
	a.Admin("model", "add", "edge-gw")
	a.MustRun("foster", "tuf", "keygen", "--out", filepath.Join(a.DataDir, "keys", "next-snapshot.key"))
	rootKey := filepath.Join(a.DataDir, "keys", "tuf-root.key")
	v0, ts0 := a.servedTimestamp()
	rotate := []string{"--instance", a.DataDir, "tuf", "rotate", "snapshot", "--key", "keys/next-snapshot.key", "--root-key", rootKey, "--wait", "60s"}

	a.MustFail("cannot use key record version 1", "foster", rotate...)
	if code, body := b.readyz(); code != 503 || !strings.Contains(body, `"keys":"failed"`) {
		t.Fatalf("B /readyz with a key it cannot load: %d %s", code, body)
	}
	if code, body := a.readyz(); code != 200 {
		t.Fatalf("A /readyz: %d %s", code, body)
	}
	st := a.keyStatus()
	var bErr string
	for _, r := range st.Replicas {
		if r.Name != "" && r.Version == 0 {
			bErr = r.Error
		}
	}
	if st.Version != 1 || !strings.Contains(bErr, "next-snapshot.key") {
		t.Fatalf("key status does not show B's failure: %+v", st)
	}
	var rootStatus struct{ Versions struct{ Root int64 } }
	json.Unmarshal([]byte(a.Admin("tuf", "status", "--json").Stdout), &rootStatus)
	if rootStatus.Versions.Root != 1 {
		t.Fatalf("root version %d: a root was published while B cannot sign with the new key", rootStatus.Versions.Root)
	}
	if v, ids := b.servedTimestamp(); v < v0 || !slices.Equal(ids, ts0) {
		t.Fatalf("B serves a timestamp signed by %v", ids)
	}

	// The key reaches B (the secret is mounted): B recovers by itself.
	key, err := os.ReadFile(filepath.Join(a.DataDir, "keys", "next-snapshot.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.DataDir, "keys", "next-snapshot.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for code, _ := b.readyz(); code != 200; code, _ = b.readyz() {
		if time.Now().After(deadline) {
			t.Fatal("B did not pick up the key")
		}
		time.Sleep(200 * time.Millisecond)
	}
	a.MustRun("foster", rotate...)
	fw, _ := writeFirmware(t, 1000)
	b.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	awaitSameTimestamp(t, 30*time.Second, a, b) // A follows B's publish
	for _, e := range []*Env{a, b} {
		for _, k := range e.keyStatus().TUF {
			if k.Role == "snapshot" && !slices.Equal(k.TrustedFor, []string{"snapshot"}) {
				t.Fatalf("%s: snapshot key %+v after the rotation", e.URL, k)
			}
		}
		c := e.stockClient(nil)
		up := c.mustRefresh()
		if snap := up.GetTrustedMetadataSet().Snapshot; len(snap.Signatures) != 1 {
			t.Fatalf("snapshot through %s signed %d times, want by the new key alone", e.URL, len(snap.Signatures))
		}
	}
}

// TestSnapshotKeyRotationCeremonyOnOneHost: a single fosterd (SQLite)
// generates the new snapshot key itself; the root is staged for the root
// key holders, signed offline, and published with rotate --publish. An
// unsigned root is refused and changes nothing. Then the targets key is
// rotated in one step. A device trusting root 1 updates after both.
func TestSnapshotKeyRotationCeremonyOnOneHost(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	dev := env.NewDevice("SN-CER-2", "edge-gw")
	dev.Enroll(env.Token("SN-CER-2", "edge-gw"))
	work := t.TempDir()
	staged := filepath.Join(work, "2.root.json")
	r := env.Admin("tuf", "rotate", "snapshot", "--out", staged)
	if !strings.Contains(r.Stdout, "MISSING") || !strings.Contains(r.Stdout, "tuf rotate snapshot --publish") {
		t.Fatalf("rotate without root keys should stage the root and say how to finish:\n%s", r.Stdout)
	}
	matches, _ := filepath.Glob(filepath.Join(env.DataDir, "keys", "tuf-snapshot-*.key"))
	if len(matches) != 1 {
		t.Fatalf("generated snapshot keys: %v", matches)
	}
	env.MustFail("staged metadata refused", "foster", "--instance", env.DataDir, "tuf", "rotate", "snapshot", "--publish", staged)
	signed := filepath.Join(work, "2.root.signed.json")
	env.MustRun("foster", "tuf", "sign", "--key", filepath.Join(env.DataDir, "keys", "tuf-root.key"), "--out", signed, staged)
	if r := env.Admin("tuf", "rotate", "snapshot", "--publish", signed); !strings.Contains(r.Stdout, "published root version 2") {
		t.Fatalf("rotate --publish: %s", r.Stdout)
	}
	st := env.keyStatus()
	for _, k := range st.TUF {
		if k.Role == "extra" || (k.Role == "snapshot" && !slices.Equal(k.TrustedFor, []string{"snapshot"})) {
			t.Fatalf("keys after the ceremony: %+v", st.TUF)
		}
	}
	// The targets key (online here), signed and published in one step:
	// fosterd re-signs top-level targets with the new key in that publish.
	env.Admin("tuf", "rotate", "targets", "--root-key", filepath.Join(env.DataDir, "keys", "tuf-root.key"))
	var tst struct{ Versions struct{ Root, Targets int64 } }
	json.Unmarshal([]byte(env.Admin("tuf", "status", "--json").Stdout), &tst)
	if tst.Versions.Root != 3 || tst.Versions.Targets < 2 {
		t.Fatalf("after the targets rotation: %+v", tst)
	}
	fw, fwBytes := writeFirmware(t, 1000)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw)
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device trusting root 1: exit %d\n%s", r.Code, r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fwBytes) {
		t.Fatal("device did not install after the rotation")
	}
}
