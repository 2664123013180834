package instance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
)

// DefaultLogKey is where a dev instance keeps the transparency log key
// (Ed25519, PKCS#8, 0600, encrypted when FOSTER_PASSPHRASE is set), relative
// to the data directory. Config.LogKey may name another file or a KMS URI.
const DefaultLogKey = "keys/log.key"

// LogPubPath is DIR/log.pub: the log's C2SP signed-note verifier key, the
// trust anchor auditors pin (`foster audit verify --log-key`).
func LogPubPath(dir string) string { return filepath.Join(dir, "log.pub") }

// LogOrigin is the origin (name) of the instance's attestation log:
// "foster.local/<first 8 bytes of SHA-256(root CA DER), hex>/attestations".
// It derives from the CA root, so it is stable for the life of the instance
// and differs between instances.
func LogOrigin(dir string) (string, error) {
	raw, err := os.ReadFile(PathsOf(dir).CARoot)
	if err != nil {
		return "", fmt.Errorf("reading CA root for the log origin: %w", err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		return "", fmt.Errorf("%s holds no PEM certificate", PathsOf(dir).CARoot)
	}
	sum := sha256.Sum256(blk.Bytes)
	return "foster.local/" + hex.EncodeToString(sum[:8]) + "/attestations", nil
}

// openLog opens the instance's log (see ensureLogKey).
func openLog(ctx context.Context, dir, keyRef string, st *store.DB, pass []byte) (*tlog.Log, error) {
	signer, origin, err := ensureLogKey(ctx, dir, keyRef, pass)
	if err != nil {
		return nil, err
	}
	l, err := tlog.Open(ctx, st, origin, signer)
	if err != nil {
		return nil, fmt.Errorf("opening transparency log: %w", err)
	}
	return l, nil
}

// ensureLogKey loads the log key (keyRef: a file relative to dir or a KMS
// URI; "" for DefaultLogKey), first creating the file and DIR/log.pub when
// the instance has none (instances made before the log existed), and checks
// that DIR/log.pub still matches it.
func ensureLogKey(ctx context.Context, dir, keyRef string, pass []byte) (note.Signer, string, error) {
	origin, err := LogOrigin(dir)
	if err != nil {
		return nil, "", err
	}
	if keyRef == "" {
		keyRef = DefaultLogKey
	}
	if !signing.IsKMS(keyRef) {
		keyRef = resolve(dir, keyRef)
		if _, err := os.Stat(keyRef); errors.Is(err, os.ErrNotExist) {
			if _, err := signing.GenerateEd25519File(keyRef, pass); err != nil {
				return nil, "", fmt.Errorf("creating transparency log key: %w", err)
			}
		}
	}
	s, err := signing.Load(ctx, keyRef, pass)
	if err != nil {
		return nil, "", fmt.Errorf("loading transparency log key: %w", err)
	}
	signer, vkey, err := tlog.NewSigner(ctx, origin, s)
	if err != nil {
		return nil, "", err
	}
	pub := LogPubPath(dir)
	old, err := os.ReadFile(pub)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := atomicfile.WriteFile(pub, []byte(vkey+"\n"), 0o600); err != nil {
			return nil, "", err
		}
	case err != nil:
		return nil, "", err
	case string(bytes.TrimSpace(old)) != vkey:
		// Auditors pinned the old key: a silent key change would look like a forged log.
		return nil, "", fmt.Errorf("%s does not match the transparency log key %s: restore the key, or give auditors the new public key and remove %s", pub, keyRef, pub)
	}
	return signer, origin, nil
}
