package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// What the station and admin groups share: issuing a client credential
// (stations.go, admins.go), and reading a revoke request (also devices.go).

// Station and credential limits.
const (
	DefaultStationValidity = 30 * 24 * time.Hour
	MaxStationValidity     = 5 * 365 * 24 * time.Hour
	MaxStationQuota        = 1 << 40
)

// clientIssuer issues admin, auditor and station credentials (ca.CA).
type clientIssuer interface {
	IssueClient(ctx context.Context, p identity.Principal, opts ...ca.IssueOption) (chainPEM, keyPEM []byte, err error)
}

// credentialResponse carries a newly issued credential: the only time its
// private key exists outside the holder.
type credentialResponse struct {
	Principal   string         `json:"principal"`
	Certificate string         `json:"certificate"` // PEM chain, leaf first
	Key         string         `json:"key"`         // PKCS#8 PEM
	NotAfter    time.Time      `json:"not_after"`
	Station     *store.Station `json:"station,omitempty"`
}

// issueCredential issues p a key and certificate valid for validFor.
func issueCredential(ctx context.Context, issuer clientIssuer, p identity.Principal, validFor time.Duration) (chainPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	chainPEM, keyPEM, err = issuer.IssueClient(ctx, p, ca.WithValidity(validFor))
	if err != nil {
		return nil, nil, nil, err
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM(chainPEM)
	if err != nil || len(certs) == 0 {
		return nil, nil, nil, fmt.Errorf("parsing issued credential: %v", err)
	}
	return chainPEM, keyPEM, certs[0], nil
}

func certRecord(p identity.Principal, leaf *x509.Certificate, by identity.Principal) store.Certificate {
	return store.Certificate{Serial: leaf.SerialNumber.Text(16), Subject: p.URI(), KeySHA256: ca.PublicKeySHA256(leaf.PublicKey),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), IssuedVia: "admin", IssuedBy: by.URI()}
}

type revokeRequest struct {
	Reason string `json:"reason"`
}

// readRevocation reads a revoke request's reason (defaultReason when none
// is given) as an RFC 5280 reason code and name.
func readRevocation(w http.ResponseWriter, r *http.Request, defaultReason string) (int, string, error) {
	var req revokeRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return 0, "", err
	}
	if req.Reason == "" {
		req.Reason = defaultReason
	}
	code, reason, err := ca.ParseRevocationReason(req.Reason)
	if err != nil {
		return 0, "", badRequest("%v", err)
	}
	return code, reason, nil
}
