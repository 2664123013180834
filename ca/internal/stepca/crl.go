package stepca

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
)

// SignCRL signs a CRL with the intermediate: the same crypto.Signer step-ca
// signs certificates with (so a KMS-backed intermediate signs CRLs too).
//
// Why not step-ca's Authority.GenerateCertificateRevocationList: it always
// adds a critical Issuing Distribution Point naming the CRL's URL, and
// OpenSSL then treats every certificate without a matching CRL Distribution
// Point as outside the CRL's scope ("different CRL scope"), so relying parties
// using OpenSSL with CRL checking (nginx ssl_crl, mosquitto crlfile, openssl
// verify -crl_check) would refuse every device. Foster's certificates carry no
// CRL Distribution Point: fosterd serves the CRL over HTTPS only, and an https
// distribution point fails RFC 5280's w_distribution_point_missing_ldap_or_uri
// lint. A CRL without IDP covers every certificate of its issuer.
func (a *Authority) SignCRL(tmpl *x509.RevocationList) ([]byte, error) {
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.issuer, a.signer)
	if err != nil {
		return nil, fmt.Errorf("signing CRL: %w", err)
	}
	return der, nil
}
