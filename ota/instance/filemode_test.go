//go:build unix

package instance_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
)

// TestDataDirIsUnreadableByOtherUsers: foster.db (every device record, token
// hash and audit event), its -wal/-shm files, certificates, TUF metadata
// and blobs were created 0644 (blob dirs 0755); a data dir someone widened
// or restored with a looser umask must still not expose them. After init
// and a start, every file in the data dir is 0600 and every directory 0700.
func TestDataDirIsUnreadableByOtherUsers(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "foster-data")
	if _, err := instance.Init(ctx, dir, instance.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	in, err := instance.Open(ctx, dir, instance.Overrides{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	n := 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"foster.db", "foster.db-wal", "foster.db-shm"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v (the test must see the database files)", f, err)
		}
	}
	t.Logf("%d entries checked", n)
}
