package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// A credential bundle is one JSON file (mode 0600) holding everything an
// actor needs to talk to fosterd: its certificate chain and key, the Foster
// root to verify the server with, and the server URL. `station create` and
// `admin create` write them; --station and --cred read them.
type bundle struct {
	Kind        string    `json:"kind"` // bundleKind
	Version     int       `json:"version"`
	Principal   string    `json:"principal"`
	Server      string    `json:"server,omitempty"`
	CARoot      string    `json:"ca_root"`
	Certificate string    `json:"certificate"` // PEM chain, leaf first
	Key         string    `json:"key"`         // PKCS#8 PEM
	NotAfter    time.Time `json:"not_after"`
}

const (
	bundleKind    = "foster-credential"
	maxBundleSize = 64 << 10 // bytes
)

// credential is a loaded, checked bundle.
type credential struct {
	bundle
	principal identity.Principal
	chain     []*x509.Certificate
	key       crypto.Signer
	pair      tls.Certificate
}

func loadBundle(path string) (*credential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s holds a private key but is accessible by other users (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBundleSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxBundleSize)
	}
	var c credential
	if err := json.Unmarshal(b, &c.bundle); err != nil {
		return nil, fmt.Errorf("%s is not a Foster credential bundle: %w", path, err)
	}
	if c.Kind != bundleKind || c.Version != 1 {
		return nil, fmt.Errorf("%s is not a Foster credential bundle (kind %q, version %d)", path, c.Kind, c.Version)
	}
	c.pair, err = tls.X509KeyPair([]byte(c.Certificate), []byte(c.Key))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, der := range c.pair.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		c.chain = append(c.chain, cert)
	}
	var ok bool
	if c.key, ok = c.pair.PrivateKey.(crypto.Signer); !ok {
		return nil, fmt.Errorf("%s: key cannot sign", path)
	}
	if c.principal, err = identity.FromCertificate(c.chain[0]); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func writeBundle(path string, b bundle) error {
	b.Kind, b.Version = bundleKind, 1
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o600)
}

type credentialResponse struct {
	Principal   string         `json:"principal"`
	Certificate string         `json:"certificate"`
	Key         string         `json:"key"`
	NotAfter    time.Time      `json:"not_after"`
	Station     *store.Station `json:"station"`
}

// saveCredential writes a credential the server just issued.
func (c *client) saveCredential(path string, r credentialResponse) error {
	return writeBundle(path, bundle{Principal: r.Principal, Server: c.base.String(), CARoot: string(c.caPEM),
		Certificate: r.Certificate, Key: r.Key, NotAfter: r.NotAfter})
}

// --- stations

func cmdStationCreate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("station create", "station create NAME --quota N --models M,...|'*' [--valid-for 720h] [--serial-pattern RE] --out FILE", stderr)
	quota := fs.Int64("quota", 0, "how many devices the station may enroll (required)")
	validFor := fs.Duration("valid-for", 720*time.Hour, "validity window of the station (and of its certificate)")
	var models multi
	fs.Var(&models, "models", "models the station may enroll, comma-separated or repeated, or '*' for every model, present and future (required)")
	pattern := fs.String("serial-pattern", "", "RE2 regular expression the whole serial must match (anchored), e.g. 'SN-[0-9]{4,12}'")
	out := fs.String("out", "", "write the station credential bundle (certificate chain, key, CA root, server URL; mode 0600) to FILE (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *quota <= 0 || *out == "" || len(models) == 0 {
		return usageError(fs, "want one station NAME, a positive --quota, --models (or --models '*' for every model) and --out FILE")
	}
	if _, err := os.Stat(*out); err == nil {
		return fmt.Errorf("%s already exists: refusing to overwrite a credential", *out)
	}
	var ms []string
	for _, m := range models {
		for _, s := range strings.Split(m, ",") {
			if s = strings.TrimSpace(s); s != "" {
				ms = append(ms, s)
			}
		}
	}
	var resp credentialResponse
	if err := c.postJSON(ctx, "/v1/stations", map[string]any{"name": pos[0], "quota": *quota, "valid_for_seconds": int64(validFor.Seconds()),
		"models": ms, "serial_pattern": *pattern}, &resp); err != nil {
		return err
	}
	if err := c.saveCredential(*out, resp); err != nil {
		return err
	}
	st := resp.Station
	fmt.Fprintf(stdout, "station %s created: quota %d, valid until %s, models %s, serial pattern %s\ncredential written to %s (keep it secret: it mints enrollment tokens)\n",
		st.Name, st.Quota, fmtTime(st.NotAfter), stationModels(*st), orDash(st.SerialPattern), *out)
	return nil
}

// stationModels shows the models a station may enroll ("* (every model)"
// for ["*"] and for a station created before the list was required).
func stationModels(s store.Station) string {
	if s.AnyModel() {
		return "* (every model)"
	}
	return strings.Join(s.Models, ",")
}

func cmdStationList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("station list", "station list [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var sts []store.Station
	if err := c.do(ctx, "GET", "/v1/stations", nil, 0, "", &sts); err != nil {
		return err
	}
	if *asJSON {
		type row struct {
			store.Station
			Remaining int64 `json:"remaining"`
		}
		rows := make([]row, len(sts))
		for i, s := range sts {
			rows[i] = row{s, s.Remaining()}
		}
		return printJSON(stdout, rows)
	}
	var rows [][]string
	for _, s := range sts {
		rows = append(rows, []string{s.Name, s.Status, strconv.FormatInt(s.Used, 10), strconv.FormatInt(s.Remaining(), 10),
			strconv.FormatInt(s.Quota, 10), fmtTime(s.NotAfter), stationModels(s), orDash(s.SerialPattern)})
	}
	table(stdout, "STATION\tSTATUS\tUSED\tREMAINING\tQUOTA\tVALID UNTIL\tMODELS\tSERIAL PATTERN", rows)
	return nil
}

func cmdStationRevoke(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("station revoke", "station revoke NAME [--reason cessationOfOperation|keyCompromise|...] [--json]", stderr)
	reason := fs.String("reason", "cessationOfOperation", "RFC 5280 revocation reason")
	asJSON := fs.Bool("json", false, "print the revoked station as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one station NAME")
	}
	var st store.Station
	if err := c.postJSON(ctx, "/v1/stations/"+url.PathEscape(pos[0])+"/revoke", map[string]string{"reason": *reason}, &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "station %s revoked (%d of %d enrollments used); its tokens and certificate are refused from now on\n", st.Name, st.Used, st.Quota)
	return nil
}

// --- offline station tokens and station enrollment

// cmdStationToken mints an enrollment token with the station key, offline.
func cmdStationToken(cred *credential, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("token create", "--station FILE token create --serial SN --model M [--ttl 24h]", stderr)
	serial := fs.String("serial", "", "device serial the token is bound to (required)")
	model := fs.String("model", "", "device model the token is bound to (required)")
	ttl := fs.Duration("ttl", 24*time.Hour, "token lifetime (at most 720h)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *serial == "" || *model == "" {
		return usageError(fs, "--serial and --model are required")
	}
	if cred.principal.Role != identity.RoleStation {
		return fmt.Errorf("%s is a %s credential: only factory stations mint offline tokens", cred.principal, cred.principal.Role)
	}
	dev := identity.Device(*model, *serial)
	if err := dev.Validate(); err != nil {
		return err
	}
	if *ttl <= 0 || *ttl > ca.MaxStationTokenTTL {
		return fmt.Errorf("--ttl must be between 1s and %s", ca.MaxStationTokenTTL)
	}
	now := env.Now()
	exp := now.Add(*ttl)
	if leaf := cred.chain[0]; exp.After(leaf.NotAfter) {
		if !now.Before(leaf.NotAfter) {
			return fmt.Errorf("the station certificate expired at %s", fmtTime(leaf.NotAfter))
		}
		exp = leaf.NotAfter
	}
	tok, err := x5ctoken.Sign(cred.chain, cred.key, x5ctoken.Claims{
		Issuer: cred.principal.URI(), Subject: dev.URI(), Audience: x5ctoken.EnrollAudience, IssuedAt: now, Expiry: exp,
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stderr, "one-time enrollment token for %s/%s from station %s, expires %s\n", *model, *serial, cred.principal.Name, fmtTime(exp))
	return nil
}

func cmdStationEnroll(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("enroll", "--station FILE enroll --csr dev.csr --out dev.crt [--serial SN] [--model M]", stderr)
	csrPath := fs.String("csr", "", "the device's CSR (PEM or DER) (required)")
	out := fs.String("out", "", "write the device certificate chain (PEM) to FILE (required)")
	serial := fs.String("serial", "", "device serial (default: from the CSR's URN or common name)")
	model := fs.String("model", "", "device model (default: from the CSR's URN)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *csrPath == "" || *out == "" {
		return usageError(fs, "--csr and --out are required")
	}
	if c.cred == nil || c.cred.principal.Role != identity.RoleStation {
		return fmt.Errorf("%w: enroll needs --station FILE", errUsage)
	}
	raw, err := os.ReadFile(*csrPath)
	if err != nil {
		return err
	}
	if len(raw) > ca.MaxCSRSize {
		return fmt.Errorf("%s is larger than %d bytes", *csrPath, ca.MaxCSRSize)
	}
	der := raw
	if b, _ := pem.Decode(raw); b != nil {
		der = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return fmt.Errorf("%s: %w", *csrPath, err)
	}
	for _, u := range csr.URIs {
		if p, err := identity.ParseURI(u.String()); err == nil && p.Role == identity.RoleDevice {
			if *serial == "" {
				*serial = p.Serial()
			}
			if *model == "" {
				*model = p.Model
			}
		}
	}
	if *serial == "" {
		*serial = csr.Subject.CommonName
	}
	if *serial == "" || *model == "" {
		return fmt.Errorf("%w: the CSR does not name the device: give --serial and --model", errUsage)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	var resp struct {
		DeviceID    string `json:"device_id"`
		Certificate string `json:"certificate"`
	}
	if err := c.postJSON(ctx, "/v1/station/enroll", map[string]string{"serial": *serial, "model": *model, "csr": string(csrPEM)}, &resp); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(*out, []byte(resp.Certificate), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %s; certificate chain written to %s\n", resp.DeviceID, *out)
	return nil
}

// --- devices

func cmdDeviceRevoke(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device revoke", "device revoke SERIAL|URN [--reason keyCompromise|superseded|cessationOfOperation|...] [--json]", stderr)
	reason := fs.String("reason", "unspecified", "RFC 5280 revocation reason")
	asJSON := fs.Bool("json", false, "print the revoked device as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one SERIAL or device URN")
	}
	if _, _, err := ca.ParseRevocationReason(*reason); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var d store.Device
	if err := c.postJSON(ctx, "/v1/devices/"+url.PathEscape(pos[0])+"/revoke", map[string]string{"reason": *reason}, &d); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, d)
	}
	fmt.Fprintf(stdout, "device %s revoked (%s): refused on every endpoint from now on, and listed in the CRL\n", d.ID, d.RevokeReason)
	return nil
}

func cmdDeviceReprovision(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("device reprovision", "device reprovision SERIAL|URN [--json]", stderr)
	asJSON := fs.Bool("json", false, "print the device as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one SERIAL or device URN")
	}
	var d store.Device
	if err := c.postJSON(ctx, "/v1/devices/"+url.PathEscape(pos[0])+"/reprovision", map[string]string{}, &d); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, d)
	}
	fmt.Fprintf(stdout, "device %s may enroll once with a new key; its current certificates will then be revoked as superseded\n", d.ID)
	return nil
}

var errNoServer = errors.New("no server URL: give --server, or use a credential bundle or --instance that names one")
