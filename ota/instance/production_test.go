package instance_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

var (
	serverPass  = []byte("server passphrase")
	offlinePass = []byte("offline passphrase")
)

// TestProductionInitKeepsOfflineKeysOffTheServer: after a production init
// the data directory holds only online keys and names only those in
// config.json; the root CA key and the TUF root and targets keys are in the
// offline directory, encrypted with the offline passphrase (the server's
// does not open them), and they are the keys root.json trusts. The instance
// opens and serves without them and raises no warning.
func TestProductionInitKeepsOfflineKeysOffTheServer(t *testing.T) {
	ctx := context.Background()
	dir, offline := filepath.Join(t.TempDir(), "foster-data"), filepath.Join(t.TempDir(), "usb")
	cfg, err := instance.Init(ctx, dir, instance.InitOptions{Passphrase: serverPass,
		Offline: &instance.OfflineOptions{Dir: offline, Passphrase: offlinePass}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TUFKeys.Root != "" || cfg.TUFKeys.Targets != "" {
		t.Fatalf("config.json names offline keys: root %q, targets %q", cfg.TUFKeys.Root, cfg.TUFKeys.Targets)
	}
	if got, want := dirNames(t, filepath.Join(dir, "keys")), []string{"intermediate_ca.key", "log.key", "tuf-models.key", "tuf-snapshot.key", "tuf-timestamp.key"}; !slices.Equal(got, want) {
		t.Fatalf("DIR/keys holds %v, want only the online keys %v", got, want)
	}
	if got, want := dirNames(t, offline), []string{"root_ca.key", "tuf-root.key", "tuf-root.key.pub", "tuf-targets.key", "tuf-targets.key.pub"}; !slices.Equal(got, want) {
		t.Fatalf("offline directory holds %v, want %v", got, want)
	}
	for _, f := range []string{"root_ca.key", "tuf-root.key", "tuf-targets.key"} {
		p := filepath.Join(offline, f)
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, st, err)
		}
		if f == "root_ca.key" {
			continue // a CA key (PKCS#8 PBES2): ca's tests hold it to its passphrase
		}
		if _, err := signing.LoadPrivateKey(p, serverPass); err == nil {
			t.Errorf("the server's passphrase opens the offline key %s", f)
		}
		if _, err := signing.LoadPrivateKey(p, offlinePass); err != nil {
			t.Errorf("%s does not open with the offline passphrase: %v", f, err)
		}
	}
	// root.json trusts exactly the offline keys for root and targets.
	root := readRoot(t, filepath.Join(dir, "root.json"))
	for role, f := range map[string]string{"root": "tuf-root.key.pub", "targets": "tuf-targets.key.pub"} {
		if got, want := root.Signed.Roles[role].KeyIDs, []string{keyID(t, filepath.Join(offline, f))}; !slices.Equal(got, want) {
			t.Errorf("root.json %s keys %v, want the offline %s %v", role, got, f, want)
		}
	}
	// The models key's public half is there for the delegation ceremony.
	if got, want := keyID(t, instance.ModelsPubPath(dir)), privKeyID(t, filepath.Join(dir, "keys", "tuf-models.key"), serverPass); got != want {
		t.Errorf("tuf-models.pub is key %s, keys/tuf-models.key is %s", got, want)
	}

	in, err := instance.Open(ctx, dir, instance.Overrides{}, serverPass, nil)
	if err != nil {
		t.Fatalf("a production instance does not open: %v", err)
	}
	defer in.Close()
	if len(in.Warnings) != 0 {
		t.Errorf("production instance warns: %q", in.Warnings)
	}
	if held := in.Repo.Status().Held; !slices.Equal(held, []string{"snapshot", "timestamp"}) {
		t.Errorf("fosterd holds keys for %v, want only snapshot and timestamp", held)
	}
	// Releasing needs the model delegated first: the error names the ceremony.
	_, err = in.Repo.AddTarget(ctx, "edge-gw/1.0.0/fw.bin", strings.NewReader("fw"), 2, nil)
	if !errors.Is(err, tufrepo.ErrKeyUnavailable) || !strings.Contains(err.Error(), "targets ceremony") {
		t.Fatalf("release of an undelegated model: %v; want ErrKeyUnavailable naming the targets ceremony", err)
	}
}

// TestProductionInitUsesExistingOfflineKeys: keys the holders made
// themselves (foster tuf keygen; a root CA key given as a file, opened as
// softkms) are used as they are: nothing new is generated for them, and the
// offline directory keeps only what was generated.
func TestProductionInitUsesExistingOfflineKeys(t *testing.T) {
	ctx := context.Background()
	holder := t.TempDir()
	tufRoot := filepath.Join(holder, "alice.key")
	if _, err := signing.GenerateEd25519File(tufRoot, offlinePass); err != nil {
		t.Fatal(err)
	}
	caKey := filepath.Join(holder, "root-ca.key") // an ECDSA key, as CAs use
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.WritePrivateKey(caKey, ec, nil); err != nil {
		t.Fatal(err)
	}
	dir, offline := filepath.Join(t.TempDir(), "foster-data"), filepath.Join(t.TempDir(), "usb")
	if _, err := instance.Init(ctx, dir, instance.InitOptions{
		Offline: &instance.OfflineOptions{Dir: offline, Passphrase: offlinePass, TUFRootKey: tufRoot, RootCAKey: caKey},
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := dirNames(t, offline), []string{"tuf-targets.key", "tuf-targets.key.pub"}; !slices.Equal(got, want) {
		t.Fatalf("offline directory holds %v, want only the generated targets key %v", got, want)
	}
	root := readRoot(t, filepath.Join(dir, "root.json"))
	if got, want := root.Signed.Roles["root"].KeyIDs, []string{privKeyID(t, tufRoot, offlinePass)}; !slices.Equal(got, want) {
		t.Fatalf("root.json root keys %v, want the holder's key %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys", "root_ca.key")); !os.IsNotExist(err) {
		t.Fatalf("a root CA key was written to DIR/keys (%v)", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(caPEM)
	if err != nil || len(certs) != 1 {
		t.Fatalf("ca.pem: %v", err)
	}
	if !ec.PublicKey.Equal(certs[0].PublicKey) {
		t.Fatal("ca.pem is not the given root CA key's certificate")
	}
}

// TestProductionInitRefusesOfflineKeysOnTheServer: the offline directory
// must be separate media (not inside the data directory, not containing
// it, not the same through a symlink) and hold no keys of another instance;
// the data directory must be new; a given key may not live in the data
// directory. Each refusal writes nothing.
func TestProductionInitRefusesOfflineKeysOnTheServer(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, base string) (dir string, off instance.OfflineOptions)
		wantErr string
	}{
		{"offline inside the data directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "data", "offline")}
		}, "overlap"},
		{"data directory inside offline", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "usb", "data"), instance.OfflineOptions{Dir: filepath.Join(base, "usb")}
		}, "overlap"},
		{"the same directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "data") + "/."}
		}, "overlap"},
		{"offline a symlink into the data directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			mustMkdir(t, filepath.Join(base, "data"))
			if err := os.Symlink(filepath.Join(base, "data"), filepath.Join(base, "link")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "link", "keys")}
		}, "overlap"},
		{"offline already holds keys", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			mustMkdir(t, filepath.Join(base, "usb"))
			if err := os.WriteFile(filepath.Join(base, "usb", "tuf-root.key"), []byte("another instance's"), 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "usb")}
		}, "already holds keys"},
		{"data directory not empty", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			mustMkdir(t, filepath.Join(base, "data"))
			if err := os.WriteFile(filepath.Join(base, "data", "ca.pem"), []byte("half an instance"), 0o600); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "usb")}
		}, "not empty"},
		{"given TUF key in the data directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "usb"), TUFTargetsKey: filepath.Join(base, "data", "keys", "t.key")}
		}, "inside the data directory"},
		{"given root CA key in the data directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "data"), instance.OfflineOptions{Dir: filepath.Join(base, "usb"), RootCAKey: "softkms:path=" + filepath.Join(base, "data", "ca.key")}
		}, "inside the data directory"},
		{"no offline directory", func(t *testing.T, base string) (string, instance.OfflineOptions) {
			return filepath.Join(base, "data"), instance.OfflineOptions{}
		}, "offline directory is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dir, off := tt.setup(t, base)
			before := tree(t, base)
			_, err := instance.Init(context.Background(), dir, instance.InitOptions{Offline: &off})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Init: %v; want an error containing %q", err, tt.wantErr)
			}
			if after := tree(t, base); !slices.Equal(before, after) {
				t.Fatalf("a refused init changed the disk:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// TestOfflineKeyWarning: a development instance is told, in those words,
// that its offline keys are on the server's disk; a production instance is
// not, until an offline key is copied back onto its disk.
func TestOfflineKeyWarning(t *testing.T) {
	ctx := context.Background()
	dev := filepath.Join(t.TempDir(), "dev")
	devCfg, err := instance.Init(ctx, dev, instance.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := instance.OfflineKeyWarning(dev, devCfg)
	for _, want := range []string{"development instance: offline keys", "root CA key keys/root_ca.key", "TUF root key keys/tuf-root.key", "TUF targets key keys/tuf-targets.key", "on this server's disk", "foster init --production"} {
		if !strings.Contains(w, want) {
			t.Errorf("dev warning %q lacks %q", w, want)
		}
	}
	in, err := instance.Open(ctx, dev, instance.Overrides{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(in.Warnings, []string{w}) {
		t.Errorf("dev instance Warnings %q, want [%q]", in.Warnings, w)
	}
	in.Close()

	prod, offline := filepath.Join(t.TempDir(), "prod"), filepath.Join(t.TempDir(), "usb")
	prodCfg, err := instance.Init(ctx, prod, instance.InitOptions{Offline: &instance.OfflineOptions{Dir: offline}})
	if err != nil {
		t.Fatal(err)
	}
	if w := instance.OfflineKeyWarning(prod, prodCfg); w != "" {
		t.Fatalf("production instance warns: %q", w)
	}
	// Someone copies the root CA key back onto the server.
	b, err := os.ReadFile(filepath.Join(offline, "root_ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(prod, "keys", "root_ca.key"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	w = instance.OfflineKeyWarning(prod, prodCfg)
	if !strings.Contains(w, "offline keys are on this server's disk: root CA key keys/root_ca.key") || strings.Contains(w, "development") {
		t.Fatalf("root CA key back on a production server: warning %q", w)
	}
	// A targets key configured as a file is on the disk too.
	prodCfg.TUFKeys.Targets = filepath.Join(offline, "tuf-targets.key")
	if w := instance.OfflineKeyWarning(prod, prodCfg); !strings.Contains(w, "TUF targets key "+prodCfg.TUFKeys.Targets+" (tuf_keys.targets)") {
		t.Fatalf("targets key configured as a file: warning %q", w)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// tree lists every path under base (sorted), to compare before and after.
func tree(t *testing.T, base string) []string {
	t.Helper()
	var out []string
	filepath.Walk(base, func(p string, _ os.FileInfo, err error) error {
		out = append(out, p)
		return nil
	})
	return out
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

func readRoot(t *testing.T, path string) *metadata.Metadata[metadata.RootType] {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	root, err := metadata.Root().FromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func keyID(t *testing.T, pubPath string) string {
	t.Helper()
	b, err := os.ReadFile(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return tufID(t, pub)
}

func privKeyID(t *testing.T, path string, pass []byte) string {
	t.Helper()
	priv, err := signing.LoadPrivateKey(path, pass)
	if err != nil {
		t.Fatal(err)
	}
	return tufID(t, priv.(crypto.Signer).Public())
}

func tufID(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	_, id, err := tufrepo.TUFKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
