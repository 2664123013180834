// Package instance knows the layout of a fosterd data directory, creates a
// development instance when asked (PKI, TUF keys and root, admin
// credential, config), and wires the CA, store, blob store, TUF repository
// and HTTP API into a running server.
//
// Key hierarchy of a dev instance (see docs/CONTRACTS.md): the root CA and
// TUF root/targets keys are offline keys in a real deployment; a dev instance
// keeps them in DIR/keys (0600, encrypted when FOSTER_PASSPHRASE is set) so a
// single command gives a working system, and fosterd warns about them at
// start. A production instance (InitOptions.Offline, production.go) puts
// them in a separate directory or a KMS/HSM, never in DIR.
package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/signature"
)

// DefaultListen is where fosterd listens unless told otherwise.
const DefaultListen = "127.0.0.1:8443"

// Config is DIR/config.json.
type Config struct {
	// Listen is the HTTPS listen address.
	Listen string `json:"listen"`
	// ServerURL is how clients reach this instance (written into CLI defaults).
	ServerURL string `json:"server_url"`
	// DB is the store DSN: a SQLite path (relative to DIR) or postgres:// URL.
	DB string `json:"db"`
	// Blobs is the blob store URL: file:PATH (relative to DIR) or s3://...
	Blobs string `json:"blobs"`
	// TUF key references: file paths (relative to DIR) or KMS URIs.
	TUFKeys TUFKeyRefs `json:"tuf_keys"`
	// TUFLifetimes are the TUF metadata lifetimes per role (lifetimes.go).
	TUFLifetimes TUFLifetimes `json:"tuf_lifetimes,omitzero"`
	// LogKey is the transparency log key (Ed25519): a file path (relative
	// to DIR) or a KMS URI. Default DefaultLogKey, created when missing.
	LogKey string `json:"log_key,omitempty"`
	// Identity tunes the device CA; zero values mean the defaults.
	Identity IdentityConfig `json:"identity,omitzero"`
	// Distribution tunes how devices fetch metadata and targets (tuf.go).
	Distribution DistributionConfig `json:"distribution,omitzero"`
	// HTTP tunes connection and request limits, throttling and the
	// metrics listener (limits.go).
	HTTP HTTPConfig `json:"http,omitzero"`
	// Rollouts tunes the staged-rollout controller (rollouts.go).
	Rollouts RolloutsConfig `json:"rollouts,omitzero"`
	// MQTT is the broker for "update now" nudges (nudge.go); optional.
	MQTT MQTTConfig `json:"mqtt,omitzero"`
}

// IdentityConfig tunes certificate lifetimes and renewal. Durations are Go
// duration strings ("2160h").
type IdentityConfig struct {
	// DeviceValidity is the lifetime of device certificates (default 2160h, 90 days).
	DeviceValidity string `json:"device_validity,omitempty"`
	// RenewGrace is how long after expiry a device may renew by proving
	// possession of its key (default 43800h, 5 years).
	RenewGrace string `json:"renew_grace,omitempty"`
	// CRLValidity is nextUpdate - thisUpdate of the published CRL (default 24h).
	CRLValidity string `json:"crl_validity,omitempty"`
	// IntermediateKey is the issuing CA key: a file path (relative to DIR)
	// or a KMS/HSM URI (softkms:path=..., awskms:key-id=..., pkcs11:...;
	// docs/CA.md). Default keys/intermediate_ca.key.
	IntermediateKey string `json:"intermediate_key,omitempty"`
}

func (c IdentityConfig) durations() (device, grace, crl time.Duration, err error) {
	parse := func(name, v string) (time.Duration, error) {
		if v == "" {
			return 0, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("config identity.%s %q: want a positive duration like 2160h", name, v)
		}
		return d, nil
	}
	if device, err = parse("device_validity", c.DeviceValidity); err != nil {
		return
	}
	if grace, err = parse("renew_grace", c.RenewGrace); err != nil {
		return
	}
	crl, err = parse("crl_validity", c.CRLValidity)
	return
}

// TUFKeyRefs names the TUF keys fosterd holds: file paths (relative to
// DIR) or KMS URIs (awskms://, gcpkms://, azurekms://, hashivault://). An
// empty root or targets reference means that key is offline (changes need a
// ceremony: foster tuf).
type TUFKeyRefs struct {
	Root      string `json:"root"`
	Targets   string `json:"targets"`
	Snapshot  string `json:"snapshot"`
	Timestamp string `json:"timestamp"`
	// Models signs models/<model> roles unless ModelKeys names another key
	// for the model. Empty (instances from before per-model roles): the
	// targets key signs them.
	Models    string            `json:"models,omitempty"`
	ModelKeys map[string]string `json:"model_keys,omitempty"`
	// Extra are further keys fosterd holds during a rotation (the next
	// snapshot or timestamp key): they sign alongside the current keys.
	Extra []string `json:"extra,omitempty"`
}

// Paths are the files of a data directory.
type Paths struct {
	Dir, Config, CARoot, Intermediate, ServerCert, ServerKey, AdminCert, AdminKey, TUFRoot string
}

// PathsOf returns the layout of dir.
func PathsOf(dir string) Paths {
	j := func(n string) string { return filepath.Join(dir, n) }
	return Paths{
		Dir: dir, Config: j("config.json"), CARoot: j("ca.pem"), Intermediate: j("intermediate.pem"),
		ServerCert: j("server.crt"), ServerKey: j("server.key"),
		AdminCert: j("admin.crt"), AdminKey: j("admin.key"), TUFRoot: j("root.json"),
	}
}

// Exists reports whether dir holds an initialised instance.
func Exists(dir string) bool {
	_, err := os.Stat(PathsOf(dir).Config)
	return err == nil
}

// Load reads DIR/config.json.
func Load(dir string) (*Config, error) {
	b, err := os.ReadFile(PathsOf(dir).Config)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a Foster instance (no config.json): create one with fosterd --data-dir %s --init or foster init --dir %s", dir, dir, dir)
	}
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", PathsOf(dir).Config, err)
	}
	return c, nil
}

// ParseConfig parses the content of a config.json; unknown fields are
// refused.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// Save writes c as dir's config.json, atomically and readable by its owner
// only.
func (c *Config) Save(dir string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(PathsOf(dir).Config, append(b, '\n'), 0o600)
}

// InitOptions tune Init.
type InitOptions struct {
	Listen string // default DefaultListen
	DB     string // default foster.db (SQLite in DIR)
	Blobs  string // default file:blobs
	// Hosts are extra DNS names / IPs for the server certificate
	// (localhost, 127.0.0.1 and ::1 are always included).
	Hosts      []string
	Passphrase []byte
	Logger     *slog.Logger
	// Offline, if set, makes a production instance: the offline keys go
	// to Offline.Dir (or are existing KMS keys), never into dir, and
	// config.json names only online keys (production.go).
	Offline *OfflineOptions
}

// Init creates a development instance in dir, or a production one with
// opts.Offline. It refuses a directory that already holds one.
func Init(ctx context.Context, dir string, opts InitOptions) (_ *Config, err error) {
	if Exists(dir) {
		return nil, fmt.Errorf("%s already holds a Foster instance", dir)
	}
	off := opts.Offline
	offPass := opts.Passphrase
	rootCAKey := ""
	if off != nil {
		if err := off.check(dir); err != nil {
			return nil, err
		}
		if off.Passphrase != nil {
			offPass = off.Passphrase
		}
		if rootCAKey, err = off.rootCAKeyRef(); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(off.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating offline directory: %w", err)
		}
		defer func() {
			if err != nil {
				// A production init is not resumed: both directories are refused as they are.
				err = fmt.Errorf("%w\n  %s and %s hold an unfinished production instance: empty both before trying again", err, dir, off.Dir)
			}
		}()
	}
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.DB == "" {
		opts.DB = "foster.db"
	}
	if opts.Blobs == "" {
		opts.Blobs = "file:blobs"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	log := opts.Logger
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	p := PathsOf(dir)

	log.Info("creating PKI: offline root CA and online device-issuing intermediate")
	if _, err := os.Stat(p.CARoot); errors.Is(err, os.ErrNotExist) {
		if err := ca.InitPKIContext(ctx, dir, ca.InitOptions{Passphrase: opts.Passphrase, RootKey: rootCAKey, RootPassphrase: offPass}); err != nil {
			return nil, fmt.Errorf("creating PKI: %w", err)
		}
	}
	authority, err := ca.Open(dir, ca.Options{Passphrase: opts.Passphrase})
	if err != nil {
		return nil, err
	}
	dns, ips := serverNames(opts.Listen, opts.Hosts)
	chain, key, err := authority.IssueServer(ctx, dns, ips)
	if err != nil {
		return nil, fmt.Errorf("issuing server certificate: %w", err)
	}
	if err := writePair(p.ServerCert, chain, p.ServerKey, key); err != nil {
		return nil, err
	}
	chain, key, err = authority.IssueClient(ctx, identity.Principal{Role: identity.RoleAdmin, Name: "admin"})
	if err != nil {
		return nil, fmt.Errorf("issuing admin certificate: %w", err)
	}
	if err := writePair(p.AdminCert, chain, p.AdminKey, key); err != nil {
		return nil, err
	}
	// Every credential is recorded, the first one too, so it can be revoked.
	st, err := openStore(ctx, dir, opts.DB)
	if err != nil {
		return nil, err
	}
	err = recordAdminCert(ctx, p, authority, st, log)
	st.Close()
	if err != nil {
		return nil, err
	}

	log.Info("creating TUF repository: root, targets, snapshot, timestamp keys")
	refs := TUFKeyRefs{
		Root: "keys/tuf-root.key", Targets: "keys/tuf-targets.key",
		Snapshot: "keys/tuf-snapshot.key", Timestamp: "keys/tuf-timestamp.key",
		Models: DefaultModelKey,
	}
	online := []string{refs.Root, refs.Targets, refs.Snapshot, refs.Timestamp, refs.Models}
	if off != nil {
		refs.Root, refs.Targets = "", "" // offline: ceremonies only
		online = online[2:]
	}
	for _, ref := range online {
		priv, err := signing.GenerateEd25519File(filepath.Join(dir, ref), opts.Passphrase)
		if err != nil {
			return nil, err
		}
		if ref == refs.Models {
			if err := writePublicKey(ModelsPubPath(dir), priv.Public(), 0o600); err != nil {
				return nil, err
			}
		}
	}
	cfg := &Config{Listen: opts.Listen, ServerURL: "https://" + clientAddr(opts.Listen), DB: opts.DB, Blobs: opts.Blobs, TUFKeys: refs}
	blobs, err := openRepoBlobs(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	keys, err := loadRepoKeys(refs, func(ref string) (signature.Signer, error) {
		if !signing.IsKMS(ref) {
			ref = resolve(dir, ref)
		}
		return signing.Load(ctx, ref, opts.Passphrase)
	})
	if err != nil {
		return nil, err
	}
	if off != nil {
		where := off.Keys()
		if keys.Root, err = offlineTUFKey(ctx, off.TUFRootKey, where.TUFRoot, offPass); err != nil {
			return nil, fmt.Errorf("TUF root key: %w", err)
		}
		if keys.Targets, err = offlineTUFKey(ctx, off.TUFTargetsKey, where.TUFTargets, offPass); err != nil {
			return nil, fmt.Errorf("TUF targets key: %w", err)
		}
	}
	rootJSON, err := tufrepo.Init(ctx, blobs, keys, tufrepo.Options{})
	if err != nil {
		return nil, fmt.Errorf("initialising TUF repository: %w", err)
	}
	if err := atomicfile.WriteFile(p.TUFRoot, rootJSON, 0o600); err != nil {
		return nil, err
	}
	log.Info("creating transparency log key")
	cfg.LogKey = DefaultLogKey
	if _, _, err := ensureLogKey(ctx, dir, cfg.LogKey, opts.Passphrase); err != nil {
		return nil, err
	}
	// config.json last: its presence marks a complete instance.
	if err := cfg.Save(dir); err != nil {
		return nil, err
	}
	return cfg, nil
}

func writePair(certPath string, chain []byte, keyPath string, key []byte) error {
	if err := atomicfile.WriteFile(keyPath, key, 0o600); err != nil {
		return err
	}
	return atomicfile.WriteFile(certPath, chain, 0o600)
}

// serverNames returns the SANs of the server certificate.
func serverNames(listen string, extra []string) ([]string, []net.IP) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	host, _, err := net.SplitHostPort(listen)
	if err == nil && host != "" {
		extra = append(extra, host)
	}
	for _, h := range extra {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() && !ip.IsLoopback() {
				ips = append(ips, ip)
			}
		} else if h != "localhost" && h != "" {
			dns = append(dns, h)
		}
	}
	return dns, ips
}

// clientAddr turns a listen address into one clients can dial.
func clientAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func resolve(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// BlobsURL is the blob store URL u of config.json (or --blobs) for the
// instance in dir: file: paths and plain paths are relative to dir.
func BlobsURL(dir, u string) string {
	if rest, ok := strings.CutPrefix(u, "file:"); ok {
		return "file:" + resolve(dir, rest)
	}
	if !strings.Contains(u, "://") {
		return "file:" + resolve(dir, u)
	}
	return u
}

// StoreDSN is the store DSN dsn of config.json (or --db) for the instance
// in dir: a SQLite path is relative to dir.
func StoreDSN(dir, dsn string) string {
	if strings.Contains(dsn, "://") {
		return dsn
	}
	return resolve(dir, strings.TrimPrefix(dsn, "sqlite:"))
}

func openBlobs(ctx context.Context, dir, u string) (blob.Store, error) {
	return blob.Open(ctx, BlobsURL(dir, u))
}

func openStore(ctx context.Context, dir, dsn string) (*store.DB, error) {
	return store.Open(ctx, StoreDSN(dir, dsn))
}
