package instance_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store/storetest"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// replica is a served instance and an admin client for it.
type replica struct {
	in   *instance.Instance
	url  string
	http *http.Client
}

func serveReplica(t *testing.T, dir, name string) *replica {
	t.Helper()
	in, err := instance.Open(context.Background(), dir, instance.Overrides{Listen: name}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.SyncInterval = 50 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; in.Close() })
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: in.CA.RootPool(), Certificates: []tls.Certificate{cert}, ServerName: "localhost",
	}}}
	return &replica{in: in, url: "https://" + ln.Addr().String(), http: cl}
}

func (r *replica) call(t *testing.T, method, path string, in, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, r.url+path, body)
	resp, err := r.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *replica) keys(t *testing.T) server.KeyStatus {
	t.Helper()
	var st server.KeyStatus
	r.call(t, "GET", "/v1/keys", nil, &st)
	return st
}

func awaitKeys(t *testing.T, r *replica, what string, ok func(server.KeyStatus) bool) server.KeyStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := r.keys(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never happened: %+v", r.url, what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKeyRecordFollowedByReplicasWhileServing: two instances in one process,
// on one PostgreSQL store and one blob directory, serve timestamps all the
// time while a timestamp key is held through A and its rotation published
// through B; B then makes the new key the configured one and A follows. Run
// with -race: the swaps happen under live traffic.
func TestKeyRecordFollowedByReplicasWhileServing(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.PostgresDSN(t)
	dirA := t.TempDir()
	blobs := "file:" + filepath.Join(t.TempDir(), "blobs")
	if _, err := instance.Init(ctx, dirA, instance.InitOptions{DB: dsn, Blobs: blobs}); err != nil {
		t.Fatal(err)
	}
	dirB := t.TempDir()
	copyTree(t, dirA, dirB)
	a := serveReplica(t, dirA, "127.0.0.1:1")
	b := serveReplica(t, dirB, "127.0.0.1:2")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range []*replica{a, b} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, _, err := r.in.Repo.Metadata(ctx, "timestamp.json"); err != nil {
					t.Error(err)
					return
				}
				r.in.Repo.Status()
				r.in.CA.Intermediate()
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	next := filepath.Join(t.TempDir(), "next.key")
	if _, err := signing.GenerateEd25519File(next, nil); err != nil {
		t.Fatal(err)
	}
	var held server.HoldKeyResult
	a.call(t, "POST", "/v1/keys/tuf", server.HoldKeyRequest{Role: "timestamp", Key: next}, &held)
	awaitKeys(t, b, "holding the new key", func(st server.KeyStatus) bool {
		return st.Applied == held.Version && len(st.Replicas) == 2 && st.Replicas[0].Version == held.Version && st.Replicas[1].Version == held.Version
	})

	// The root that swaps the keys, published through B.
	pub, err := signing.Load(ctx, next, nil)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := pub.PublicKey()
	key, _, _ := tufrepo.TUFKey(pk)
	staged, err := tufrepo.StageRoot(b.in.Repo.RootJSON(), tufrepo.RootChange{
		Add: map[string][]*metadata.Key{"timestamp": {key}}, Remove: map[string][]string{"timestamp": held.Replace},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := signing.Load(ctx, filepath.Join(dirA, "keys", "tuf-root.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := tufrepo.SignStaged(ctx, staged, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	b.call(t, "POST", "/v1/tuf/publish", server.PublishRequest{Root: signed}, nil)
	for _, r := range []*replica{a, b} {
		awaitKeys(t, r, "the rotation complete", func(st server.KeyStatus) bool {
			if st.Applied != st.Version || st.Version <= held.Version {
				return false
			}
			for _, k := range st.TUF {
				if k.Role == "extra" || (k.Role == "timestamp" && k.KeyID != held.KeyID) {
					return false
				}
			}
			return true
		})
	}
	if rv, _, _, _ := a.in.Repo.Versions(); rv != 2 {
		t.Fatalf("A serves root %d", rv)
	}
}

// copyTree copies a data directory (a replica's copy).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
