package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeviceCannotDownloadAnotherModelsFirmware: an edge-gw device, enrolled
// and updating with the real agent, presents its certificate to fetch
// cam-x's delegated role and firmware directly: 403; its own model's role
// and firmware, and the top-level metadata, are served.
func TestDeviceCannotDownloadAnotherModelsFirmware(t *testing.T) {
	env := NewEnv(t)
	work := t.TempDir()
	blobs := map[string]string{} // model -> /targets/... path
	for _, m := range []string{"edge-gw", "cam-x"} {
		env.Admin("model", "add", m)
		fw := filepath.Join(work, m+".bin")
		os.WriteFile(fw, []byte(m+" firmware 1.0.0"), 0o600)
		env.Admin("release", "add", "--model", m, "--version", "1.0.0", fw)
		var rs []struct {
			Target, SHA256 string
		}
		if err := json.Unmarshal([]byte(env.Admin("release", "list", "--model", m, "--json").Stdout), &rs); err != nil || len(rs) != 1 {
			t.Fatalf("release list %s: %v %+v", m, err, rs)
		}
		dir, base := filepath.Split(rs[0].Target)
		blobs[m] = "/targets/" + dir + rs[0].SHA256 + "." + base
	}
	dev := env.NewDevice("GW-1", "edge-gw")
	dev.Enroll(env.Token("GW-1", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent update of its own model: exit %d\n%s", r.Code, r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); string(got) != "edge-gw firmware 1.0.0" {
		t.Fatalf("installed %q", got)
	}

	pair, err := tls.LoadX509KeyPair(filepath.Join(dev.StateDir, "device.crt"), filepath.Join(dev.StateDir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	c := env.HTTPClient(caPEM, &pair)
	get := func(path string) (int, []byte) {
		t.Helper()
		resp, err := c.Get(env.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	// The role versions, from the snapshot every device may read.
	_, ts := get("/tuf/timestamp.json")
	var meta struct {
		Signed struct {
			Meta map[string]struct{ Version int64 }
		}
	}
	json.Unmarshal(ts, &meta)
	status, snap := get(fmt.Sprintf("/tuf/%d.snapshot.json", meta.Signed.Meta["snapshot.json"].Version))
	if status != 200 {
		t.Fatalf("snapshot: %d %s", status, snap)
	}
	json.Unmarshal(snap, &meta)
	role := func(m string) string {
		return fmt.Sprintf("/tuf/%d.models%%2F%s.json", meta.Signed.Meta["models/"+m+".json"].Version, m)
	}
	for path, want := range map[string]int{
		role("edge-gw"): 200, blobs["edge-gw"]: 200,
		role("cam-x"): 403, blobs["cam-x"]: 403,
	} {
		status, body := get(path)
		if status != want || want == 403 && !strings.Contains(string(body), `"code":"forbidden"`) {
			t.Fatalf("GET %s as an edge-gw device: %d %s, want %d", path, status, body, want)
		}
	}
}
