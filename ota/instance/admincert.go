package instance

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

const maxAdminCertFile = 64 << 10 // bytes

// recordAdminCert records DIR/admin.crt, the first admin's credential, in
// the store's certificates unless it is there already: fosterd authenticates
// only admin and auditor certificates it recorded (so any of them can be
// listed and revoked), and instances created before that never recorded
// their first admin. A missing admin.crt (moved off the server) is fine; a
// file that is not a credential this CA issued is an error.
func recordAdminCert(ctx context.Context, p Paths, authority *ca.CA, st *store.DB, log *slog.Logger) error {
	if err := atomicfile.RecoverPair(p.AdminCert, p.AdminKey); err != nil {
		return fmt.Errorf("recovering %s: %w", p.AdminCert, err)
	}
	f, err := os.Open(p.AdminCert)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAdminCertFile+1))
	if err != nil {
		return err
	}
	if len(b) > maxAdminCertFile {
		return fmt.Errorf("%s is larger than %d bytes", p.AdminCert, maxAdminCertFile)
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(b)
	if err != nil || len(certs) == 0 {
		return fmt.Errorf("%s holds no certificate: %v", p.AdminCert, err)
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	inter.AddCert(authority.Intermediate())
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots: authority.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2),
	})
	if err != nil {
		return fmt.Errorf("%s was not issued by this instance's CA: %w", p.AdminCert, err)
	}
	pr, err := identity.FromCertificate(leaf)
	if err != nil {
		return fmt.Errorf("%s: %w", p.AdminCert, err)
	}
	if pr.Role != identity.RoleAdmin && pr.Role != identity.RoleAuditor {
		return fmt.Errorf("%s names %s, not an admin or auditor", p.AdminCert, pr.URI())
	}
	recorded, err := st.RecordExistingCredential(ctx, store.Certificate{
		Serial: leaf.SerialNumber.Text(16), Subject: pr.URI(), KeySHA256: ca.PublicKeySHA256(leaf.PublicKey),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), IssuedVia: store.IssuedViaInit,
	})
	if err != nil {
		return err
	}
	if recorded {
		log.Info("recorded the instance's admin credential", "principal", pr.URI(), "cert_serial", leaf.SerialNumber.Text(16), "file", p.AdminCert)
	}
	return nil
}
