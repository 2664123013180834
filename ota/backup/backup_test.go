package backup_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/backup"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// fakeInstance is a data directory with what a backup reads: config.json,
// a SQLite store with a row, a file blob store holding a TUF timestamp, and
// a key file. (The e2e tests back up real fosterd instances.)
func fakeInstance(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "inst")
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := &instance.Config{Listen: "127.0.0.1:8443", DB: "foster.db", Blobs: "file:blobs", LogKey: "/elsewhere/log.key"}
	if err := cfg.Save(dir); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := store.Open(ctx, filepath.Join(dir, "foster.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateModel(ctx, store.Model{Name: "edge-gw"}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	bs, err := blob.NewFS(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"tuf/timestamp.json":                 `{"signed":{"version":3}}`,
		"tuf/1.root.json":                    `{"signed":{}}`,
		"targets/edge-gw/1.0.0/abc.fw.bin":   strings.Repeat("firmware", 1000),
		"staging/0123456789abcdef0123456789": "upload in flight",
	} {
		if err := bs.Put(ctx, k, strings.NewReader(v), int64(len(v))); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "keys", "tuf-root.key"), []byte("secret"), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("cert"), 0o600)
	return dir
}

func create(t *testing.T, dir string, gzip bool) (string, backup.Summary) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "b.tar")
	if gzip {
		name += ".gz"
	}
	sum, err := backup.CreateFile(context.Background(), name, backup.Options{
		Dir: dir, DB: instance.StoreDSN(dir, "foster.db"), Blobs: instance.BlobsURL(dir, "file:blobs"), FosterVersion: "test", Gzip: gzip,
	})
	if err != nil {
		t.Fatal(err)
	}
	return name, sum
}

// TestRestoreGivesBackTheInstance: every table row, every blob but uploads
// in flight, and every file of the data directory come back; keys named
// outside the data directory are reported, not silently missed.
func TestRestoreGivesBackTheInstance(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := fakeInstance(t)
		name, sum := create(t, dir, gz)
		if sum.Counts.Blobs != 3 || sum.Counts.KeyFiles != 1 || sum.TimestampVersion != 3 || sum.SchemaVersion != store.SchemaVersion() {
			t.Fatalf("summary: %+v", sum)
		}
		if len(sum.Warnings) != 1 || !strings.Contains(sum.Warnings[0], "/elsewhere/log.key") {
			t.Fatalf("warnings: %q", sum.Warnings)
		}
		if st, _ := os.Stat(name); st.Mode().Perm() != 0o600 {
			t.Fatalf("archive mode %v", st.Mode())
		}
		to := filepath.Join(t.TempDir(), "restored")
		if _, err := backup.Restore(context.Background(), backup.RestoreOptions{Archive: name, Dir: to}); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"keys/tuf-root.key", "ca.pem", "blobs/targets/edge-gw/1.0.0/abc.fw.bin", "blobs/tuf/timestamp.json"} {
			a, _ := os.ReadFile(filepath.Join(dir, f))
			b, err := os.ReadFile(filepath.Join(to, f))
			if err != nil || !bytes.Equal(a, b) {
				t.Fatalf("%s: restored %q (%v), want %q", f, b, err, a)
			}
		}
		if _, err := os.Stat(filepath.Join(to, "blobs/staging")); !os.IsNotExist(err) {
			t.Fatalf("an upload in flight was restored: %v", err)
		}
		d, err := store.Open(context.Background(), filepath.Join(to, "foster.db"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.GetModel(context.Background(), "edge-gw"); err != nil {
			t.Fatalf("restored store: %v", err)
		}
		d.Close()
	}
}

// TestRestoreIntoPostgresFromSQLite: the store of a SQLite instance is
// restored into PostgreSQL, and the new config.json names it.
func TestRestoreIntoPostgresFromSQLite(t *testing.T) {
	name, _ := create(t, fakeInstance(t), true)
	dsn := storetest.PostgresDSN(t)
	to := filepath.Join(t.TempDir(), "restored")
	sum, err := backup.Restore(context.Background(), backup.RestoreOptions{Archive: name, Dir: to, DB: dsn})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := instance.Load(to)
	if err != nil || cfg.DB != dsn || sum.DB != dsn {
		t.Fatalf("config.json db %q (%v)", cfg.DB, err)
	}
	d, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.GetModel(context.Background(), "edge-gw"); err != nil {
		t.Fatalf("restored PostgreSQL store: %v", err)
	}
}

type member struct {
	hdr  *tar.Header
	data []byte
}

func readMembers(t *testing.T, name string) []member {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var out []member
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out = append(out, member{h, b})
	}
}

func writeMembers(t *testing.T, ms []member) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "edited.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range ms {
		h := *m.hdr
		h.Size = int64(len(m.data))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(m.data)
	}
	tw.Close()
	os.WriteFile(name, buf.Bytes(), 0o600)
	return name
}

// editManifest changes the manifest (its own hash is nowhere, so a forger
// can) and, with rehash, makes its member hashes match the archive again.
func editManifest(t *testing.T, ms []member, rehash bool, edit func(m map[string]any)) {
	t.Helper()
	last := &ms[len(ms)-1]
	var m map[string]any
	if err := json.Unmarshal(last.data, &m); err != nil {
		t.Fatal(err)
	}
	if rehash {
		var list []any
		for _, x := range ms[:len(ms)-1] {
			sum := sha256.Sum256(x.data)
			list = append(list, map[string]any{"name": x.hdr.Name, "size": len(x.data), "sha256": hex.EncodeToString(sum[:])})
		}
		m["members"] = list
	}
	if edit != nil {
		edit(m)
	}
	last.data, _ = json.Marshal(m)
}

func indexOf(t *testing.T, ms []member, prefix string) int {
	for i, m := range ms {
		if strings.HasPrefix(m.hdr.Name, prefix) {
			return i
		}
	}
	t.Fatalf("no member %s*", prefix)
	return -1
}

// TestRestoreRefusesBadArchivesAndChangesNothing: tampered, truncated,
// reordered, extended, escaping, foreign-format and too-new archives are
// refused with ErrInvalid (or ErrSchemaTooNew) before anything is written:
// the data directory is not created and the blob store stays empty. An
// archive whose rows do not add up fails after writing and removes what
// it wrote.
func TestRestoreRefusesBadArchivesAndChangesNothing(t *testing.T) {
	name, _ := create(t, fakeInstance(t), false)
	good := readMembers(t, name)
	raw, _ := os.ReadFile(name)
	edit := func(f func(ms []member) []member) string {
		ms := make([]member, len(good))
		for i, m := range good {
			h := *m.hdr
			ms[i] = member{&h, bytes.Clone(m.data)}
		}
		return writeMembers(t, f(ms))
	}
	truncated := filepath.Join(t.TempDir(), "truncated.tar")
	os.WriteFile(truncated, raw[:len(raw)/2], 0o600)

	tests := []struct {
		name    string
		archive string
		want    error
		says    string
	}{
		{"firmware byte flipped", edit(func(ms []member) []member {
			i := indexOf(t, ms, "blobs/targets/")
			ms[i].data[10] ^= 1
			return ms
		}), backup.ErrInvalid, "tampered"},
		{"key file replaced", edit(func(ms []member) []member {
			ms[indexOf(t, ms, "instance/keys/")].data = []byte("attacker")
			return ms
		}), backup.ErrInvalid, "tampered"},
		{"truncated", truncated, backup.ErrInvalid, "truncated"},
		{"member dropped", edit(func(ms []member) []member {
			i := indexOf(t, ms, "blobs/tuf/1.root.json")
			return append(ms[:i], ms[i+1:]...)
		}), backup.ErrInvalid, "manifest"},
		{"no manifest", edit(func(ms []member) []member { return ms[:len(ms)-1] }), backup.ErrInvalid, "no manifest.json"},
		{"member after the manifest", edit(func(ms []member) []member {
			return append(ms, member{&tar.Header{Name: "instance/late", Typeflag: tar.TypeReg, Mode: 0o600}, []byte("x")})
		}), backup.ErrInvalid, "after"},
		{"path escapes the data directory", edit(func(ms []member) []member {
			ms[indexOf(t, ms, "instance/ca.pem")].hdr.Name = "instance/../../escaped"
			editManifest(t, ms, true, nil)
			return ms
		}), backup.ErrInvalid, "clean relative path"},
		{"blob key escapes the store", edit(func(ms []member) []member {
			ms[indexOf(t, ms, "blobs/tuf/1.root.json")].hdr.Name = "blobs/../x"
			editManifest(t, ms, true, nil)
			return ms
		}), backup.ErrInvalid, "invalid blob key"},
		{"symbolic link", edit(func(ms []member) []member {
			i := indexOf(t, ms, "instance/ca.pem")
			ms[i].hdr.Typeflag, ms[i].hdr.Linkname = tar.TypeSymlink, "/etc/passwd"
			return ms
		}), backup.ErrInvalid, "not a regular file"},
		{"unknown member", edit(func(ms []member) []member {
			ms[indexOf(t, ms, "instance/ca.pem")].hdr.Name = "other/ca.pem"
			return ms
		}), backup.ErrInvalid, "unknown member"},
		{"other format", edit(func(ms []member) []member {
			editManifest(t, ms, false, func(m map[string]any) { m["format"] = "tarball" })
			return ms
		}), backup.ErrInvalid, "format"},
		{"newer format", edit(func(ms []member) []member {
			editManifest(t, ms, false, func(m map[string]any) { m["format_version"] = backup.FormatVersion + 1 })
			return ms
		}), backup.ErrInvalid, "format version"},
		{"newer schema", edit(func(ms []member) []member {
			editManifest(t, ms, false, func(m map[string]any) { m["schema_version"] = store.SchemaVersion() + 1 })
			return ms
		}), store.ErrSchemaTooNew, "schema version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			to := filepath.Join(t.TempDir(), "restored")
			blobDir := filepath.Join(t.TempDir(), "blobs")
			_, err := backup.Restore(context.Background(), backup.RestoreOptions{Archive: tt.archive, Dir: to, Blobs: "file:" + blobDir})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("got %v, want %v saying %q", err, tt.want, tt.says)
			}
			assertUntouched(t, to, blobDir)
		})
	}

	t.Run("rows do not add up: written blobs are removed", func(t *testing.T) {
		archive := edit(func(ms []member) []member {
			editManifest(t, ms, false, func(m map[string]any) {
				tables := m["tables"].([]any)
				for _, x := range tables {
					if x.(map[string]any)["name"] == "models" {
						x.(map[string]any)["rows"] = 2.0
					}
				}
			})
			return ms
		})
		to := filepath.Join(t.TempDir(), "restored")
		blobDir := filepath.Join(t.TempDir(), "blobs")
		_, err := backup.Restore(context.Background(), backup.RestoreOptions{Archive: archive, Dir: to, Blobs: "file:" + blobDir})
		if !errors.Is(err, backup.ErrInvalid) || !strings.Contains(err.Error(), "rows") {
			t.Fatalf("got %v", err)
		}
		assertUntouched(t, to, blobDir)
	})
}

func assertUntouched(t *testing.T, dir, blobDir string) {
	t.Helper()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s: %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), ".restored.restoring")); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left its staging directory: %v", err)
	}
	if _, err := os.Stat(blobDir); os.IsNotExist(err) {
		return
	}
	s, err := blob.NewFS(blobDir)
	if err != nil {
		t.Fatal(err)
	}
	if keys, _ := s.List(context.Background(), ""); len(keys) != 0 {
		t.Fatalf("a refused restore left blobs: %v", keys)
	}
}

// TestRestoreRefusesNonEmptyTargets: a data directory with files, a store
// with rows and a blob store with objects are each refused, unchanged.
func TestRestoreRefusesNonEmptyTargets(t *testing.T) {
	src := fakeInstance(t)
	name, _ := create(t, src, true)
	ctx := context.Background()

	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "something"), []byte("x"), 0o600)
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Archive: name, Dir: full}); !errors.Is(err, backup.ErrNotEmpty) {
		t.Fatalf("non-empty directory: %v", err)
	}
	if ents, _ := os.ReadDir(full); len(ents) != 1 {
		t.Fatalf("the refused directory changed: %v", ents)
	}

	to := filepath.Join(t.TempDir(), "restored")
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Archive: name, Dir: to, DB: filepath.Join(src, "foster.db")}); !errors.Is(err, backup.ErrNotEmpty) {
		t.Fatalf("a store with rows: %v", err)
	}
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Archive: name, Dir: to, Blobs: "file:" + filepath.Join(src, "blobs")}); !errors.Is(err, backup.ErrNotEmpty) {
		t.Fatalf("a blob store with objects: %v", err)
	}
	if _, err := os.Stat(to); !os.IsNotExist(err) {
		t.Fatalf("a refused restore created %s", to)
	}
	// An empty existing directory is fine.
	empty := t.TempDir()
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Archive: name, Dir: empty, Now: time.Now}); err != nil {
		t.Fatalf("into an empty directory: %v", err)
	}
}

// TestBackupNeverOverwritesAFile: an existing --out is refused, untouched.
func TestBackupNeverOverwritesAFile(t *testing.T) {
	dir := fakeInstance(t)
	out := filepath.Join(t.TempDir(), "b.tar")
	os.WriteFile(out, []byte("older backup"), 0o600)
	_, err := backup.CreateFile(context.Background(), out, backup.Options{Dir: dir, DB: instance.StoreDSN(dir, "foster.db"), Blobs: instance.BlobsURL(dir, "file:blobs")})
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("got %v", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "older backup" {
		t.Fatal("an existing file was overwritten")
	}
}
