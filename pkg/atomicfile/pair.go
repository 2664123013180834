package atomicfile

import (
	"errors"
	"fmt"
	"os"
)

// A certificate and its key live in two files that must change together: a
// power cut between two plain replacements would leave a new key beside the
// old certificate, and neither credential usable. WritePair first writes
// both new files beside the old ones (KEY.next, then CERT.next), then
// renames KEY.next and CERT.next over them; RecoverPair, run before the pair
// is read, finishes an interrupted switch (CERT.next exists: both new files
// were complete) or drops its half-written start (only KEY.next exists).

const nextSuffix = ".next"

// WritePair replaces certPath (mode 0644) and keyPath (mode 0600) as a pair.
func WritePair(certPath string, certPEM []byte, keyPath string, keyPEM []byte) error {
	if err := WriteFile(keyPath+nextSuffix, keyPEM, 0o600); err != nil {
		return err
	}
	if err := WriteFile(certPath+nextSuffix, certPEM, 0o644); err != nil {
		os.Remove(keyPath + nextSuffix)
		return err
	}
	return finishPair(certPath, keyPath)
}

func finishPair(certPath, keyPath string) error {
	if err := Rename(keyPath+nextSuffix, keyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replacing %s: %w", keyPath, err)
	}
	if err := Rename(certPath+nextSuffix, certPath); err != nil {
		return fmt.Errorf("replacing %s: %w", certPath, err)
	}
	return nil
}

// RecoverPair completes or undoes a WritePair that a crash interrupted, so
// certPath and keyPath hold a matching pair again. It does nothing when no
// switch was under way.
func RecoverPair(certPath, keyPath string) error {
	if _, err := os.Stat(certPath + nextSuffix); err == nil {
		return finishPair(certPath, keyPath)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Look before removing: on a read-only directory (a Kubernetes Secret
	// mounted as the data directory) removing a file that is not there
	// fails with EROFS, not ENOENT.
	if _, err := os.Lstat(keyPath + nextSuffix); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.Remove(keyPath + nextSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
