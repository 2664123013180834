package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// repoSnapshot is everything a refused release must leave unchanged.
func (f *fixture) repoSnapshot() string {
	f.t.Helper()
	rs, err := f.in.Store.ListReleases(context.Background(), "")
	if err != nil {
		f.t.Fatal(err)
	}
	fs, err := blob.NewFS(filepath.Join(f.in.Dir, "blobs"))
	if err != nil {
		f.t.Fatal(err)
	}
	keys, err := fs.List(context.Background(), "")
	if err != nil {
		f.t.Fatal(err)
	}
	a, b, c, d := f.in.Repo.Versions()
	return fmt.Sprint(len(rs), a, b, c, d, keys)
}

func TestReleaseRefusalsLeaveRepositoryUnchanged(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw", "hardware_ids": []string{"rev-a", "rev-b"}}, 201)
	f.release("1.2.0", []byte("v1"))
	body := []byte("new firmware")
	sum := sha256.Sum256(body)
	good := hex.EncodeToString(sum[:])
	before := f.repoSnapshot()
	tests := []struct {
		name, query string
		body        []byte
		status      int
		code        string
	}{
		{"version below latest", "version=1.1.9", body, 409, "stale_release"},
		{"version equal to latest", "version=1.2.0", body, 409, "conflict"},
		{"pre-release below latest", "version=1.2.0-rc.1", body, 409, "stale_release"},
		{"counter not above latest", "version=1.3.0&counter=1", body, 409, "stale_release"},
		{"unknown model", "version=1.3.0&model=nope", body, 400, "unknown_model"},
		{"empty file", "version=1.3.0", nil, 400, "bad_request"},
		{"declared length of 0", "version=1.3.0&length=0", body, 400, "bad_request"},
		{"oversized file", "version=1.3.0&length=99999999999999", body, 413, "too_large"},
		{"declared length mismatch", "version=1.3.0&length=5", body, 400, "length_mismatch"},
		{"declared sha256 mismatch", "version=1.3.0&sha256=" + strings.Repeat("0", 64), body, 400, "hash_mismatch"},
		{"malformed sha256", "version=1.3.0&sha256=xyz", body, 400, "bad_request"},
		{"hardware id of another model", "version=1.3.0&hardware_id=rev-z", body, 400, "bad_request"},
		{"min-from-version not below version", "version=1.3.0&min_from_version=1.3.0", body, 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.query
			if !strings.Contains(q, "model=") {
				q += "&model=edge-gw"
			}
			r := f.do(f.admin, "POST", "/v1/releases?name=fw.bin&"+q, tt.body)
			if r.status != tt.status || r.code() != tt.code {
				t.Fatalf("got %d %s, want %d %s", r.status, r.body, tt.status, tt.code)
			}
			if after := f.repoSnapshot(); after != before {
				t.Fatalf("refused release changed the repository:\n%s\n->\n%s", before, after)
			}
		})
	}
	// The same upload, declared correctly, lands with the next counter.
	r := f.do(f.admin, "POST", "/v1/releases?model=edge-gw&version=1.3.0&name=fw.bin&hardware_id=rev-b&min_from_version=1.2.0&sha256="+good+"&length=12", body)
	if r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var rel server.Release
	json.Unmarshal(r.body, &rel)
	if rel.Counter != 2 || rel.Status != "published" || rel.MinFromVersion != "1.2.0" || fmt.Sprint(rel.HardwareIDs) != "[rev-b]" || rel.Role != "models/edge-gw" {
		t.Fatalf("release = %+v", rel)
	}
	tgt, _, _ := f.in.Repo.Lookup("edge-gw/1.3.0/fw.bin")
	var c map[string]any
	json.Unmarshal(tgt.Custom, &c)
	if c["min_from_version"] != "1.2.0" || c["release_counter"] != float64(2) || fmt.Sprint(c["hardware_ids"]) != "[rev-b]" {
		t.Fatalf("signed custom metadata = %s", tgt.Custom)
	}
	// The publication time is signed too (an auditor's time-to-patch start),
	// and is the recorded one, to the second.
	if c["published_at"] != rel.CreatedAt.UTC().Format(time.RFC3339) {
		t.Fatalf("signed published_at %v, recorded %s", c["published_at"], rel.CreatedAt)
	}
}

// TestReleaseListIsPaged: GET /v1/releases answers at most limit releases,
// each model's newest first, and the next page starts after the last id.
func TestReleaseListIsPaged(t *testing.T) {
	f := newFixture(t)
	for _, m := range []string{"edge-gw", "cam"} {
		f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": m}, 201)
	}
	for _, v := range []string{"1.0.0", "1.0.1", "1.0.2"} {
		f.release(v, []byte("edge "+v))
	}
	if r := f.do(f.admin, "POST", "/v1/releases?model=cam&version=2.0.0&name=fw.bin", []byte("cam")); r.status != 201 {
		t.Fatalf("cam release: %d %s", r.status, r.body)
	}
	versions := func(query string) ([]string, int64) {
		t.Helper()
		var page []server.Release
		if err := json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/releases?"+query, nil, 200), &page); err != nil || page == nil {
			t.Fatalf("%s: %v %v", query, page, err)
		}
		var vs []string
		for _, r := range page {
			vs = append(vs, r.Model+"@"+r.Version)
		}
		if len(page) == 0 {
			return vs, 0
		}
		return vs, page[len(page)-1].ID
	}
	walk := func(filter string, want ...string) {
		t.Helper()
		var got []string
		after := int64(0)
		for range len(want) + 1 {
			page, last := versions(fmt.Sprintf("%slimit=2&after=%d", filter, after))
			if len(page) > 2 {
				t.Fatalf("%slimit=2: %d releases", filter, len(page))
			}
			got = append(got, page...)
			if len(page) < 2 {
				break
			}
			after = last
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%spages: %v, want %v", filter, got, want)
		}
	}
	walk("", "cam@2.0.0", "edge-gw@1.0.2", "edge-gw@1.0.1", "edge-gw@1.0.0")
	walk("model=edge-gw&", "edge-gw@1.0.2", "edge-gw@1.0.1", "edge-gw@1.0.0")
	if all, _ := versions(""); len(all) != 4 {
		t.Fatalf("default page: %v", all)
	}

	_, camID := versions("model=cam")
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=-1", "after=x", "after=999999", "model=edge-gw&after=" + fmt.Sprint(camID)} {
		if r := f.do(f.admin, "GET", "/v1/releases?"+q, nil); r.status != 400 || r.code() != "bad_request" {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
	}
}

func TestReleaseListShowRevoke(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.release("1.0.0", []byte("one"))
	f.release("1.0.1", []byte("two"))
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "ops"})

	var list []server.Release
	json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/releases?model=edge-gw", nil, 200), &list)
	if len(list) != 2 || list[0].Version != "1.0.1" || list[0].Status != "published" {
		t.Fatalf("list = %+v", list)
	}
	var shown server.Release
	json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/releases/edge-gw/1.0.1", nil, 200), &shown)
	if shown.TargetPath != "edge-gw/1.0.1/fw.bin" || len(shown.SHA256) != 64 || shown.Status != "published" {
		t.Fatalf("show = %+v", shown)
	}
	for path, msg := range map[string]string{
		"/v1/releases/edge-gw/9.9.9": "release edge-gw 9.9.9 not found",
		"/v1/releases/nope/1.0.1":    "release nope 1.0.1 not found",
	} {
		r := f.do(auditor, "GET", path, nil)
		var e struct{ Code, Error string }
		json.Unmarshal(r.body, &e)
		if r.status != 404 || e.Code != "not_found" || e.Error != msg {
			t.Fatalf("show %s: %d %s", path, r.status, r.body)
		}
	}
	if r := f.do(auditor, "POST", "/v1/releases/edge-gw/1.0.1/revoke", nil); r.status != 403 {
		t.Fatalf("auditor revoked: %d", r.status)
	}
	_, _, _, ts := f.in.Repo.Versions()
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/releases/edge-gw/1.0.1/revoke", nil, 200), &shown)
	if shown.Status != "revoked" {
		t.Fatalf("after revoke: %+v", shown)
	}
	if _, _, ok := f.in.Repo.Lookup("edge-gw/1.0.1/fw.bin"); ok {
		t.Fatal("revoked release still signed")
	}
	if _, _, _, now := f.in.Repo.Versions(); now != ts+1 {
		t.Fatalf("revoke published timestamp %d, want %d", now, ts+1)
	}
	if r := f.do(f.admin, "POST", "/v1/releases/edge-gw/1.0.1/revoke", nil); r.status != 409 || r.code() != "revoked" {
		t.Fatalf("revoking twice: %d %s", r.status, r.body)
	}
	if r := f.do(f.admin, "POST", "/v1/releases/edge-gw/9.9.9/revoke", nil); r.status != 404 {
		t.Fatalf("revoking an unknown release: %d %s", r.status, r.body)
	}
	// The revoked version and counter stay used.
	if r := f.do(f.admin, "POST", "/v1/releases?model=edge-gw&version=1.0.1", []byte("again")); r.status != 409 {
		t.Fatalf("re-adding a revoked version: %d %s", r.status, r.body)
	}
	if rel := f.release("1.0.2", []byte("three")); rel.Counter != 3 {
		t.Fatalf("counter after a revoked release = %d, want 3", rel.Counter)
	}
}

// TestConcurrentReleasesBothLand: two uploads at once (different models)
// both publish; neither overwrites the other's metadata.
func TestConcurrentReleasesBothLand(t *testing.T) {
	f := newFixture(t)
	models := []string{"edge-gw", "cam-x", "hub-1", "hub-2"}
	for _, m := range models {
		f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": m}, 201)
	}
	var wg sync.WaitGroup
	status := make([]int, len(models))
	for i, m := range models {
		wg.Go(func() {
			body := strings.Repeat(m, 50_000+i*1000)
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/releases?model="+m+"&version=1.0.0", strings.NewReader(body))
			resp, err := f.admin.Do(req)
			if err == nil {
				status[i] = resp.StatusCode
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	for i, m := range models {
		if status[i] != 201 {
			t.Fatalf("%s: %d", m, status[i])
		}
		if _, _, ok := f.in.Repo.Lookup(m + "/1.0.0/firmware.bin"); !ok {
			t.Fatalf("%s not published", m)
		}
	}
}

// TestDistribution: timestamp.json answers conditional GETs with 304,
// targets serve byte ranges (resume), and both need an enrolled device
// unless the repository is public.
func TestDistribution(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	body := []byte(strings.Repeat("0123456789", 1000))
	rel := f.release("1.0.0", body)
	dev, _ := f.enrolled("SN-1")

	base := f.srv.URL
	get := func(c *http.Client, path string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, ts := get(dev, "/tuf/timestamp.json")
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("timestamp: %d etag %q", resp.StatusCode, etag)
	}
	if resp, b := get(dev, "/tuf/timestamp.json", "If-None-Match", etag); resp.StatusCode != 304 || len(b) != 0 {
		t.Fatalf("conditional GET: %d, %d bytes", resp.StatusCode, len(b))
	}
	f.release("1.0.1", []byte("next"))
	resp, ts2 := get(dev, "/tuf/timestamp.json", "If-None-Match", etag)
	if resp.StatusCode != 200 || resp.Header.Get("ETag") == etag || string(ts2) == string(ts) {
		t.Fatalf("after a release the conditional GET says %d", resp.StatusCode)
	}
	// Delegated role metadata, with its "/" escaped as go-tuf requests it.
	if resp, b := get(dev, "/tuf/1.models%2Fedge-gw.json"); resp.StatusCode != 200 || !strings.Contains(string(b), `"_type":"targets"`) {
		t.Fatalf("model role: %d %s", resp.StatusCode, b)
	}
	// Range: resume a download from byte 4000.
	url := "/targets/edge-gw/1.0.0/" + rel.SHA256 + ".fw.bin"
	resp, part := get(dev, url, "Range", "bytes=4000-")
	if resp.StatusCode != 206 || string(part) != string(body[4000:]) {
		t.Fatalf("range: %d, %d bytes", resp.StatusCode, len(part))
	}
	if resp, _ := get(f.anon, "/tuf/timestamp.json"); resp.StatusCode != 401 {
		t.Fatalf("anonymous timestamp on a private repository: %d", resp.StatusCode)
	}

	pub := newFixtureOverrides(t, instance.Overrides{PublicRepository: true})
	pub.mustJSON(pub.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel = pub.release("1.0.0", body)
	base = pub.srv.URL
	if resp, _ := get(pub.anon, "/tuf/timestamp.json"); resp.StatusCode != 200 {
		t.Fatalf("anonymous timestamp on a public repository: %d", resp.StatusCode)
	}
	if resp, b := get(pub.anon, "/targets/edge-gw/1.0.0/"+rel.SHA256+".fw.bin"); resp.StatusCode != 200 || len(b) != len(body) {
		t.Fatalf("anonymous target on a public repository: %d", resp.StatusCode)
	}
	if r := pub.do(pub.anon, "GET", "/v1/releases", nil); r.status != 401 {
		t.Fatalf("public repository opened the admin API: %d", r.status)
	}
}

// TestRootCeremonyOverAPI: an admin stages root 2 from the current root,
// the root key holder signs it, and publishing it over the API rotates the
// root; a staged root without the old key's signature is refused.
func TestRootCeremonyOverAPI(t *testing.T) {
	f := newFixture(t)
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "ops"})
	var st tufrepo.Status
	json.Unmarshal(f.mustJSON(auditor, "GET", "/v1/tuf", nil, 200), &st)
	if st.Versions.Root != 1 || len(st.Keys["root"].KeyIDs) != 1 {
		t.Fatalf("status = %+v", st)
	}
	cur := f.do(auditor, "GET", "/v1/tuf/metadata/root", nil).body
	rootKey, err := signing.Load(context.Background(), filepath.Join(f.in.Dir, "keys/tuf-root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := signing.GenerateEd25519File(filepath.Join(t.TempDir(), "new-root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	newSigner, _ := signing.FromPrivateKey(newKey)
	k, id, _ := tufrepo.TUFKey(newKey.Public())
	staged, err := tufrepo.StageRoot(cur, tufrepo.RootChange{
		Add: map[string][]*metadata.Key{"root": {k}}, Remove: map[string][]string{"root": st.Keys["root"].KeyIDs},
	}, f.in.Repo.Status().Expires.Timestamp)
	if err != nil {
		t.Fatal(err)
	}
	onlyNew, _ := tufrepo.SignStaged(context.Background(), staged, newSigner)
	if r := f.do(f.admin, "POST", "/v1/tuf/publish", []byte(js(map[string]json.RawMessage{"root": onlyNew}))); r.status != 400 || r.code() != "staged_refused" {
		t.Fatalf("root without the old key's signature: %d %s", r.status, r.body)
	}
	both, _ := tufrepo.SignStaged(context.Background(), onlyNew, rootKey)
	if r := f.do(auditor, "POST", "/v1/tuf/publish", []byte(js(map[string]json.RawMessage{"root": both}))); r.status != 403 {
		t.Fatalf("auditor published: %d", r.status)
	}
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/tuf/publish", map[string]json.RawMessage{"root": both}, 200), &st)
	if st.Versions.Root != 2 || st.Keys["root"].KeyIDs[0] != id {
		t.Fatalf("after publish: %+v", st.Versions)
	}
	if r := f.do(f.admin, "POST", "/v1/tuf/publish", []byte(`{"root":{"signed":1}}`)); r.status != 400 {
		t.Fatalf("garbage root: %d %s", r.status, r.body)
	}
	if _, err := os.Stat(filepath.Join(f.in.Dir, "blobs/tuf/2.root.json")); err != nil {
		t.Fatal(err)
	}
}
