package server_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

type ingestResp struct {
	ID        int64          `json:"id"`
	DeviceID  string         `json:"device_id"`
	Sequence  int64          `json:"sequence"`
	LeafIndex int64          `json:"leaf_index"`
	Bundle    *bundle.Bundle `json:"bundle"`
}

// verifier trusts exactly what an auditor gets out of band from this
// instance: ca.pem, root.json and log.pub.
func (f *fixture) verifier() *bundle.Verifier {
	f.t.Helper()
	dir := f.in.Dir
	caPEM, err := os.ReadFile(instance.PathsOf(dir).CARoot)
	if err != nil {
		f.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	root, err := os.ReadFile(instance.PathsOf(dir).TUFRoot)
	if err != nil {
		f.t.Fatal(err)
	}
	pub, err := os.ReadFile(instance.LogPubPath(dir))
	if err != nil {
		f.t.Fatal(err)
	}
	key, err := bundle.ParseLogKey(pub)
	if err != nil {
		f.t.Fatal(err)
	}
	v, err := bundle.NewVerifier(bundle.TrustRoots{CARoots: pool, TUFRoot: root, LogKey: key})
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fixture) attest(c *http.Client, env []byte, want int) ingestResp {
	f.t.Helper()
	r := f.do(c, "POST", "/v1/attestations", env)
	if r.status != want {
		f.t.Fatalf("attestation: %d %s, want %d", r.status, r.body, want)
	}
	var out ingestResp
	if err := json.Unmarshal(r.body, &out); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) logSize() int64 {
	f.t.Helper()
	r := f.do(f.anon, "GET", "/v1/log/checkpoint", nil)
	if r.status != 200 {
		f.t.Fatalf("checkpoint: %d %s", r.status, r.body)
	}
	lines := strings.SplitN(string(r.body), "\n", 3)
	var n int64
	fmt.Sscan(lines[1], &n)
	return n
}

// TestAcceptedAttestationIsLoggedWithAVerifiableBundle is the ingest path
// end to end: the bundle fosterd returns verifies offline against the
// instance's three public trust anchors; the store row and the log entry
// agree; a lost answer is healed by re-sending.
func TestAcceptedAttestationIsLoggedWithAVerifiableBundle(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, key := f.enrolled("SN-1")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()
	v := f.verifier()

	got := f.attest(dev, envelope(t, key, me, rel, 1), 201)
	if got.Bundle == nil || got.LeafIndex != 0 || got.Sequence != 1 {
		t.Fatalf("response %+v", got)
	}
	res, err := v.Verify(got.Bundle)
	if err != nil {
		t.Fatalf("bundle from fosterd does not verify: %v", err)
	}
	if res.Device.URI() != me || res.Statement.New.SHA256 != rel.SHA256 || res.LeafIndex != 0 || res.Checkpoint.Size != 1 {
		t.Fatalf("verified %+v", res)
	}
	// The store row points at the log entry holding exactly this envelope.
	row, err := f.in.Store.GetAttestation(context.Background(), me, 1)
	if err != nil || row.LeafIndex != 0 || row.CertSerial == "" {
		t.Fatalf("row %+v %v", row, err)
	}
	leaves, err := f.in.Log.Entries(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := bundle.ParseEntry(leaves[0])
	if err != nil || string(entry.Envelope) != string(row.Envelope) {
		t.Fatalf("log entry %v does not hold the stored envelope", err)
	}

	// More attestations grow the log; the first bundle still verifies.
	for seq := int64(2); seq <= 4; seq++ {
		b := f.attest(dev, envelope(t, key, me, rel, seq), 201).Bundle
		if _, err := v.Verify(b); err != nil || b.Log.LeafIndex != seq-1 {
			t.Fatalf("bundle %d: index %d, %v", seq, b.Log.LeafIndex, err)
		}
	}
	// The device lost the answer to #4 and re-sends it: same entry, a
	// proof against the current checkpoint, nothing appended.
	env4 := envelope(t, key, me, rel, 5)
	first := f.attest(dev, env4, 201)
	again := f.attest(dev, env4, 200)
	if again.LeafIndex != first.LeafIndex || again.Bundle == nil || f.logSize() != 5 {
		t.Fatalf("re-send: %+v (log size %d)", again, f.logSize())
	}
	if _, err := v.Verify(again.Bundle); err != nil {
		t.Fatal(err)
	}
	// Auditors can fetch any attestation's bundle.
	r := f.do(f.admin, "GET", "/v1/attestations/"+me+"/2/bundle", nil)
	if r.status != 200 {
		t.Fatalf("bundle by sequence: %d %s", r.status, r.body)
	}
	if _, err := v.VerifyBytes(r.body); err != nil {
		t.Fatal(err)
	}
	if r := f.do(dev, "GET", "/v1/attestations/"+me+"/2/bundle", nil); r.status != 403 {
		t.Fatalf("device reads bundles: %d", r.status)
	}
}

// TestRefusedAttestationsAreNotLogged: nothing refused reaches the log, and
// a replayed or revoked device's attestation is refused with its own code.
func TestRefusedAttestationsAreNotLogged(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "other"}, 201)
	dev, key := f.enrolled("SN-1")
	_, otherKey := f.enrolled("SN-2")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()
	f.attest(dev, envelope(t, key, me, rel, 1), 201)

	var otherRel store.Release
	if r := f.do(f.admin, "POST", "/v1/releases?model=other&version=1.0.0&name=fw.bin", []byte("other firmware")); r.status == 201 {
		json.Unmarshal(r.body, &otherRel)
	} else {
		t.Fatalf("release: %d %s", r.status, r.body)
	}
	claimsCounter := rel
	claimsCounter.Counter = 9
	tests := []struct {
		name   string
		env    []byte
		status int
		code   string
	}{
		{"tampered envelope", tamper(t, envelope(t, key, me, rel, 2)), 400, "bad_signature"},
		{"wrong device key", envelope(t, otherKey, me, rel, 2), 400, "bad_signature"},
		{"replayed attestation", envelope(t, key, me, rel, 1), 409, "replay"},
		{"target of another model", envelope(t, key, me, otherRel, 2), 400, "unsigned_target"},
		{"claims another release counter", envelope(t, key, me, claimsCounter, 2), 400, "unsigned_target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(dev, "POST", "/v1/attestations", tt.env)
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.status, tt.code)
			}
			if n := f.logSize(); n != 1 {
				t.Fatalf("refused attestation logged: log has %d entries", n)
			}
		})
	}
	if _, err := f.in.Store.RevokeDevice(context.Background(), me, 1, "key compromise", "test"); err != nil {
		t.Fatal(err)
	}
	if r := f.do(dev, "POST", "/v1/attestations", envelope(t, key, me, rel, 2)); r.status != 403 || r.code() != "revoked" {
		t.Fatalf("revoked device: %d %s", r.status, r.body)
	}
	if n := f.logSize(); n != 1 {
		t.Fatalf("revoked device's attestation logged: %d entries", n)
	}
}

// tamper flips one byte of the signed payload.
func tamper(t *testing.T, env []byte) []byte {
	var e map[string]any
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	p := []byte(e["payload"].(string))
	p[10] ^= 1
	e["payload"] = string(p)
	out, _ := json.Marshal(e)
	return out
}

// TestStoreAndLogNeverDiverge breaks the log's tables: the append fails,
// and so the attestation row, written in the same transaction, is not
// recorded either; the device can simply retry later.
func TestStoreAndLogNeverDiverge(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, key := f.enrolled("SN-1")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()
	if _, err := f.in.Store.SQL().Exec(`ALTER TABLE tlog_checkpoints RENAME TO tlog_checkpoints_gone`); err != nil {
		t.Fatal(err)
	}
	if r := f.do(dev, "POST", "/v1/attestations", envelope(t, key, me, rel, 1)); r.status != 500 {
		t.Fatalf("append with a broken log: %d %s", r.status, r.body)
	}
	if as, _ := f.in.Store.ListAttestations(context.Background(), me); len(as) != 0 {
		t.Fatalf("attestation recorded without its log entry: %+v", as)
	}
	if d, _ := f.in.Store.GetDevice(context.Background(), me); d.LastSequence != 0 || d.InstalledVersion != "" {
		t.Fatalf("device updated without a log entry: %+v", d)
	}
	if _, err := f.in.Store.SQL().Exec(`ALTER TABLE tlog_checkpoints_gone RENAME TO tlog_checkpoints`); err != nil {
		t.Fatal(err)
	}
	if b := f.attest(dev, envelope(t, key, me, rel, 1), 201).Bundle; b.Log.LeafIndex != 0 {
		t.Fatalf("retry logged at %d", b.Log.LeafIndex)
	}
}

// TestLogAPI checks the auditor's view of the log: proofs from the API
// verify against signed checkpoints, roles gate entries and inclusion, and
// bad queries are clear errors.
func TestLogAPI(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel := f.release("1.0.0", []byte("firmware one"))
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "alice"})
	v := f.logVerifier()

	var bundles []*bundle.Bundle
	for i := range 3 {
		serial := fmt.Sprintf("SN-%d", i)
		dev, key := f.enrolled(serial)
		bundles = append(bundles, f.attest(dev, envelope(t, key, identity.Device("edge-gw", serial).URI(), rel, 1), 201).Bundle)
	}
	first, err := tlogverify.ParseCheckpoint([]byte(bundles[0].Log.Checkpoint), v)
	if err != nil {
		t.Fatal(err)
	}
	r := f.do(f.anon, "GET", "/v1/log/checkpoint", nil)
	latest, err := tlogverify.ParseCheckpoint(r.body, v)
	if err != nil || latest.Size != 3 {
		t.Fatalf("checkpoint %d: %v", latest.Size, err)
	}

	// Consistency (public): the first checkpoint is a prefix of the latest.
	var cons struct {
		TreeSize   int64    `json:"tree_size"`
		Hashes     [][]byte `json:"hashes"`
		Checkpoint string   `json:"checkpoint"`
	}
	json.Unmarshal(f.mustJSON(f.anon, "GET", fmt.Sprintf("/v1/log/consistency?from=%d", first.Size), nil, 200), &cons)
	if err := tlogverify.VerifyConsistency(first, latest, cons.Hashes); err != nil || cons.TreeSize != 3 || cons.Checkpoint == "" {
		t.Fatalf("consistency: %v %+v", err, cons)
	}

	// Entries and inclusion (auditor): by index and by leaf hash.
	var ents struct {
		Start   int64    `json:"start"`
		Entries [][]byte `json:"entries"`
	}
	json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/log/entries?start=0&end=100", nil, 200), &ents)
	if len(ents.Entries) != 3 {
		t.Fatalf("%d entries", len(ents.Entries))
	}
	for i, leaf := range ents.Entries {
		if _, err := bundle.ParseEntry(leaf); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		for _, q := range []string{fmt.Sprintf("index=%d&size=3", i), "leaf_hash=" + hex.EncodeToString(rfc6962.DefaultHasher.HashLeaf(leaf))} {
			var inc struct {
				LeafIndex int64    `json:"leaf_index"`
				TreeSize  int64    `json:"tree_size"`
				Hashes    [][]byte `json:"hashes"`
			}
			json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/log/inclusion?"+q, nil, 200), &inc)
			if inc.LeafIndex != int64(i) || inc.TreeSize != 3 {
				t.Fatalf("%s: %+v", q, inc)
			}
			if err := tlogverify.VerifyInclusion(leaf, inc.LeafIndex, latest, inc.Hashes); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}

	dev, _ := f.enrolled("SN-9")
	tests := []struct {
		name   string
		client *http.Client
		path   string
		status int
		code   string
	}{
		{"anonymous reads entries", f.anon, "/v1/log/entries?start=0", 401, "unauthorized"},
		{"device reads entries", dev, "/v1/log/entries?start=0", 403, "forbidden"},
		{"anonymous inclusion", f.anon, "/v1/log/inclusion?index=0", 401, "unauthorized"},
		{"entries beyond the log", auditor, "/v1/log/entries?start=3", 400, "out_of_range"},
		{"negative start", auditor, "/v1/log/entries?start=-1", 400, "bad_request"},
		{"no start", auditor, "/v1/log/entries", 400, "bad_request"},
		{"inclusion beyond the tree", auditor, "/v1/log/inclusion?index=1&size=9", 400, "out_of_range"},
		{"unknown leaf hash", auditor, "/v1/log/inclusion?leaf_hash=" + strings.Repeat("ab", 32), 404, "not_found"},
		{"short leaf hash", auditor, "/v1/log/inclusion?leaf_hash=abcd", 400, "bad_request"},
		{"index and hash", auditor, "/v1/log/inclusion?index=0&leaf_hash=" + strings.Repeat("ab", 32), 400, "bad_request"},
		{"consistency backwards", f.anon, "/v1/log/consistency?from=3&to=1", 400, "bad_request"},
		{"consistency beyond the log", f.anon, "/v1/log/consistency?from=1&to=99", 400, "out_of_range"},
		{"consistency garbage", f.anon, "/v1/log/consistency?from=x", 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(tt.client, "GET", tt.path, nil)
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.status, tt.code)
			}
		})
	}
}

func (f *fixture) logVerifier() note.Verifier {
	f.t.Helper()
	pub, err := os.ReadFile(filepath.Join(f.in.Dir, "log.pub"))
	if err != nil {
		f.t.Fatal(err)
	}
	v, err := bundle.ParseLogKey(pub)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// TestFleetReportAPI: auditors get the report; bad parameters are refused.
func TestFleetReportAPI(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel := f.release("1.0.0", []byte("firmware one"))
	dev, key := f.enrolled("SN-1")
	f.enrolled("SN-2")
	f.attest(dev, envelope(t, key, identity.Device("edge-gw", "SN-1").URI(), rel, 1), 201)
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "alice"})
	var rep store.FleetReport
	json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/reports/fleet?model=edge-gw&stale_days=7", nil, 200), &rep)
	if len(rep.Releases) != 1 || rep.Releases[0].Installed != 1 || len(rep.Behind) != 1 || rep.Behind[0].Serial != "SN-2" || rep.StaleDays != 7 {
		t.Fatalf("report %+v", rep)
	}
	for _, q := range []string{"stale_days=-1", "stale_days=x", "model=../x", "stale_days=99999999"} {
		if r := f.do(auditor, "GET", "/v1/reports/fleet?"+q, nil); r.status != 400 {
			t.Fatalf("%s: %d", q, r.status)
		}
	}
	if r := f.do(dev, "GET", "/v1/reports/fleet", nil); r.status != 403 {
		t.Fatalf("device reads the report: %d", r.status)
	}
}
