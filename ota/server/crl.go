package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
)

// crlIssuer generates and returns the CRL (ca.CA). Both return ca.ErrNoCRL
// when CRLs are disabled.
type crlIssuer interface {
	RefreshCRL(ctx context.Context) error
	CRL(ctx context.Context) ([]byte, error)
}

// crl serves the CRL, and regenerates it after a revocation for every group
// that revokes (devices, stations, admins, superseded certificates). Safe
// for concurrent use.
type crl struct {
	issuer crlIssuer
	log    *slog.Logger
}

// refresh regenerates the CRL after a revocation. A failure is logged: the
// revocation is in force (mTLS checks the store), and the periodic refresh
// will publish it.
func (c *crl) refresh(ctx context.Context) {
	if err := c.issuer.RefreshCRL(ctx); err != nil && !errors.Is(err, ca.ErrNoCRL) {
		c.log.Error("regenerating CRL after a revocation", "err", err)
	}
}

// serve is GET /crl (DER).
func (c *crl) serve(w http.ResponseWriter, r *http.Request) error {
	der, err := c.issuer.CRL(r.Context())
	if errors.Is(err, ca.ErrNoCRL) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "this instance does not publish a CRL")
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Cache-Control", "max-age=60")
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(der)
	return err
}
