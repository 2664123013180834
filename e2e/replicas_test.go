package e2e

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// Replica starts a second fosterd on a copy of e's data directory (its keys,
// certificates and config.json, which names the shared PostgreSQL store and
// bucket), listening on its own address, as docs/TUF.md "Running several
// fosterd" tells a user to. The copy's server_url names the replica, so
// `foster --instance` talks to it.
func (e *Env) Replica(args []string, envv ...string) *Env {
	e.t.Helper()
	r := &Env{t: e.t, DataDir: filepath.Join(e.t.TempDir(), "foster-data"), Addr: freeAddr(e.t), logs: &bytes.Buffer{}}
	r.URL = "https://" + r.Addr
	copyDir(e.t, e.DataDir, r.DataDir)
	cfgPath := filepath.Join(r.DataDir, "config.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		e.t.Fatal(err)
	}
	cfg["listen"], cfg["server_url"] = r.Addr, r.URL
	b, _ = json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	r.StartDaemonWith(args, envv...)
	return r
}

// copyDir copies the regular files and directories under src to dst,
// keeping their permissions (key files stay 0600).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(to, info.Mode().Perm())
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
}

// timestampVersion is the version of the timestamp.json e serves (the
// repository must be public).
func (e *Env) timestampVersion() int64 {
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
	return ts.Signed.Version
}

// awaitSameTimestamp waits until every replica serves the same
// timestamp.json version, and returns it.
func awaitSameTimestamp(t *testing.T, within time.Duration, replicas ...*Env) int64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		vs := make([]int64, len(replicas))
		same := true
		for i, r := range replicas {
			vs[i] = r.timestampVersion()
			same = same && vs[i] == vs[0]
		}
		if same {
			return vs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas still serve timestamp versions %v after %v", vs, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReplicasPublishWithoutClobberingAndFollowEachOther: two real fosterd
// share one PostgreSQL schema and one S3 bucket. Releases added through both
// at the same moment both land (neither publishes over the repository the
// other just published); a device enrolled through A, then pointed at B,
// installs a release published only through A once B has followed it; both
// replicas end up serving the same timestamp.
func TestReplicasPublishWithoutClobberingAndFollowEachOther(t *testing.T) {
	db := storetest.PostgresDSN(t)
	bucket := s3test.StartServer(t).NewBucket(t)
	const follow = "FOSTER_TEST_SYNC_INTERVAL=250ms"
	a := NewEnvWith(t, []string{"--db", db, "--blobs", bucket, "--public-repository"}, follow)
	b := a.Replica([]string{"--public-repository"}, follow)

	a.Admin("model", "add", "edge-gw")
	a.Admin("model", "add", "cam-x")

	// One release through each replica, at once.
	adds := map[string]*Env{"edge-gw": a, "cam-x": b}
	paths, fws := map[string]string{}, map[string][]byte{}
	for m := range adds {
		paths[m], fws[m] = writeFirmware(t, 4<<20)
	}
	results := addReleasesAtOnce(adds, "1.0.1", paths)
	for m, r := range results {
		if r.Code != 0 {
			t.Fatalf("release add %s through %s: exit %d\n%s", m, adds[m].URL, r.Code, r.Stderr)
		}
	}
	v1 := awaitSameTimestamp(t, 10*time.Second, a, b)
	for _, replica := range []*Env{a, b} {
		c := replica.stockClient(nil)
		up := c.mustRefresh()
		for m := range adds {
			if data, err := c.download(up, m+"/1.0.1/fw.bin"); err != nil || !bytes.Equal(data, fws[m]) {
				t.Fatalf("%s from %s: a concurrent publish was lost: %v", m, replica.URL, err)
			}
		}
	}

	// A device enrolled through A; a newer release published through A; the
	// device's next check lands on B (as behind a load balancer).
	dev := a.NewDevice("SN-REP-1", "edge-gw")
	dev.Enroll(a.Token("SN-REP-1", "edge-gw"))
	fw2, fw2Bytes := writeFirmware(t, 1<<20)
	a.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", fw2)
	agentJSON := filepath.Join(dev.StateDir, "agent.json")
	editJSON(t, agentJSON, agentJSON, func(m map[string]any) { m["server"] = b.URL })

	v2 := awaitSameTimestamp(t, 10*time.Second, a, b)
	if v2 <= v1 {
		t.Fatalf("timestamp version %d after publishing 1.0.2, was %d", v2, v1)
	}
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run against B: exit %d\n%s", r.Code, r.Stderr)
	}
	if got, err := os.ReadFile(dev.Firmware); err != nil || !bytes.Equal(got, fw2Bytes) {
		t.Fatalf("device did not install 1.0.2 from B (%d bytes, err %v)", len(got), err)
	}
	var devices []deviceJSON
	if err := json.Unmarshal([]byte(a.Admin("device", "list", "--json").Stdout), &devices); err != nil {
		t.Fatal(err)
	}
	if len(devices) != 1 || devices[0].InstalledVersion != "1.0.2" {
		t.Fatalf("A does not see the install attested through B: %+v", devices)
	}
	if v := awaitSameTimestamp(t, 0, a, b); v != v2 {
		t.Fatalf("replicas serve timestamp %d, want %d", v, v2)
	}
}
