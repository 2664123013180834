package tufrepo_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// fixture is a repository in a file blob store, served over TLS the way
// fosterd serves it: /tuf/<file> -> tuf/<file>, /targets/<p> -> targets/<p>.
type fixture struct {
	t     *testing.T
	fs    *blob.FS
	store blob.Store // fs, possibly wrapped
	keys  tufrepo.Keys
	clock *clock
	opts  tufrepo.Options
	root  []byte
	repo  *tufrepo.Repo
	srv   *httptest.Server
}

func newFixture(t *testing.T, wrap func(blob.Store) blob.Store) *fixture {
	t.Helper()
	fs, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, fs: fs, store: fs, keys: ed25519Keys(t), clock: newClock()}
	if wrap != nil {
		f.store = wrap(fs)
	}
	f.opts = tufrepo.Options{Now: f.clock.Now}
	f.root, err = tufrepo.Init(t.Context(), f.store, f.keys, f.opts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	f.repo, err = tufrepo.Open(t.Context(), f.store, f.keys, f.opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	f.srv = serveStore(t, fs)
	return f
}

func ed25519Keys(t testing.TB) tufrepo.Keys {
	t.Helper()
	gen := func() signature.Signer {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s, err := signing.FromPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return tufrepo.Keys{Root: gen(), Targets: gen(), Snapshot: gen(), Timestamp: gen()}
}

func ecdsaSigner(t *testing.T, curve elliptic.Curve) signature.Signer {
	t.Helper()
	priv, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.FromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func serveStore(t *testing.T, store blob.Store) *httptest.Server {
	serve := func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.URL.Path, "/")
		rc, info, err := store.Open(r.Context(), key)
		if errors.Is(err, blob.ErrNotFound) || errors.Is(err, blob.ErrBadKey) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer rc.Close()
		http.ServeContent(w, r, "", info.ModTime, rc)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tuf/", serve)
	mux.HandleFunc("GET /targets/", serve)
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// client is a device: go-tuf's stock updater with a persistent metadata
// cache (metaDir), so successive clients see rollback protection.
type client struct {
	f       *fixture
	metaDir string
}

func (f *fixture) newDevice() *client {
	return &client{f: f, metaDir: f.t.TempDir()}
}

// updater returns a fresh go-tuf updater (go-tuf allows one Refresh per
// updater) sharing the device's metadata cache; refTime zero means now.
func (c *client) updater(refTime time.Time) *updater.Updater {
	t := c.f.t
	t.Helper()
	cfg, err := config.New(c.f.srv.URL+"/tuf", c.f.root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = c.f.srv.URL + "/targets"
	cfg.LocalMetadataDir = c.metaDir
	cfg.LocalTargetsDir = t.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(c.f.srv.Client()); err != nil {
		t.Fatal(err)
	}
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !refTime.IsZero() {
		up.UnsafeSetRefTime(refTime)
	}
	return up
}

// refresh runs a client refresh and returns the updater for queries.
func (c *client) refresh() *updater.Updater {
	c.f.t.Helper()
	up := c.updater(time.Time{})
	if err := up.Refresh(); err != nil {
		c.f.t.Fatalf("client Refresh: %v", err)
	}
	return up
}

// download fetches and verifies target p with go-tuf's DownloadTarget.
func (c *client) download(up *updater.Updater, p string) ([]byte, error) {
	info, err := up.GetTargetInfo(p)
	if err != nil {
		return nil, err
	}
	_, data, err := up.DownloadTarget(info, filepath.Join(c.f.t.TempDir(), "dl"), "")
	return data, err
}

func (f *fixture) add(p string, body []byte, custom string) tufrepo.Target {
	f.t.Helper()
	var c []byte
	if custom != "" {
		c = []byte(custom)
	}
	tgt, err := f.repo.AddTarget(f.t.Context(), p, strings.NewReader(string(body)), int64(len(body)), c)
	if err != nil {
		f.t.Fatalf("AddTarget(%s): %v", p, err)
	}
	return tgt
}

func (f *fixture) list(prefix string) []string {
	f.t.Helper()
	keys, err := f.fs.List(f.t.Context(), prefix)
	if err != nil {
		f.t.Fatal(err)
	}
	return keys
}

type versions [4]int64

func versionsOf(r *tufrepo.Repo) versions {
	a, b, c, d := r.Versions()
	return versions{a, b, c, d}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var errInjected = errors.New("injected put failure")

// failingStore fails the Nth Put after being armed, having consumed part of
// the body, like a disk filling up or a connection dropping mid-publish. It
// deliberately has no Copy method, so blob.Copy streams through Put.
type failingStore struct {
	blob.Store
	armed atomic.Bool
	puts  atomic.Int64
	failN int64
}

func (s *failingStore) arm(n int64) { s.puts.Store(0); s.failN = n; s.armed.Store(true) }
func (s *failingStore) disarm()     { s.armed.Store(false) }

func (s *failingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	n := s.puts.Add(1)
	if s.armed.Load() && n == s.failN {
		io.CopyN(io.Discard, r, 7)
		return fmt.Errorf("putting %q: %w", key, errInjected)
	}
	return s.Store.Put(ctx, key, r, size)
}
