package main

import (
	"bytes"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/clienttest"
)

// tufEnv is a plain TUF repository and a conformance-client working dir,
// laid out as tuf-conformance's client runner does.
type tufEnv struct {
	t                   *testing.T
	repo                *clienttest.Repo
	mu                  sync.Mutex
	reqs                []string
	url                 string
	metaDir, targetsDir string
}

func newTUFEnv(t *testing.T, delegate string) *tufEnv {
	t.Helper()
	e := &tufEnv{t: t, repo: clienttest.NewRepo(t, delegate)}
	srv := httptest.NewServer(e.repo.Handler(&e.mu, &e.reqs))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	dir := t.TempDir()
	e.metaDir, e.targetsDir = filepath.Join(dir, "metadata"), filepath.Join(dir, "targets")
	os.Mkdir(e.metaDir, 0o755)
	os.Mkdir(e.targetsDir, 0o755)
	return e
}

func (e *tufEnv) requests(f func()) []string {
	e.mu.Lock()
	n := len(e.reqs)
	e.mu.Unlock()
	f()
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.reqs[n:])
}

func (e *tufEnv) init() result {
	root := clienttest.WriteFile(e.t, e.t.TempDir(), "initial_root.json", e.repo.RootJSON())
	return agent(e.t, "tuf", "--metadata-dir", e.metaDir, "init", root)
}

func (e *tufEnv) refresh() result {
	return agent(e.t, "tuf", "--metadata-url", e.url+"/metadata", "--metadata-dir", e.metaDir, "refresh")
}

func (e *tufEnv) download(names ...string) result {
	args := []string{"tuf", "--metadata-url", e.url + "/metadata", "--metadata-dir", e.metaDir}
	for _, n := range names {
		args = append(args, "--target-name", n)
	}
	args = append(args, "--target-dir", e.targetsDir, "--target-base-url", e.url+"/targets", "download")
	return agent(e.t, args...)
}

func (e *tufEnv) downloaded() map[string]string {
	got := map[string]string{}
	ents, _ := os.ReadDir(e.targetsDir)
	for _, ent := range ents {
		b, _ := os.ReadFile(filepath.Join(e.targetsDir, ent.Name()))
		got[ent.Name()] = string(b)
	}
	return got
}

func (e *tufEnv) add(name, content string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.repo.AddTarget(e.t, name, []byte(content), clienttest.Custom{Model: strings.Split(name, "/")[0]})
	e.repo.Publish(e.t)
}

func TestTUFConformanceCLI(t *testing.T) {
	e := newTUFEnv(t, "")
	if reqs := e.requests(func() {
		if r := e.init(); r.code != 0 {
			t.Fatalf("init: %d %s", r.code, r.stderr)
		}
	}); len(reqs) != 0 {
		t.Fatalf("init made requests: %v", reqs)
	}
	if b, _ := os.ReadFile(filepath.Join(e.metaDir, "root.json")); !bytes.Equal(b, e.repo.RootJSON()) {
		t.Fatal("root.json not initialised")
	}

	reqs := e.requests(func() {
		if r := e.refresh(); r.code != 0 {
			t.Fatalf("refresh: %d %s", r.code, r.stderr)
		}
	})
	if want := "[metadata/2.root.json metadata/timestamp.json metadata/1.snapshot.json metadata/1.targets.json]"; fmt.Sprint(reqs) != want {
		t.Fatalf("refresh requests %v, want %s", reqs, want)
	}
	for _, f := range []string{"root.json", "timestamp.json", "snapshot.json", "targets.json"} {
		if _, err := os.Stat(filepath.Join(e.metaDir, f)); err != nil {
			t.Fatalf("%s not stored under its unversioned name: %v", f, err)
		}
	}
	// Nothing changed: only the next root and the timestamp are asked for.
	reqs = e.requests(func() { e.refresh() })
	if want := "[metadata/2.root.json metadata/timestamp.json]"; fmt.Sprint(reqs) != want {
		t.Fatalf("second refresh requests %v, want %s", reqs, want)
	}

	e.add("app/1.0/fw.bin", "firmware one")
	e.add("docs/readme.txt", "read me")
	reqs = e.requests(func() {
		if r := e.download("app/1.0/fw.bin", "docs/readme.txt"); r.code != 0 {
			t.Fatalf("download: %d %s", r.code, r.stderr)
		}
	})
	want := map[string]string{url.PathEscape("app/1.0/fw.bin"): "firmware one", url.PathEscape("docs/readme.txt"): "read me"}
	if got := e.downloaded(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("target dir %v", got)
	}
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, "targets/") {
			n++
			if base := r[strings.LastIndex(r, "/")+1:]; len(base) < 65 || base[64] != '.' {
				t.Errorf("target fetched without its consistent-snapshot hash prefix: %s", r)
			}
		}
	}
	if n != 2 {
		t.Fatalf("requests %v", reqs)
	}
	// Already there with matching hashes: not fetched again.
	reqs = e.requests(func() {
		if r := e.download("app/1.0/fw.bin"); r.code != 0 {
			t.Fatalf("cached download: %d %s", r.code, r.stderr)
		}
	})
	if want := "[metadata/2.root.json metadata/timestamp.json]"; fmt.Sprint(reqs) != want {
		t.Fatalf("cached download requests %v, want %s", reqs, want)
	}

	// The repository swaps the blob: refused, and the good copy stays.
	e.mu.Lock()
	for k := range e.repo.Blobs {
		if strings.HasSuffix(k, ".readme.txt") {
			e.repo.Blobs[k] = []byte("malicious")
		}
	}
	e.mu.Unlock()
	os.Remove(filepath.Join(e.targetsDir, url.PathEscape("docs/readme.txt")))
	if r := e.download("docs/readme.txt"); r.code != 1 || !strings.Contains(r.stderr, "mismatch") {
		t.Fatalf("malicious target: %d %s", r.code, r.stderr)
	}
	if got := e.downloaded(); len(got) != 1 {
		t.Fatalf("target dir after a refused download: %v", got)
	}
	// Unknown target, and stop at the first failure.
	if r := e.download("no/such/target", "app/1.0/fw.bin"); r.code != 1 || !strings.Contains(r.stderr, "target not found") {
		t.Fatalf("missing target: %d %s", r.code, r.stderr)
	}
}

func TestTUFConformanceCLIRefusesExpiredMetadataAndFollowsDelegations(t *testing.T) {
	e := newTUFEnv(t, "edge-gw")
	e.init()
	e.add("edge-gw/2.0/fw.bin", "delegated firmware")
	if r := e.download("edge-gw/2.0/fw.bin"); r.code != 0 {
		t.Fatalf("%d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(e.metaDir, url.PathEscape("models/edge-gw")+".json")); err != nil {
		t.Fatalf("delegated role not cached: %v", err)
	}
	e.mu.Lock()
	e.repo.SetExpiry(time.Now().Add(-time.Minute))
	e.repo.Publish(t)
	e.mu.Unlock()
	if r := e.refresh(); r.code != 1 || !strings.Contains(r.stderr, "expired") {
		t.Fatalf("expired: %d %s", r.code, r.stderr)
	}
}

// fakeDate puts a date(1) on PATH that prints at (as libfaketime would make
// the real one do) and returns nothing else: the conformance client must
// take its reference time from it, not from Go's clock, which libfaketime
// cannot move.
func fakeDate(t *testing.T, at time.Time) {
	t.Helper()
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\necho %d\n", at.Unix())
	if err := os.WriteFile(filepath.Join(dir, "date"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// An auditor runs the conformance client under libfaketime 8 days ahead:
// metadata that expires in 7 days must be refused as expired, though Go's
// own clock says it is still valid.
func TestTUFConformanceCLIExpiryFollowsTheSystemDateAhead(t *testing.T) {
	e := newTUFEnv(t, "")
	e.init()
	e.mu.Lock()
	e.repo.SetExpiry(time.Now().Add(7 * 24 * time.Hour))
	e.repo.Publish(t)
	e.mu.Unlock()
	fakeDate(t, time.Now().Add(8*24*time.Hour))
	if r := e.refresh(); r.code != 1 || !strings.Contains(r.stderr, "expired") {
		t.Fatalf("refresh 8 days ahead of metadata valid for 7: exit %d, %s; want 1 and expired", r.code, r.stderr)
	}
	fakeDate(t, time.Now())
	if r := e.refresh(); r.code != 0 {
		t.Fatalf("refresh at today's date: exit %d, %s", r.code, r.stderr)
	}
}

// And the other way: a static repository whose metadata expired (a root
// that expired in 2025) is accepted when the system's date is set before
// the expiry, as the test suite intends.
func TestTUFConformanceCLIExpiryFollowsTheSystemDateBehind(t *testing.T) {
	e := newTUFEnv(t, "")
	e.init()
	expired := time.Now().Add(-24 * time.Hour)
	e.mu.Lock()
	e.repo.SetExpiry(expired)
	e.repo.Publish(t)
	e.mu.Unlock()
	fakeDate(t, expired.Add(-time.Hour))
	if r := e.refresh(); r.code != 0 {
		t.Fatalf("refresh with the date before the metadata's expiry: exit %d, %s", r.code, r.stderr)
	}
}

// A date(1) that prints nonsense is an error, not a silent fall back to a
// clock the caller did not ask for.
func TestTUFConformanceCLIRefusesAnUnreadableSystemDate(t *testing.T) {
	e := newTUFEnv(t, "")
	e.init()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "date"), []byte("#!/bin/sh\necho Sat Dec 5\n"), 0o755)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if r := e.refresh(); r.code != 1 || !strings.Contains(r.stderr, "want seconds since 1970") {
		t.Fatalf("refresh with an unreadable date: exit %d, %s", r.code, r.stderr)
	}
}
