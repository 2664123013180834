package tufclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/pkg/offline"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// serveMeta serves metadata files by name under /metadata/.
func serveMeta(t *testing.T, meta map[string][]byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := meta[strings.TrimPrefix(r.URL.Path, "/metadata/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func refreshAt(t *testing.T, url string, root []byte, dir string, at time.Time, adopt bool) (*Client, error) {
	t.Helper()
	c, err := New(context.Background(), Config{MetadataURL: url + "/metadata/", MetadataDir: dir, Root: root,
		HTTP: http.DefaultClient, RefTime: at, AdoptEqualTimestamp: adopt})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Refresh(journal.Seen{})
	return c, err
}

// A device that saw fosterd's one-day timestamp of version V keeps that
// copy (go-tuf keeps the first copy of a version). An offline bundle made
// at the same version, with a 30-day lifetime, reaches it three days
// later: without adopting the bundle's copy the device would refuse it as
// expired; with it, it verifies, and the signing time is the evidence of
// the time. A copy of V signed by a key the root does not trust is never
// adopted.
func TestAdoptsBundleTimestampOfCachedVersion(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	repo := clienttest.NewRepo(t, "")
	repo.SetExpiry(now.Add(60 * 24 * time.Hour))
	repo.Timestamp().Signed.Expires = now.Add(24 * time.Hour) // fosterd's one-day timestamp
	repo.Publish(t)
	online, _ := repoServer(t, repo)
	dir := t.TempDir()
	if _, err := refreshAt(t, online, repo.RootJSON(), dir, now, false); err != nil {
		t.Fatal(err)
	}
	cached, _ := os.ReadFile(filepath.Join(dir, "timestamp.json"))
	bundle := repo.BundleMeta(t, now.Add(30*24*time.Hour), now, offline.SignedAtField)
	url := serveMeta(t, bundle)
	later := now.Add(3 * 24 * time.Hour)

	copyDir := func() string {
		d := t.TempDir()
		for _, n := range []string{"root.json", "timestamp.json", "snapshot.json", "targets.json"} {
			b, _ := os.ReadFile(filepath.Join(dir, n))
			os.WriteFile(filepath.Join(d, n), b, 0o644)
		}
		return d
	}
	if _, err := refreshAt(t, url, repo.RootJSON(), copyDir(), later, false); !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
		t.Fatalf("without adopting: err = %v, want expired", err)
	}
	c, err := refreshAt(t, url, repo.RootJSON(), copyDir(), later, true)
	if err != nil {
		t.Fatalf("adopting the bundle's copy: %v", err)
	}
	if at, ok := c.BundleSignedAt(); !ok || !at.Equal(now) {
		t.Fatalf("BundleSignedAt = %v %v, want %v", at, ok, now)
	}

	// A forged copy of the same version is not adopted: the cache keeps its own.
	_, forger, _ := ed25519.GenerateKey(rand.Reader)
	forged := repo.BundleMeta(t, now.Add(30*24*time.Hour), now, offline.SignedAtField)
	ts, _ := metadata.Timestamp().FromBytes(forged["timestamp.json"])
	ts.ClearSignatures()
	signer, err := signature.LoadSigner(forger, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	ts.Sign(signer)
	forged["timestamp.json"], _ = ts.ToBytes(false)
	d := copyDir()
	if _, err := refreshAt(t, serveMeta(t, forged), repo.RootJSON(), d, later, true); err == nil {
		t.Fatal("a forged timestamp verified")
	}
	if got, _ := os.ReadFile(filepath.Join(d, "timestamp.json")); !bytes.Equal(got, cached) {
		t.Fatal("a forged copy of the cached version replaced it")
	}
}
