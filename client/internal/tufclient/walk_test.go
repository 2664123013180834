package tufclient

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// diamondRepo is a repository where two delegators, A and B, both delegate
// to C, but only A's delegation names C's actual key:
//
//	targets --(shared/*)--> A --(shared/*, key kC)--> C   (C is signed with kC)
//	        --(*/*)-------> B --(*/*, key kX)-------> C
type diamondRepo struct {
	files map[string][]byte
	mu    sync.Mutex
	reqs  []string
	root  []byte
}

func newKey(t *testing.T) (ed25519.PrivateKey, *metadata.Key, string) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := k.ID()
	return priv, k, id
}

func signMD[T metadata.Roles](t *testing.T, m *metadata.Metadata[T], keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	m.ClearSignatures()
	for _, k := range keys {
		s, err := signature.LoadSigner(k, crypto.Hash(0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Sign(s); err != nil {
			t.Fatal(err)
		}
	}
	b, err := m.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newDiamondRepo(t *testing.T) *diamondRepo {
	t.Helper()
	exp := time.Now().Add(24 * time.Hour)
	r := &diamondRepo{files: map[string][]byte{}}
	root := metadata.Root(exp)
	keys := map[string]ed25519.PrivateKey{}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		priv, k, _ := newKey(t)
		keys[role] = priv
		root.Signed.AddKey(k, role)
	}
	kA, pubA, idA := newKey(t)
	kB, pubB, idB := newKey(t)
	kC, pubC, idC := newKey(t)
	_, pubX, idX := newKey(t)

	top := metadata.Targets(exp)
	top.Signed.Delegations = &metadata.Delegations{
		Keys: map[string]*metadata.Key{idA: pubA, idB: pubB},
		Roles: []metadata.DelegatedRole{
			{Name: "A", KeyIDs: []string{idA}, Threshold: 1, Paths: []string{"shared/*"}},
			{Name: "B", KeyIDs: []string{idB}, Threshold: 1, Paths: []string{"*/*"}},
		},
	}
	a := metadata.Targets(exp)
	a.Signed.Delegations = &metadata.Delegations{
		Keys:  map[string]*metadata.Key{idC: pubC},
		Roles: []metadata.DelegatedRole{{Name: "C", KeyIDs: []string{idC}, Threshold: 1, Paths: []string{"shared/*"}}},
	}
	b := metadata.Targets(exp)
	b.Signed.Delegations = &metadata.Delegations{
		Keys:  map[string]*metadata.Key{idX: pubX},
		Roles: []metadata.DelegatedRole{{Name: "C", KeyIDs: []string{idX}, Threshold: 1, Paths: []string{"*/*"}}},
	}
	c := metadata.Targets(exp)
	for _, name := range []string{"shared/file", "other/file"} {
		tf, err := metadata.TargetFile().FromBytes(name, []byte("content of "+name), "sha256")
		if err != nil {
			t.Fatal(err)
		}
		c.Signed.Targets[name] = tf
	}
	snap := metadata.Snapshot(exp)
	for name, m := range map[string]*metadata.Metadata[metadata.TargetsType]{"targets": top, "A": a, "B": b, "C": c} {
		snap.Signed.Meta[name+".json"] = metadata.MetaFile(1)
		key := map[string]ed25519.PrivateKey{"targets": keys[metadata.TARGETS], "A": kA, "B": kB, "C": kC}[name]
		r.files["1."+name+".json"] = signMD(t, m, key)
	}
	ts := metadata.Timestamp(exp)
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(1)
	r.files["1.snapshot.json"] = signMD(t, snap, keys[metadata.SNAPSHOT])
	r.files["timestamp.json"] = signMD(t, ts, keys[metadata.TIMESTAMP])
	r.root = signMD(t, root, keys[metadata.ROOT])
	r.files["1.root.json"] = r.root
	return r
}

func (r *diamondRepo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	name := strings.TrimPrefix(req.URL.Path, "/metadata/")
	r.mu.Lock()
	r.reqs = append(r.reqs, name)
	b, ok := r.files[name]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	w.Write(b)
}

// A role reached through two delegators is verified against each: C, signed
// for A, must not be trusted through B, whose delegation names another key.
// go-tuf's own walk caches roles by name and gets this wrong.
func TestDiamondDelegationVerifiedAgainstEachDelegator(t *testing.T) {
	repo := newDiamondRepo(t)
	srv := httptest.NewServer(repo)
	defer srv.Close()
	c := newClient(t, srv.URL, repo.root, t.TempDir())
	if _, err := c.Refresh(journal.Seen{}); err != nil {
		t.Fatal(err)
	}
	tf, err := c.TargetInfo("shared/file")
	if err != nil || tf.Length != int64(len("content of shared/file")) {
		t.Fatalf("shared/file through A: %v", err)
	}
	_, err = c.TargetInfo("other/file")
	if err == nil || errors.Is(err, ErrTargetNotFound) || !errors.Is(err, &metadata.ErrUnsignedMetadata{}) {
		t.Fatalf("other/file through B: err = %v, want C refused for B's key", err)
	}
	t.Logf("refused: %v", err)
	// C was fetched once, and verified twice.
	n := 0
	for _, r := range repo.reqs {
		if r == "1.C.json" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("C fetched %d times: %v", n, repo.reqs)
	}

	// go-tuf's updater, for the record, accepts it.
	if tf, err := c.up.GetTargetInfo("other/file"); err == nil {
		t.Logf("go-tuf's walk returns other/file through B (length %d): the reason for our own walk", tf.Length)
	}
}

// Pre-order depth-first search, as the TUF specification orders it, and
// each role fetched once.
func TestWalkOrderAndCaching(t *testing.T) {
	repo := newDiamondRepo(t)
	srv := httptest.NewServer(repo)
	defer srv.Close()
	dir := t.TempDir()
	c := newClient(t, srv.URL, repo.root, dir)
	if _, err := c.Refresh(journal.Seen{}); err != nil {
		t.Fatal(err)
	}
	before := len(repo.reqs)
	// targets -> B (A does not match missing/*) -> C, refused for B's key:
	// the walk stops at the first verification failure.
	if _, err := c.TargetInfo("missing/file"); !errors.Is(err, &metadata.ErrUnsignedMetadata{}) {
		t.Fatal(err)
	}
	if got := fmt.Sprint(repo.reqs[before:]); got != "[1.B.json 1.C.json]" {
		t.Fatalf("requests %s", got)
	}
	// targets -> A -> C (found).
	before = len(repo.reqs)
	if _, err := c.TargetInfo("shared/file"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(repo.reqs[before:]); got != "[1.A.json]" {
		t.Fatalf("requests %s (C must come from this session)", got)
	}
	// A new session finds A and C in the metadata dir: no requests.
	c2 := newClient(t, srv.URL, repo.root, dir)
	if _, err := c2.Refresh(journal.Seen{}); err != nil {
		t.Fatal(err)
	}
	before = len(repo.reqs)
	if _, err := c2.TargetInfo("shared/file"); err != nil {
		t.Fatal(err)
	}
	if extra := repo.reqs[before:]; len(extra) != 0 {
		t.Fatalf("cached roles fetched again: %v", extra)
	}
}
