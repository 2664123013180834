package instance

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// A production instance (foster init --production) differs from a
// development one only in where the offline keys are: the root CA key and
// the TUF root and targets keys go to a separate directory (removable
// media) or stay in a KMS/HSM, and config.json names only online keys
// (tuf_keys.root and tuf_keys.targets empty). fosterd then serves with the
// intermediate CA key and the snapshot, timestamp, models and log keys;
// root and targets change only by ceremony (docs/TUF.md, docs/CA.md).

// Names of the offline keys Init writes into OfflineOptions.Dir; each TUF
// key also gets NAME.pub, its public key (for ceremonies: foster tuf stage
// --add-key/--remove-key).
const (
	OfflineRootCAKey     = "root_ca.key"
	OfflineTUFRootKey    = "tuf-root.key"
	OfflineTUFTargetsKey = "tuf-targets.key"
)

// ModelsPubPath is DIR/tuf-models.pub, the public half of the key that
// signs models/<model> roles (DefaultModelKey): the --model-key of the
// targets ceremony that delegates a model when the targets key is offline.
func ModelsPubPath(dir string) string { return filepath.Join(dir, "tuf-models.pub") }

// OfflineOptions make Init create a production instance.
type OfflineOptions struct {
	// Dir receives the offline keys Init generates (directory 0700, keys
	// 0600, encrypted with Passphrase). Required, even when every key below
	// is given. It must be neither inside the data directory nor contain
	// it, and must hold no key yet.
	Dir string
	// RootCAKey is an existing root CA key to use instead of generating
	// one in Dir: a step KMS/HSM URI (pkcs11:, awskms:, cloudkms:,
	// azurekms:, softkms:path=FILE) or a PEM key file.
	RootCAKey string
	// TUFRootKey and TUFTargetsKey are existing TUF keys to use instead of
	// generating them in Dir: a key file (foster tuf keygen, made on the
	// key holder's machine) or a sigstore KMS URI (awskms://, gcpkms://,
	// azurekms://, hashivault://).
	TUFRootKey, TUFTargetsKey string
	// Passphrase encrypts the keys written to Dir and decrypts given key
	// files; nil means InitOptions.Passphrase. The server's passphrase sits
	// next to the server: offline keys deserve their own.
	Passphrase []byte
}

// OfflineKeys says where each offline key of a production instance is:
// a file in OfflineOptions.Dir or the reference given.
type OfflineKeys struct {
	RootCA, TUFRoot, TUFTargets string
}

// Keys returns where Init puts (or finds) each offline key.
func (o OfflineOptions) Keys() OfflineKeys {
	pick := func(given, name string) string {
		if given != "" {
			return given
		}
		return filepath.Join(o.Dir, name)
	}
	return OfflineKeys{
		RootCA:     pick(o.RootCAKey, OfflineRootCAKey),
		TUFRoot:    pick(o.TUFRootKey, OfflineTUFRootKey),
		TUFTargets: pick(o.TUFTargetsKey, OfflineTUFTargetsKey),
	}
}

// check refuses an offline directory that is not separate from the data
// directory dir or already holds keys, a given key file inside dir, and a
// dir that is not empty (a production instance is made in one go). It
// creates nothing.
func (o *OfflineOptions) check(dir string) error {
	if o.Dir == "" {
		return errors.New("production init: the offline directory is required (removable media for the root CA, TUF root and targets keys)")
	}
	d, err := realPath(dir)
	if err != nil {
		return err
	}
	off, err := realPath(o.Dir)
	if err != nil {
		return err
	}
	if within(off, d) || within(d, off) {
		return fmt.Errorf("production init: offline directory %s and data directory %s overlap: the offline keys must not be on the server's disk; use separate media", o.Dir, dir)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("production init: %s is not empty: a production instance is created in an empty or new directory", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ents, err := os.ReadDir(o.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("production init: reading offline directory: %w", err)
	}
	var keys []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".key") || strings.HasSuffix(e.Name(), ".key.pub") {
			keys = append(keys, e.Name())
		}
	}
	if len(keys) > 0 {
		return fmt.Errorf("production init: offline directory %s already holds keys (%s): refusing to mix the keys of two instances; use an empty directory", o.Dir, strings.Join(keys, ", "))
	}
	for name, path := range map[string]string{
		"root CA key": keyFile(o.RootCAKey, ca.IsKMSURI(o.RootCAKey)), "TUF root key": keyFile(o.TUFRootKey, signing.IsKMS(o.TUFRootKey)),
		"TUF targets key": keyFile(o.TUFTargetsKey, signing.IsKMS(o.TUFTargetsKey)),
	} {
		if path == "" {
			continue
		}
		p, err := realPath(path)
		if err != nil {
			return err
		}
		if within(p, d) {
			return fmt.Errorf("production init: the %s %s is inside the data directory %s: an offline key must not be on the server's disk", name, path, dir)
		}
	}
	return nil
}

// keyFile is the file a given key reference names: ref itself, the path of
// a softkms URI, or "" for another KMS/HSM URI or no reference.
func keyFile(ref string, isURI bool) string {
	if !isURI {
		return ref
	}
	rest, ok := strings.CutPrefix(ref, "softkms:")
	if !ok {
		return ""
	}
	rest = strings.TrimPrefix(rest, "path=")
	path, _, _ := strings.Cut(rest, ";")
	return path
}

// realPath is path made absolute with the symlinks of its longest
// existing prefix resolved, so that overlap checks see through links.
func realPath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	rest := ""
	for p := abs; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest), nil
		}
		if p == filepath.Dir(p) {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// within reports whether path is parent or below it.
func within(path, parent string) bool {
	rel, err := filepath.Rel(parent, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// rootCAKeyRef is ca.InitOptions.RootKey for a production instance: a new
// key file in Dir, or the given key (a file becomes a softkms URI, which
// the CA opens as an existing key).
func (o *OfflineOptions) rootCAKeyRef() (string, error) {
	switch {
	case o.RootCAKey == "":
		return filepath.Abs(filepath.Join(o.Dir, OfflineRootCAKey))
	case ca.IsKMSURI(o.RootCAKey):
		return o.RootCAKey, nil
	default:
		abs, err := filepath.Abs(o.RootCAKey)
		return "softkms:path=" + abs, err
	}
}

// offlineTUFKey loads the given TUF key ref, or generates a new Ed25519 key
// at path (and path.pub) when ref is empty.
func offlineTUFKey(ctx context.Context, ref, path string, pass []byte) (signature.Signer, error) {
	if ref != "" {
		return signing.Load(ctx, ref, pass)
	}
	priv, err := signing.GenerateEd25519File(path, pass)
	if err != nil {
		return nil, err
	}
	if err := writePublicKey(path+".pub", priv.Public(), 0o644); err != nil {
		return nil, err
	}
	return signing.FromPrivateKey(priv)
}

func writePublicKey(path string, pub crypto.PublicKey, perm os.FileMode) error {
	b, err := cryptoutils.MarshalPublicKeyToPEM(pub)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, perm)
}

// OfflineKeysOnDisk lists the offline keys on this server's disk, each
// with where it is: the root CA key in DIR/keys, and the TUF root and
// targets keys when config.json names them as files or they are in
// DIR/keys. A production instance lists none; a development instance all
// three.
func OfflineKeysOnDisk(dir string, cfg *Config) []string {
	var out []string
	present := func(rel string) bool {
		_, err := os.Stat(resolve(dir, rel))
		return err == nil
	}
	if rel := filepath.Join("keys", OfflineRootCAKey); present(rel) {
		out = append(out, "root CA key "+rel)
	}
	for _, k := range []struct{ name, setting, ref, def string }{
		{"TUF root key", "tuf_keys.root", cfg.TUFKeys.Root, filepath.Join("keys", OfflineTUFRootKey)},
		{"TUF targets key", "tuf_keys.targets", cfg.TUFKeys.Targets, filepath.Join("keys", OfflineTUFTargetsKey)},
	} {
		switch {
		case k.ref != "" && !signing.IsKMS(k.ref):
			out = append(out, fmt.Sprintf("%s %s (%s)", k.name, k.ref, k.setting))
		case present(k.def):
			out = append(out, fmt.Sprintf("%s %s (not in use)", k.name, k.def))
		}
	}
	return out
}

// OfflineKeyWarning is what fosterd says at start (and `foster tuf status`
// shows) when offline keys are on its disk; "" when none are. A
// development instance, whose config holds the TUF root key as a file, is
// named as such.
func OfflineKeyWarning(dir string, cfg *Config) string {
	keys := OfflineKeysOnDisk(dir, cfg)
	if len(keys) == 0 {
		return ""
	}
	if cfg.TUFKeys.Root != "" && !signing.IsKMS(cfg.TUFKeys.Root) {
		return fmt.Sprintf("development instance: offline keys (%s) are on this server's disk; for production see foster init --production (docs/OPERATIONS.md)", strings.Join(keys, ", "))
	}
	return fmt.Sprintf("offline keys are on this server's disk: %s; keep them only on offline media (and tuf_keys.root and tuf_keys.targets empty) (docs/OPERATIONS.md)", strings.Join(keys, ", "))
}
