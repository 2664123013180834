package tufrepo

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestLegacySHA512TargetsStayReadable: repositories published before
// fosterd signed SHA-256 only hold entries with both sha256 and sha512.
// They are read (the extra hash is ignored), kept verbatim when the role is
// re-signed, and new releases next to them are signed with SHA-256 only.
func TestLegacySHA512TargetsStayReadable(t *testing.T) {
	ctx := t.Context()
	st, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	keys := benchKeys(t)
	if _, err := Init(ctx, st, keys, Options{}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, st, keys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	old := []byte("firmware signed with both hashes")
	s256, s512 := sha256.Sum256(old), sha512.Sum512(old)
	custom := json.RawMessage(`{"hardware_ids":[],"model":"edge-gw","release_counter":1,"version":"1.0.0"}`)
	const oldPath = "edge-gw/1.0.0/fw.bin"
	func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		tx := r.begin(ctx)
		tf := &metadata.TargetFiles{Length: int64(len(old)), Hashes: metadata.Hashes{"sha256": s256[:], "sha512": s512[:]}, Custom: &custom}
		if err := tx.addTarget(oldPath, tf); err != nil {
			t.Fatal(err)
		}
		if err := tx.commit(); err != nil {
			t.Fatal(err)
		}
	}()

	if r, err = Open(ctx, st, keys, Options{}); err != nil { // as a restarted fosterd
		t.Fatalf("reopening a repository with sha512-signed targets: %v", err)
	}
	got, _, ok := r.Lookup(oldPath)
	if !ok || got.SHA256 != hex.EncodeToString(s256[:]) || got.Length != int64(len(old)) {
		t.Fatalf("Lookup of a legacy target = %+v, %v", got, ok)
	}

	body := []byte("firmware signed with sha256 only")
	if _, err := r.AddTarget(ctx, "edge-gw/1.0.1/fw.bin", bytes.NewReader(body), int64(len(body)), nil); err != nil {
		t.Fatalf("AddTarget next to a legacy target: %v", err)
	}
	ts, err := r.Targets(ctx)
	if err != nil || len(ts) != 2 || ts[0].Path != oldPath || ts[0].SHA256 != got.SHA256 {
		t.Fatalf("Targets = %+v, %v", ts, err)
	}
	signed := map[string]metadata.Hashes{}
	for _, rl := range r.cur.Load().roles {
		for p, tf := range rl.md.Signed.Targets {
			signed[p] = tf.Hashes
		}
	}
	if h := signed[oldPath]; len(h) != 2 || !bytes.Equal(h["sha512"], s512[:]) {
		t.Fatalf("legacy entry re-signed as %v, want its sha256 and sha512 kept", h)
	}
	if h := signed["edge-gw/1.0.1/fw.bin"]; len(h) != 1 || h["sha256"] == nil {
		t.Fatalf("new entry signed with %v, want sha256 only", h)
	}
}
