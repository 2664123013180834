package blob_test

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/blobtest"
)

func TestFSContract(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		s, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestFSPathTraversalEscapesNothing checks on disk that refused keys wrote
// nothing next to or above the store.
func TestFSPathTraversalEscapesNothing(t *testing.T) {
	parent := t.TempDir()
	s, err := blob.NewFS(filepath.Join(parent, "store", "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range blobtest.BadKeys {
		_ = s.Put(t.Context(), key, strings.NewReader("pwned"), 5)
	}
	var found []string
	filepath.WalkDir(parent, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			found = append(found, p)
		}
		return nil
	})
	if len(found) != 0 {
		t.Fatalf("refused keys left files behind: %q", found)
	}
}

// TestFSListSkipsInFlightTempFiles: a crash mid-Put leaves a temp file that
// must never be listed or served as an object.
func TestFSListSkipsInFlightTempFiles(t *testing.T) {
	s, err := blob.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "tuf/timestamp.json", strings.NewReader("{}"), 2); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(s.Root(), "tuf", ".timestamp.json.tmp-12345")
	if err := os.WriteFile(leftover, []byte("{partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	keys, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, []string{"tuf/timestamp.json"}) {
		t.Fatalf("List = %q, want only tuf/timestamp.json", keys)
	}
	if _, err := s.Stat(t.Context(), "tuf/.timestamp.json.tmp-12345"); !errors.Is(err, blob.ErrBadKey) {
		t.Fatalf("Stat(temp file) = %v, want ErrBadKey", err)
	}
}

func TestFSCopyIsHardLink(t *testing.T) {
	s, err := blob.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "staging/x", strings.NewReader("fw"), 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Copy(t.Context(), "staging/x", "targets/m/v/x"); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(s.Root(), "staging", "x"))
	b, _ := os.Stat(filepath.Join(s.Root(), "targets", "m", "v", "x"))
	if !os.SameFile(a, b) {
		t.Error("Copy did not hard-link on a local filesystem")
	}
	entries, _ := os.ReadDir(filepath.Join(s.Root(), "targets", "m", "v"))
	if len(entries) != 1 {
		t.Errorf("Copy left temp files: %v", entries)
	}
}

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	tests := []struct {
		url     string
		root    string // "" when an error is expected
		wantErr string
	}{
		{url: "file:" + dir + "/a", root: dir + "/a"},
		{url: "file://" + dir + "/b", root: dir + "/b"},
		{url: "file:rel/c", root: dir + "/rel/c"},
		{url: dir + "/d", root: dir + "/d"},
		{url: "plain", root: dir + "/plain"},
		{url: "s3://?endpoint=http://127.0.0.1:9000", wantErr: "s3 blob store URL has no bucket"}, // more in s3_test.go
		{url: "gs://bucket", wantErr: "unsupported blob store URL"},
		{url: "file://host/path", wantErr: "empty host"},
		{url: "", wantErr: "empty blob store URL"},
	}
	for _, tc := range tests {
		s, err := blob.Open(context.Background(), tc.url)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Open(%q) error = %v, want %q", tc.url, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%q): %v", tc.url, err)
			continue
		}
		fs, ok := s.(*blob.FS)
		if !ok || fs.Root() != tc.root {
			t.Errorf("Open(%q) = %T %v, want FS at %s", tc.url, s, s, tc.root)
		}
	}
}

func TestValidKey(t *testing.T) {
	for _, key := range []string{"a", "tuf/1.root.json", "targets/edge-gw/1.0.1+build.5/0a1b.fw.bin", "a/b..c", "a/b.", "ü/ß"} {
		if err := blob.ValidKey(key); err != nil {
			t.Errorf("ValidKey(%q) = %v, want nil", key, err)
		}
	}
	for _, key := range blobtest.BadKeys {
		if err := blob.ValidKey(key); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("ValidKey(%q) = %v, want ErrBadKey", key, err)
		}
	}
}

// FuzzValidKey: whatever ValidKey accepts stays inside the store root and
// names exactly one file (no aliasing through cleaning).
func FuzzValidKey(f *testing.F) {
	for _, k := range append(slices.Clone(blobtest.BadKeys), "tuf/1.root.json", "targets/m/1.0/ab.bin", "a/b..c") {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		if blob.ValidKey(key) != nil {
			return
		}
		if path.Clean(key) != key || path.IsAbs(key) || strings.HasPrefix(key, "..") {
			t.Fatalf("ValidKey accepted unclean key %q", key)
		}
		root := "/srv/blobs"
		p := filepath.Join(root, filepath.FromSlash(key))
		if rel, err := filepath.Rel(root, p); err != nil || strings.HasPrefix(rel, "..") || filepath.ToSlash(rel) != key {
			t.Fatalf("key %q resolves to %q outside or aliased", key, p)
		}
		if err := blob.ValidPrefix(key); err != nil {
			t.Fatalf("valid key %q is not a valid prefix: %v", key, err)
		}
	})
}
