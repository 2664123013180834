package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// NewEnvWith starts fosterd with extra flags and environment variables.
func NewEnvWith(t *testing.T, args []string, envv ...string) *Env {
	t.Helper()
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	e.StartDaemonWith(args, envv...)
	return e
}

// StartDaemonWith runs fosterd with extra flags and environment and waits
// until it answers /healthz.
func (e *Env) StartDaemonWith(args []string, envv ...string) {
	e.t.Helper()
	// --init: a fresh DataDir becomes a dev instance; an initialised one (a
	// restart, a replica's copy) is opened as it is.
	cmd := exec.Command(filepath.Join(binDir, "fosterd"), append([]string{"--data-dir", e.DataDir, "--init", "--listen", e.Addr}, args...)...)
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	cmd.Env = append(append(os.Environ(), e.clockEnv()...), envv...)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon = cmd
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if e.t.Failed() {
			e.t.Logf("fosterd output:\n%s", e.logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if e.healthy() {
			return
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("fosterd did not become healthy:\n%s", e.logs.String())
}

// KillDaemon SIGKILLs fosterd: no shutdown, no cleanup, like a power cut.
func (e *Env) KillDaemon() {
	e.t.Helper()
	e.daemon.Process.Kill()
	e.daemon.Wait()
}

// tufClient is go-tuf's stock updater holding only root.json, over HTTPS
// that trusts the Foster CA, optionally presenting a client certificate.
type tufClient struct {
	t       *testing.T
	env     *Env
	root    []byte
	metaDir string
	http    *http.Client
}

func (e *Env) stockClient(cert *tls.Certificate) *tufClient {
	e.t.Helper()
	root, err := os.ReadFile(filepath.Join(e.DataDir, "root.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(e.DataDir, "ca.pem"))
	if err != nil {
		e.t.Fatal(err)
	}
	return &tufClient{t: e.t, env: e, root: root, metaDir: e.t.TempDir(), http: e.HTTPClient(caPEM, cert)}
}

func (c *tufClient) refresh() (*updater.Updater, error) {
	cfg, err := config.New(c.env.URL+"/tuf/", c.root)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg.RemoteTargetsURL = c.env.URL + "/targets/"
	cfg.LocalMetadataDir = c.metaDir
	cfg.LocalTargetsDir = c.t.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(c.http); err != nil {
		c.t.Fatal(err)
	}
	up, err := updater.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return up, up.Refresh()
}

func (c *tufClient) mustRefresh() *updater.Updater {
	c.t.Helper()
	up, err := c.refresh()
	if err != nil {
		c.t.Fatalf("stock go-tuf client refresh: %v", err)
	}
	return up
}

func (c *tufClient) download(up *updater.Updater, target string) ([]byte, error) {
	info, err := up.GetTargetInfo(target)
	if err != nil {
		return nil, err
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(c.t.TempDir(), "dl"), "")
	return data, err
}

type releaseJSON struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Counter int64  `json:"release_counter"`
	Target  string `json:"target"`
	SHA256  string `json:"sha256"`
	Status  string `json:"status"`
	Role    string `json:"role"`
}

func (e *Env) releases(model string) []releaseJSON {
	e.t.Helper()
	var rs []releaseJSON
	if err := json.Unmarshal([]byte(e.Admin("release", "list", "--model", model, "--json").Stdout), &rs); err != nil {
		e.t.Fatal(err)
	}
	return rs
}

// TestS3RepositoryInteropAndRedirects: fosterd keeps its repository in a
// real S3 server (versitygw), serves it publicly and redirects target
// downloads to presigned S3 URLs. go-tuf's stock updater, given only
// root.json, updates from it over plain HTTPS and downloads through the
// redirect; a ranged request resumes through it; the agent installs
// through it; a revoked release stops being offered.
func TestS3RepositoryInteropAndRedirects(t *testing.T) {
	s3 := s3test.StartServer(t)
	bucket := s3.NewBucket(t)
	env := NewEnvWith(t, []string{"--blobs", bucket, "--target-redirect", "presign", "--public-repository"})
	store, err := blob.Open(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	if keys, _ := store.List(context.Background(), "tuf/"); len(keys) < 4 {
		t.Fatalf("the repository is not in the bucket: %q", keys)
	}
	env.Admin("model", "add", "edge-gw")
	fw, fwBytes := writeFirmware(t, 20<<20) // several multipart parts, progress shown
	r := env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw)
	if !strings.Contains(r.Stderr, "uploading: 100%") {
		t.Fatalf("no upload progress on stderr:\n%s", r.Stderr)
	}
	if keys, _ := store.List(context.Background(), "targets/edge-gw/1.0.1/"); len(keys) != 1 {
		t.Fatalf("target not stored in the bucket once, under its sha256 name: %q", keys)
	}

	// The stock client: root.json and HTTPS, nothing Foster-specific.
	stock := env.stockClient(nil)
	up := stock.mustRefresh()
	data, err := stock.download(up, "edge-gw/1.0.1/fw.bin")
	if err != nil || !bytes.Equal(data, fwBytes) {
		t.Fatalf("stock client download through the presigned redirect: %d bytes, %v", len(data), err)
	}

	// The redirect itself, and a resumed (ranged) download through it.
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	noFollow := env.HTTPClient(caPEM, nil)
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	rel := env.releases("edge-gw")[0]
	url := env.URL + "/targets/edge-gw/1.0.1/" + rel.SHA256 + ".fw.bin"
	resp, err := noFollow.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, s3.Endpoint) || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("target download: %d Location %q, want 307 to a presigned URL on %s", resp.StatusCode, loc, s3.Endpoint)
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Range", "bytes=15000000-")
	resp, err = env.HTTPClient(caPEM, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, fwBytes[15000000:]) {
		t.Fatalf("ranged download through the redirect: %d, %d bytes", resp.StatusCode, len(part))
	}

	// The agent (mTLS to fosterd) follows the redirect to the bucket.
	dev := env.NewDevice("SN-S3-1", "edge-gw")
	dev.Enroll(env.Token("SN-S3-1", "edge-gw"))
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("agent run against S3 with redirects: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fwBytes) {
		t.Fatal("agent installed different bytes")
	}

	// Refusals change nothing in the bucket.
	before, _ := store.List(context.Background(), "")
	small, _ := writeFirmware(t, 1000)
	env.MustFail("stale_release", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.0", small)
	env.MustFail("hash_mismatch", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.2", "--sha256", strings.Repeat("ab", 32), small)
	env.MustFail("length_mismatch", "foster", "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.2", "--length", "999", small)
	env.MustFail("unknown model", "foster", "--instance", env.DataDir, "release", "add", "--model", "nope", "--version", "1.0.2", small)
	if after, _ := store.List(context.Background(), ""); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("refused releases changed the bucket:\n%q\n->\n%q", before, after)
	}

	// Revocation: 1.0.2 is published, then revoked; clients stop seeing it.
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", small)
	if _, err := stock.download(stock.mustRefresh(), "edge-gw/1.0.2/fw.bin"); err != nil {
		t.Fatalf("1.0.2 before revocation: %v", err)
	}
	env.Admin("release", "revoke", "--model", "edge-gw", "--version", "1.0.2")
	if _, err := stock.mustRefresh().GetTargetInfo("edge-gw/1.0.2/fw.bin"); err == nil {
		t.Fatal("revoked release still offered")
	}
	rs := env.releases("edge-gw")
	if len(rs) != 2 || rs[0].Status != "revoked" || rs[1].Status != "published" || rs[1].Role != "models/edge-gw" {
		t.Fatalf("release list after revoke: %+v", rs)
	}
	show := env.Admin("release", "show", "edge-gw", "1.0.2").Stdout
	if !strings.Contains(show, "revoked") {
		t.Fatalf("release show:\n%s", show)
	}
}

// TestKilledMidPublishKeepsPreviousRepository kills the real fosterd
// (SIGKILL) in the middle of a release's publish, after its model role and
// again after its snapshot were written but before timestamp.json: clients,
// new and already up to date, see the previous consistent repository; the
// restarted fosterd publishes the same release cleanly.
func TestKilledMidPublishKeepsPreviousRepository(t *testing.T) {
	stores := map[string]func(t *testing.T) string{
		"file": func(t *testing.T) string { return "" },
		"s3":   func(t *testing.T) string { return s3test.StartServer(t).NewBucket(t) },
	}
	for _, name := range []string{"file", "s3"} {
		for _, killAfter := range []string{"model role", "snapshot"} {
			t.Run(name+"/after "+killAfter, func(t *testing.T) {
				var args []string
				bucket := stores[name](t)
				if bucket != "" {
					args = []string{"--blobs", bucket}
				}
				const delay = "FOSTER_TEST_PUBLISH_DELAY=1500ms"
				env := NewEnvWith(t, append(args, "--public-repository"), delay)
				store, err := blob.Open(context.Background(), bucket)
				if bucket == "" {
					store, err = blob.Open(context.Background(), filepath.Join(env.DataDir, "blobs"))
				}
				if err != nil {
					t.Fatal(err)
				}
				env.Admin("model", "add", "edge-gw")
				fw1, fw1Bytes := writeFirmware(t, 1<<20)
				env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw1)
				early := env.stockClient(nil) // a device up to date before the crash
				early.mustRefresh()

				// Release 1.0.2 in the background; kill fosterd midway.
				fw2, fw2Bytes := writeFirmware(t, 6<<20)
				add := exec.Command(filepath.Join(binDir, "foster"), "--instance", env.DataDir, "release", "add", "--model", "edge-gw", "--version", "1.0.2", fw2)
				var out bytes.Buffer
				add.Stdout, add.Stderr = &out, &out
				if err := add.Start(); err != nil {
					t.Fatal(err)
				}
				wait := "tuf/2.models/edge-gw.json"
				if killAfter == "snapshot" {
					wait = "tuf/3.snapshot.json"
				}
				deadline := time.Now().Add(60 * time.Second)
				for {
					if _, err := store.Stat(context.Background(), wait); err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s never written; release add: %s", wait, out.String())
					}
					time.Sleep(50 * time.Millisecond)
				}
				env.KillDaemon()
				if err := add.Wait(); err == nil {
					t.Fatalf("release add succeeded although fosterd was killed mid-publish:\n%s", out.String())
				}

				env.StartDaemonWith([]string{"--public-repository"}) // restart, no delay
				for _, c := range []*tufClient{early, env.stockClient(nil)} {
					up := c.mustRefresh()
					if _, err := up.GetTargetInfo("edge-gw/1.0.2/fw.bin"); err == nil {
						t.Fatal("a release whose publish was killed is visible")
					}
					if data, err := c.download(up, "edge-gw/1.0.1/fw.bin"); err != nil || !bytes.Equal(data, fw1Bytes) {
						t.Fatalf("previous release after the crash: %v", err)
					}
				}
				if rs := env.releases("edge-gw"); len(rs) != 1 {
					t.Fatalf("the store recorded the killed release: %+v", rs)
				}
				env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.2", fw2)
				for _, c := range []*tufClient{early, env.stockClient(nil)} {
					if data, err := c.download(c.mustRefresh(), "edge-gw/1.0.2/fw.bin"); err != nil || !bytes.Equal(data, fw2Bytes) {
						t.Fatalf("release after restart: %v", err)
					}
				}
			})
		}
	}
}

// TestTwoReleaseAddsAtOnce: two admins publish at the same moment; both
// releases land and clients see both.
func TestTwoReleaseAddsAtOnce(t *testing.T) {
	env := NewEnvWith(t, []string{"--public-repository"})
	env.Admin("model", "add", "edge-gw")
	env.Admin("model", "add", "cam-x")
	fws := map[string][]byte{}
	paths := map[string]string{}
	for _, m := range []string{"edge-gw", "cam-x"} {
		paths[m], fws[m] = writeFirmware(t, 9<<20)
	}
	results := addReleasesAtOnce(map[string]*Env{"edge-gw": env, "cam-x": env}, "2.0.0", paths)
	c := env.stockClient(nil)
	up := c.mustRefresh()
	for m, r := range results {
		if r.Code != 0 {
			t.Fatalf("release add %s: exit %d\n%s", m, r.Code, r.Stderr)
		}
		if data, err := c.download(up, m+"/2.0.0/fw.bin"); err != nil || !bytes.Equal(data, fws[m]) {
			t.Fatalf("%s: %v", m, err)
		}
	}
}

// TestRootCeremonyWithTheCLI: three key holders take over root from the
// dev instance's single root key (2-of-3), each signing on "their own
// machine" (their own copy of the staged file); then the targets key
// holder delegates a new model to its own key in a targets ceremony. A
// device enrolled before the rotation, trusting root v1, updates to a
// release published after it.
func TestRootCeremonyWithTheCLI(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	dev := env.NewDevice("SN-CER-1", "edge-gw")
	dev.Enroll(env.Token("SN-CER-1", "edge-gw"))
	dir := t.TempDir()
	key := func(n string) string { return filepath.Join(dir, n) }
	for _, h := range []string{"alice", "bob", "carol", "camx"} {
		env.MustRun("foster", "tuf", "keygen", "--out", key(h+".key"))
	}
	oldRoot := filepath.Join(env.DataDir, "keys", "tuf-root.key")
	staged := key("2.root.json")
	r := env.Admin("tuf", "stage", "root", "--out", staged,
		"--add-key", "root="+key("alice.key.pub"), "--add-key", "root="+key("bob.key.pub"), "--add-key", "root="+key("carol.key.pub"),
		"--remove-key", "root="+oldRoot, "--threshold", "root=2", "--expires", "8760h")
	if !strings.Contains(r.Stdout, "MISSING") {
		t.Fatalf("stage output should list missing signatures:\n%s", r.Stdout)
	}
	// Each holder signs a copy of the staged file with their own key.
	for _, h := range []struct{ name, key string }{{"old", oldRoot}, {"alice", key("alice.key")}, {"carol", key("carol.key")}} {
		env.MustRun("foster", "tuf", "sign", "--key", h.key, "--out", key("2.root."+h.name+".json"), staged)
	}
	env.MustRun("foster", "tuf", "combine", "--out", key("2.root.partial.json"), key("2.root.old.json"), key("2.root.alice.json"))
	env.MustFail("threshold is not met", "foster", "--instance", env.DataDir, "tuf", "inspect", key("2.root.partial.json"))
	env.MustFail("staged metadata refused", "foster", "--instance", env.DataDir, "tuf", "publish", "--root", key("2.root.partial.json"))
	env.MustRun("foster", "tuf", "combine", "--out", key("2.root.signed.json"), key("2.root.old.json"), key("2.root.alice.json"), key("2.root.carol.json"))
	env.Admin("tuf", "inspect", key("2.root.signed.json"))
	env.Admin("tuf", "publish", "--root", key("2.root.signed.json"))
	var st struct {
		Versions struct{ Root int64 }
		Keys     map[string]struct {
			KeyIDs    []string
			Threshold int
		}
	}
	json.Unmarshal([]byte(env.Admin("tuf", "status", "--json").Stdout), &st)
	if st.Versions.Root != 2 || st.Keys["root"].Threshold != 2 || len(st.Keys["root"].KeyIDs) != 3 {
		t.Fatalf("tuf status after the root ceremony: %+v", st)
	}

	// Targets ceremony: delegate cam-x to its product team's own key.
	env.Admin("model", "add", "cam-x")
	stagedT := key("targets.json")
	env.Admin("tuf", "stage", "targets", "--out", stagedT, "--delegate-model", "cam-x", "--model-key", key("camx.key.pub"))
	env.MustRun("foster", "tuf", "sign", "--key", filepath.Join(env.DataDir, "keys", "tuf-targets.key"), stagedT)
	// fosterd must hold the model's key to create the role: refused until
	// config.json names it (model_keys), then published.
	env.MustFail("key_unavailable", "foster", "--instance", env.DataDir, "tuf", "publish", "--targets", stagedT)
	cfgPath := filepath.Join(env.DataDir, "config.json")
	var cfg map[string]any
	b, _ := os.ReadFile(cfgPath)
	json.Unmarshal(b, &cfg)
	cfg["tuf_keys"].(map[string]any)["model_keys"] = map[string]string{"cam-x": key("camx.key")}
	b, _ = json.Marshal(cfg)
	os.WriteFile(cfgPath, b, 0o600)
	env.KillDaemon()
	env.StartDaemon()
	env.Admin("tuf", "publish", "--targets", stagedT)
	camFW, camBytes := writeFirmware(t, 1000)
	if r := env.Admin("release", "add", "--model", "cam-x", "--version", "1.0.0", camFW); !strings.Contains(r.Stdout, "models/cam-x") {
		t.Fatalf("cam-x release: %s", r.Stdout)
	}

	// Devices, trusting root v1, follow the rotation and update.
	fw, fwBytes := writeFirmware(t, 1<<20)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw)
	if r := dev.RunOnce(); r.Code != 0 {
		t.Fatalf("device after the root ceremony: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if got, _ := os.ReadFile(dev.Firmware); !bytes.Equal(got, fwBytes) {
		t.Fatal("device installed different bytes")
	}
	cam := env.NewDevice("SN-CAM-1", "cam-x")
	cam.Enroll(env.Token("SN-CAM-1", "cam-x"))
	if r := cam.RunOnce(); r.Code != 0 {
		t.Fatalf("cam-x device: exit %d\n%s\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if got, _ := os.ReadFile(cam.Firmware); !bytes.Equal(got, camBytes) {
		t.Fatal("cam-x device installed different bytes")
	}
}
