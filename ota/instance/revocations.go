package instance

import (
	"context"
	"errors"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/store"
)

// revocations lets the CA's CRL generator read revocations from, and keep
// CRLs in, the store.
type revocations struct{ st *store.DB }

func (r revocations) RevokedCertificates(ctx context.Context) ([]ca.RevokedCertificate, error) {
	cs, err := r.st.RevokedCertificates(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ca.RevokedCertificate, len(cs))
	for i, c := range cs {
		out[i] = ca.RevokedCertificate{Serial: c.Serial, ReasonCode: c.RevokeReasonCode, RevokedAt: c.RevokedAt, ExpiresAt: c.NotAfter}
	}
	return out, nil
}

func (r revocations) CurrentCRL(ctx context.Context) (*ca.CRLInfo, error) {
	c, err := r.st.GetCRL(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &ca.CRLInfo{Number: c.Number, ThisUpdate: c.ThisTime, ExpiresAt: c.ExpiresAt, DER: c.DER}, nil
}

func (r revocations) StoreCRL(ctx context.Context, c ca.CRLInfo) error {
	return r.st.StoreCRL(ctx, store.CRL{Number: c.Number, ThisTime: c.ThisUpdate, ExpiresAt: c.ExpiresAt, Duration: c.ExpiresAt.Sub(c.ThisUpdate), DER: c.DER})
}
