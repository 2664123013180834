package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// Admin and auditor credentials: create, list, revoke, renew.

func cmdAdminCreate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin create", "admin create NAME --role admin|auditor --out NAME.cred [--valid-for 8760h]", stderr)
	role := fs.String("role", "", "admin (full control) or auditor (read-only) (required)")
	out := fs.String("out", "", "write the credential bundle (mode 0600) to FILE (required)")
	validFor := fs.Duration("valid-for", 0, "certificate lifetime (default 1 year)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *out == "" || (*role != "admin" && *role != "auditor") {
		return usageError(fs, "want one NAME, --role admin|auditor and --out FILE")
	}
	if _, err := os.Stat(*out); err == nil {
		return fmt.Errorf("%s already exists: refusing to overwrite a credential", *out)
	}
	var resp credentialResponse
	if err := c.postJSON(ctx, "/v1/admins", map[string]any{"name": pos[0], "role": *role, "valid_for_seconds": int64(validFor.Seconds())}, &resp); err != nil {
		return err
	}
	if err := c.saveCredential(*out, resp); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s created, valid until %s; credential written to %s (use it with: foster --cred %s ...)\n", resp.Principal, fmtTime(resp.NotAfter), *out, *out)
	return nil
}

func cmdAdminList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin list", "admin list [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError(fs, "admin list takes no arguments")
	}
	var creds []store.AdminCredential
	if err := c.do(ctx, "GET", "/v1/admins", nil, 0, "", &creds); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, creds)
	}
	var rows [][]string
	for _, a := range creds {
		rows = append(rows, []string{a.Name, a.Role, a.Serial, fmtTime(a.NotAfter), a.Status, a.IssuedVia, orDash(a.IssuedBy)})
	}
	table(stdout, "NAME\tROLE\tCERT SERIAL\tVALID UNTIL\tSTATUS\tISSUED VIA\tISSUED BY", rows)
	return nil
}

func cmdAdminRevoke(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin revoke", "admin revoke NAME [--reason keyCompromise|affiliationChanged|cessationOfOperation|...] [--json]", stderr)
	reason := fs.String("reason", "unspecified", "RFC 5280 revocation reason")
	asJSON := fs.Bool("json", false, "print the server's answer as JSON (name, revoked certificates)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one admin or auditor NAME")
	}
	if _, _, err := ca.ParseRevocationReason(*reason); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	var resp struct {
		Name    string              `json:"name"`
		Revoked []store.Certificate `json:"revoked"`
	}
	if err := c.postJSON(ctx, "/v1/admins/"+url.PathEscape(pos[0])+"/revoke", map[string]string{"reason": *reason}, &resp); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, resp)
	}
	for _, cert := range resp.Revoked {
		fmt.Fprintf(stdout, "%s certificate %s revoked (%s)\n", cert.Subject, cert.Serial, cert.RevokeReason)
	}
	fmt.Fprintf(stdout, "%s: refused on every endpoint from now on, and listed in the CRL\n", resp.Name)
	return nil
}

// cmdAdminRenew replaces the caller's own credential with a fresh key and
// certificate, where it came from: the --cred bundle, or the --cert/--key
// files (admin.crt/admin.key with --instance), as a crash-safe pair. Then
// it makes one request with the new credential, which supersedes the old
// one at the server; until then the old one stays valid, so a lost
// response or a crash costs nothing but running renew again.
func cmdAdminRenew(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("admin renew", "admin renew", stderr)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError(fs, "admin renew takes no arguments: it renews the credential it connects with")
	}
	if c.credPath == "" && c.certPath == "" {
		return fmt.Errorf("%w: admin renew needs the credential's files: give --cred, --instance or --cert/--key", errUsage)
	}
	var resp struct {
		credentialResponse
		Supersedes string `json:"supersedes"`
	}
	if err := c.postJSON(ctx, "/v1/admins/renew", map[string]string{}, &resp); err != nil {
		return err
	}
	pair, err := tls.X509KeyPair([]byte(resp.Certificate), []byte(resp.Key))
	if err != nil {
		return fmt.Errorf("the server returned an unusable credential: %w", err)
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM([]byte(resp.Certificate))
	if err != nil || len(certs) == 0 {
		return fmt.Errorf("the server returned an unusable certificate: %v", err)
	}
	where := c.credPath
	if c.credPath != "" {
		b := c.cred.bundle
		b.Principal, b.Certificate, b.Key, b.NotAfter = resp.Principal, resp.Certificate, resp.Key, resp.NotAfter
		err = writeBundle(c.credPath, b)
	} else {
		where = c.certPath + " and " + c.keyPath
		err = atomicfile.WritePair(c.certPath, []byte(resp.Certificate), c.keyPath, []byte(resp.Key))
	}
	if err != nil {
		return fmt.Errorf("writing the renewed credential (the old one stays valid; run renew again): %w", err)
	}
	fmt.Fprintf(stdout, "%s renewed: certificate %s valid until %s written to %s\n", resp.Principal, certs[0].SerialNumber.Text(16), fmtTime(resp.NotAfter), where)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	var list []store.AdminCredential
	if err := newClient(c.base, pair, pool, c.caPEM).do(ctx, "GET", "/v1/admins", nil, 0, "", &list); err != nil {
		fmt.Fprintf(stderr, "foster: the new credential's first request failed (%v): certificate %s stays valid until the new one is used\n", err, resp.Supersedes)
		return nil
	}
	fmt.Fprintf(stdout, "certificate %s is superseded: refused from now on, and listed in the CRL\n", resp.Supersedes)
	return nil
}
