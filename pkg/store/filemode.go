package store

import (
	"fmt"
	"os"
)

// createPrivate makes the SQLite database file at path readable by its owner
// only before the driver opens it: SQLite gives its -wal and -shm files the
// database file's permissions, and it holds every device record, token hash
// and audit event. A database created 0644 by an older Foster loses its
// group and world bits.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(st.Mode().Perm() &^ 0o077); err != nil {
			return fmt.Errorf("restricting %s to its owner: %w", path, err)
		}
	}
	for _, side := range []string{"-wal", "-shm"} {
		if st, err := os.Stat(path + side); err == nil && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path+side, st.Mode().Perm()&^0o077); err != nil {
				return fmt.Errorf("restricting %s to its owner: %w", path+side, err)
			}
		}
	}
	return nil
}
