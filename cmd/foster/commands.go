package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func cmdInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("init", `init --dir DIR [--listen ADDR] [--db URL] [--blobs URL] [--host NAME ...]
       foster init --production --offline-dir OFFLINE --dir DIR [--root-ca-key URI] [--tuf-root-key KEY] [--tuf-targets-key KEY] ...

Without --production: a development instance; every key is in DIR/keys, the offline ones
(root CA, TUF root and targets) too, and fosterd warns about them at start.

With --production: the offline keys are written only to OFFLINE (removable media; not inside
DIR, holding no key yet), or are existing keys you name; DIR's config.json names only online
keys, so DIR can go to the server. FOSTER_OFFLINE_PASSPHRASE (default FOSTER_PASSPHRASE)
encrypts the keys in OFFLINE. It ends by printing what went where and the ceremonies that
need OFFLINE later (docs/OPERATIONS.md)`, stderr)
	dir := fs.String("dir", "", "instance directory to create (required)")
	listen := fs.String("listen", instance.DefaultListen, "address fosterd will listen on")
	db := fs.String("db", "", "store DSN (default: SQLite foster.db in DIR)")
	blobs := fs.String("blobs", "", "blob store URL (default: file:blobs in DIR)")
	var hosts multi
	fs.Var(&hosts, "host", "extra DNS name or IP for the server certificate (repeatable)")
	production := fs.Bool("production", false, "keep the offline keys (root CA, TUF root, TUF targets) off DIR: write them to --offline-dir")
	var off instance.OfflineOptions
	fs.StringVar(&off.Dir, "offline-dir", "", "with --production: directory for the offline keys, on removable media (created 0700)")
	fs.StringVar(&off.RootCAKey, "root-ca-key", "", "with --production: an existing root CA key instead of a new one: KMS/HSM URI (pkcs11:..., awskms:key-id=..., softkms:path=FILE) or key file")
	fs.StringVar(&off.TUFRootKey, "tuf-root-key", "", "with --production: an existing TUF root key instead of a new one: key file (foster tuf keygen) or KMS URI (awskms://...)")
	fs.StringVar(&off.TUFTargetsKey, "tuf-targets-key", "", "with --production: an existing TUF targets key instead of a new one: key file or KMS URI")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usageError(fs, "--dir is required")
	}
	opts := instance.InitOptions{Listen: *listen, DB: *db, Blobs: *blobs, Hosts: hosts, Passphrase: env.Passphrase.Bytes()}
	switch {
	case *production && off.Dir == "":
		return usageError(fs, "--production needs --offline-dir OFFLINE, a directory on removable media for the offline keys")
	case !*production && (off.Dir != "" || off.RootCAKey != "" || off.TUFRootKey != "" || off.TUFTargetsKey != ""):
		return usageError(fs, "--offline-dir and the offline key flags go with --production")
	case *production:
		off.Passphrase = env.OfflinePassphrase.Bytes()
		opts.Offline = &off
	}
	cfg, err := instance.Init(ctx, *dir, opts)
	if err != nil {
		return err
	}
	p := instance.PathsOf(*dir)
	if !*production {
		fmt.Fprintf(stdout, "initialised %s (server URL %s)\n  CA root:  %s\n  TUF root: %s\n  admin:    %s\n", absPath(*dir), cfg.ServerURL, p.CARoot, p.TUFRoot, p.AdminCert)
		fmt.Fprintf(stdout, "This is a development instance: its offline keys (root CA, TUF root and targets) are in %s.\nFor production: foster init --production --offline-dir OFFLINE (docs/OPERATIONS.md).\n", filepath.Join(absPath(*dir), "keys"))
		return nil
	}
	printProductionInit(stdout, absPath(*dir), cfg, off)
	return nil
}

// printProductionInit says what foster init --production put where, and
// what to do next.
func printProductionInit(w io.Writer, dir string, cfg *instance.Config, off instance.OfflineOptions) {
	p := instance.PathsOf(dir)
	k := off.Keys()
	offDir := absPath(off.Dir)
	enc := "encrypted with FOSTER_OFFLINE_PASSPHRASE"
	switch {
	case env.OfflinePassphrase.Get() == "" && env.Passphrase.Get() != "":
		enc = "encrypted with FOSTER_PASSPHRASE, the server's passphrase: set FOSTER_OFFLINE_PASSPHRASE to give them their own"
	case env.OfflinePassphrase.Get() == "":
		enc = "NOT encrypted: no FOSTER_OFFLINE_PASSPHRASE or FOSTER_PASSPHRASE was set; keep the media encrypted"
	}
	fmt.Fprintf(w, `initialised production instance %s (server URL %s)

Offline keys, never on the server (%s):
  root CA key:      %s
  TUF root key:     %s
  TUF targets key:  %s

Server data directory %s (online keys only; tuf_keys.root and tuf_keys.targets are empty):
  config.json, ca.pem (devices trust it), intermediate.pem, root.json (devices trust it),
  server.crt/server.key, log.pub, tuf-models.pub
  keys/intermediate_ca.key  issues device certificates
  keys/tuf-snapshot.key, keys/tuf-timestamp.key  re-sign metadata
  keys/tuf-models.key       signs releases (models/<model> roles)
  keys/log.key              signs the attestation log
  admin.crt/admin.key       the first admin credential: keep it on the admin's machine, not the server

Next steps:
  1. Unmount %s and store it offline (a safe). It is needed only for ceremonies.
  2. Copy %s to the server without admin.key and start fosterd there, with FOSTER_PASSPHRASE
     set to the server's passphrase if its keys are encrypted:
       fosterd --data-dir /var/lib/foster     # where you copied it
  3. Before the first release of a model, delegate it with the offline targets key
     (docs/TUF.md, "Targets: delegate a model while the targets key is offline"):
       foster --instance %s model add MODEL
       foster --instance %s tuf stage targets --out t.json --delegate-model MODEL --model-key %s
       FOSTER_PASSPHRASE=<offline passphrase> foster tuf sign --key %s t.json   # where the media is
       foster --instance %s tuf publish --targets t.json
     then: foster --instance %s release add --model MODEL --version V FILE
  4. Renew top-level targets (and root) before they expire (foster tuf status): docs/TUF.md.
     New issuing key: foster ca certify-intermediate --dir %s --key URI --root-key %s (docs/CA.md).
`, dir, cfg.ServerURL, enc, offlineRef(k.RootCA, off.RootCAKey), offlineRef(k.TUFRoot, off.TUFRootKey), offlineRef(k.TUFTargets, off.TUFTargetsKey),
		p.Dir, offDir, dir, dir, dir, instance.ModelsPubPath(dir), k.TUFTargets, dir, dir, dir, k.RootCA)
}

// offlineRef describes where an offline key is: a new file (with its
// public key beside it, for TUF keys) or the key that was named.
func offlineRef(where, given string) string {
	if given != "" {
		return given + " (existing key, as given)"
	}
	if strings.HasSuffix(where, instance.OfflineRootCAKey) {
		return absPath(where)
	}
	return absPath(where) + " (+ .pub)"
}

func cmdModelAdd(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model add", "model add NAME [--hardware-id ID ...] [--cert-validity 720h] [--json]", stderr)
	asJSON := fs.Bool("json", false, "print the created model as JSON")
	var hw multi
	fs.Var(&hw, "hardware-id", "hardware id this model's images are built for (repeatable)")
	validity := fs.Duration("cert-validity", 0, "lifetime of this model's device certificates, at least 1h (default: the instance's identity.device_validity, 2160h)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want exactly one model NAME")
	}
	if *validity < 0 || *validity%time.Second != 0 {
		return fmt.Errorf("%w: --cert-validity must be a positive whole number of seconds", errUsage)
	}
	var m store.Model
	body := map[string]any{"name": pos[0], "hardware_ids": []string(hw), "cert_validity_seconds": int64(validity.Seconds())}
	if err := c.postJSON(ctx, "/v1/models", body, &m); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, m)
	}
	fmt.Fprintf(stdout, "model %s created\n", m.Name)
	return nil
}

func cmdModelList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model list", "model list [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var ms []store.Model
	if err := c.do(ctx, "GET", "/v1/models", nil, 0, "", &ms); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, ms)
	}
	var rows [][]string
	for _, m := range ms {
		v := "default"
		if m.CertValiditySeconds > 0 {
			v = m.CertValidity().String()
		}
		rows = append(rows, []string{m.Name, orDash(strings.Join(m.HardwareIDs, ",")), v, fmtTime(m.CreatedAt)})
	}
	table(stdout, "MODEL\tHARDWARE IDS\tCERT VALIDITY\tCREATED", rows)
	return nil
}

func cmdModelShow(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model show", "model show NAME [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want exactly one model NAME")
	}
	var m store.Model
	if err := c.do(ctx, "GET", "/v1/models/"+url.PathEscape(pos[0]), nil, 0, "", &m); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, m)
	}
	printModel(stdout, m)
	return nil
}

func printModel(stdout io.Writer, m store.Model) {
	v := "default"
	if m.CertValiditySeconds > 0 {
		v = m.CertValidity().String()
	}
	table(stdout, "FIELD\tVALUE", [][]string{
		{"model", m.Name}, {"hardware ids", orDash(strings.Join(m.HardwareIDs, ","))},
		{"cert validity", v}, {"created", fmtTime(m.CreatedAt)},
	})
}

func cmdModelUpdate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model update", "model update NAME [--add-hardware-id ID ...] [--remove-hardware-id ID ...] [--json]", stderr)
	var add, remove multi
	fs.Var(&add, "add-hardware-id", "hardware id to add to the model (repeatable)")
	fs.Var(&remove, "remove-hardware-id", "hardware id to remove from the model (repeatable); published releases keep theirs")
	asJSON := fs.Bool("json", false, "print the updated model as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want exactly one model NAME")
	}
	if len(add)+len(remove) == 0 {
		return usageError(fs, "nothing to change: give --add-hardware-id or --remove-hardware-id")
	}
	var m store.Model
	body := map[string]any{"add_hardware_ids": []string(add), "remove_hardware_ids": []string(remove)}
	b, _ := json.Marshal(body)
	if err := c.do(ctx, "PATCH", "/v1/models/"+url.PathEscape(pos[0]), bytes.NewReader(b), int64(len(b)), "application/json", &m); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, m)
	}
	printModel(stdout, m)
	return nil
}

func cmdTokenCreate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("token create", "token create --serial SN --model M [--ttl 24h] [--json]", stderr)
	serial := fs.String("serial", "", "device serial the token is bound to (required)")
	model := fs.String("model", "", "device model the token is bound to (required)")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime")
	asJSON := fs.Bool("json", false, "print JSON (token, serial, model, expires_at)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *serial == "" || *model == "" {
		return usageError(fs, "--serial and --model are required")
	}
	var out struct {
		Token     string    `json:"token"`
		Serial    string    `json:"serial"`
		Model     string    `json:"model"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := c.postJSON(ctx, "/v1/tokens", map[string]any{"serial": *serial, "model": *model, "ttl_seconds": int64(ttl.Seconds())}, &out); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, out)
	}
	fmt.Fprintln(stdout, out.Token)
	fmt.Fprintf(stderr, "one-time enrollment token for %s/%s, expires %s\n", out.Model, out.Serial, fmtTime(out.ExpiresAt))
	return nil
}

// release add, list, show, revoke: release.go

func cmdDeviceList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device list", "device list [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	// The server pages (at most 1000 per response); fetch every page.
	var ds []store.Device
	after := ""
	for {
		var page []store.Device
		if err := c.do(ctx, "GET", "/v1/devices?"+url.Values{"after": {after}}.Encode(), nil, 0, "", &page); err != nil {
			return err
		}
		ds = append(ds, page...)
		if len(page) < store.MaxDevicePage {
			break
		}
		after = page[len(page)-1].ID
	}
	if *asJSON {
		return printJSON(stdout, nonNilDevices(ds))
	}
	var rows [][]string
	for _, d := range ds {
		rows = append(rows, []string{d.Serial, d.Model, d.Status, d.CertSerial, fmtTime(d.CertNotAfter), orDash(d.InstalledVersion), fmtTime(d.LastAttestationAt)})
	}
	table(stdout, "SERIAL\tMODEL\tSTATUS\tCERT SERIAL\tCERT EXPIRES\tVERSION\tLAST ATTESTATION", rows)
	return nil
}

func cmdDeviceShow(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device show", "device show SERIAL|URN [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one SERIAL or device URN")
	}
	var d struct {
		store.Device
		Certificates []store.Certificate `json:"certificates"`
		Refusals     []store.Refusal     `json:"refusals"`
	}
	if err := c.do(ctx, "GET", "/v1/devices/"+url.PathEscape(pos[0]), nil, 0, "", &d); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, d)
	}
	rows := [][]string{
		{"device", d.ID}, {"serial", d.Serial}, {"model", d.Model}, {"status", d.Status},
		{"certificate serial", d.CertSerial}, {"certificate expires", fmtTime(d.CertNotAfter)},
		{"key sha256", orDash(d.KeySHA256)}, {"hardware id", orDash(d.HardwareID)},
		{"enrolled", fmtTime(d.EnrolledAt)}, {"installed version", orDash(d.InstalledVersion)},
		{"installed target", orDash(d.InstalledTarget)}, {"last attestation", fmtTime(d.LastAttestationAt)},
	}
	if !d.RevokedAt.IsZero() {
		rows = append(rows, []string{"revoked", fmtTime(d.RevokedAt) + " (" + d.RevokeReason + ")"})
	}
	if d.ReplacedCertSerial != "" {
		rows = append(rows, []string{"replaced certificate", d.ReplacedCertSerial + " (accepted until the device uses its current one)"})
	}
	if !d.ReprovisionAllowedAt.IsZero() {
		rows = append(rows, []string{"re-provisioning allowed", fmtTime(d.ReprovisionAllowedAt) + " by " + d.ReprovisionBy})
	}
	table(stdout, "FIELD\tVALUE", rows)
	if len(d.Certificates) > 0 {
		fmt.Fprintln(stdout)
		var crows [][]string
		for _, c := range d.Certificates {
			state := "valid"
			if !c.RevokedAt.IsZero() {
				state = "revoked " + fmtTime(c.RevokedAt) + " (" + c.RevokeReason + ")"
			}
			crows = append(crows, []string{c.Serial, c.IssuedVia, fmtTime(c.IssuedAt), fmtTime(c.NotAfter), state})
		}
		table(stdout, "CERTIFICATE\tISSUED VIA\tISSUED\tEXPIRES\tSTATE", crows)
	}
	if len(d.Refusals) > 0 {
		fmt.Fprintln(stdout)
		var rrows [][]string
		for _, r := range d.Refusals {
			rrows = append(rrows, []string{fmtTime(r.At), r.Reason, r.Via, r.KeySHA256})
		}
		table(stdout, "REFUSED AT\tREASON\tVIA\tKEY SHA256", rrows)
	}
	return nil
}

func nonNilDevices(ds []store.Device) []store.Device {
	if ds == nil {
		return []store.Device{}
	}
	return ds
}
