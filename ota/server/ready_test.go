package server_test

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type readyz struct {
	status int
	Status string
	Checks map[string]string
}

func (f *fixture) readyz() readyz {
	f.t.Helper()
	resp, err := f.anon.Get(f.srv.URL + "/readyz")
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := readyz{status: resp.StatusCode}
	if err := json.Unmarshal(b, &r); err != nil {
		f.t.Fatalf("GET /readyz: %d %s: %v", resp.StatusCode, b, err)
	}
	return r
}

// awaitReadyz polls /readyz (one result is reused for a second) until it
// answers status, and returns that answer.
func (f *fixture) awaitReadyz(status int) readyz {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := f.readyz()
		if r.status == status || time.Now().After(deadline) {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestReadyzWithoutCredential(t *testing.T) {
	f := newFixture(t)
	r := f.readyz()
	if r.status != 200 || r.Status != "ok" || r.Checks["store"] != "ok" || r.Checks["blobs"] != "ok" {
		t.Fatalf("GET /readyz on a healthy instance = %+v, want 200 ok with store and blobs ok", r)
	}
}

// A fosterd whose database went away is alive (/healthz) but not ready:
// the load balancer must stop sending it devices.
func TestReadyzFailsWhenStoreClosed(t *testing.T) {
	f := newFixture(t)
	if r := f.readyz(); r.status != 200 {
		t.Fatalf("before: %+v", r)
	}
	f.in.Store.Close()
	r := f.awaitReadyz(503)
	if r.status != 503 || r.Status != "unavailable" || r.Checks["store"] != "failed" || r.Checks["blobs"] != "ok" {
		t.Fatalf("GET /readyz with the store closed = %+v, want 503 with store failed, blobs ok", r)
	}
	resp, err := f.anon.Get(f.srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /healthz with the store closed = %d, want 200 (liveness does not depend on the store)", resp.StatusCode)
	}
}

func TestReadyzFailsWhenBlobStoreGone(t *testing.T) {
	f := newFixture(t)
	if r := f.readyz(); r.status != 200 {
		t.Fatalf("before: %+v", r)
	}
	blobs := filepath.Join(f.in.Dir, "blobs")
	if err := os.Rename(blobs, blobs+".unmounted"); err != nil {
		t.Fatal(err)
	}
	r := f.awaitReadyz(503)
	if r.status != 503 || r.Checks["blobs"] != "failed" || r.Checks["store"] != "ok" {
		t.Fatalf("GET /readyz with the blob store gone = %+v, want 503 with blobs failed, store ok", r)
	}
	if err := os.Rename(blobs+".unmounted", blobs); err != nil {
		t.Fatal(err)
	}
	if r := f.awaitReadyz(200); r.status != 200 {
		t.Fatalf("GET /readyz after the blob store came back = %+v, want 200", r)
	}
}
