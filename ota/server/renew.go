package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

// Renewal: a device renews with its current certificate and its current
// key, over mTLS or, after expiry, by proof of possession (renew-expired).
// A CSR for another key is refused (409 key_mismatch) and recorded: moving
// a device to a new key is an admin's `device reprovision` and a new
// enrollment. The certificate a renewal replaces keeps authenticating only
// until the device first uses the new one (so a lost reply can be retried,
// and gets the same certificate back); then every older certificate of the
// device is revoked as superseded and the CRL refreshed (store/renewal.go).

const maxRenewBody = 32 << 10 // bytes: a CSR and a token

type renewRequest struct {
	CSR string `json:"csr"`
}

type renewExpiredRequest struct {
	Token string `json:"token"`
	CSR   string `json:"csr"`
}

// renew issues a fresh certificate for the device's current key to a
// device authenticated by its current certificate (or by the one its last
// renewal replaced, to retry a renewal whose reply was lost).
func (s *Server) renew(w http.ResponseWriter, r *http.Request) error {
	var req renewRequest
	if err := decodeJSON(w, r, maxRenewBody, &req); err != nil {
		return err
	}
	p, cert := principalFrom(r.Context())
	return s.issueRenewal(w, r, p, cert, []byte(req.CSR), store.RenewRequest{})
}

// renewExpired renews a device whose certificate expired (TLS would refuse
// it), within the grace period: the token, signed by the old key and
// carrying the old certificate, proves possession and binds the CSR.
func (s *Server) renewExpired(w http.ResponseWriter, r *http.Request) error {
	var req renewExpiredRequest
	if err := decodeJSON(w, r, maxRenewBody, &req); err != nil {
		return err
	}
	if !x5ctoken.LooksLikeJWT(req.Token) {
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "renew token is malformed")
	}
	rt, err := s.cfg.Issuer.VerifyRenewToken(req.Token, s.cfg.RenewGrace)
	if err != nil {
		return tokenError(err)
	}
	der, err := csrDER([]byte(req.CSR))
	if err != nil {
		return err
	}
	if x5ctoken.CSRDigest(der) != rt.CSRSHA256 {
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "renew token was minted for another CSR")
	}
	return s.issueRenewal(w, r, rt.Device, rt.Cert, []byte(req.CSR), store.RenewRequest{Expired: true, JTI: rt.ID, JTIExpiresAt: rt.Expiry})
}

func (s *Server) issueRenewal(w http.ResponseWriter, r *http.Request, p identity.Principal, cert *x509.Certificate, csr []byte, rr store.RenewRequest) error {
	ctx := r.Context()
	if len(csr) == 0 {
		return badRequest("csr is required")
	}
	dr, err := s.cfg.Issuer.CheckDeviceCSR(csr, p.Model, p.Serial())
	if err != nil {
		return s.csrError(err)
	}
	model, err := s.cfg.Store.GetModel(ctx, p.Model)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	rr.DeviceID, rr.PresentedSerial, rr.PresentedKeySHA256 = p.URI(), cert.SerialNumber.Text(16), ca.PublicKeySHA256(cert.PublicKey)
	rr.KeySHA256 = dr.KeySHA256
	res, err := s.cfg.Store.RenewDevice(ctx, rr, func() (store.Issued, error) {
		chain, err := s.cfg.Issuer.IssueDeviceRequest(ctx, dr, ca.WithValidity(model.CertValidity()))
		if err != nil {
			return store.Issued{}, err
		}
		return issued(chain)
	})
	if errors.Is(err, store.ErrKeyMismatch) {
		s.log.Warn("renewal refused: CSR is not for the device's current key", "device", rr.DeviceID,
			"presented_serial", rr.PresentedSerial, "csr_key_sha256", rr.KeySHA256, "after_expiry", rr.Expired)
	}
	if err != nil {
		return s.identityError(err)
	}
	if res.Superseded > 0 {
		s.refreshCRL(ctx)
	}
	if res.Replayed {
		s.log.Info("device renewal replayed: the device retried with its replaced certificate and gets the unused one again",
			"device", res.ID, "cert_serial", res.CertSerial, "presented_serial", rr.PresentedSerial)
		return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: res.ID, Certificate: res.CertPEM})
	}
	s.log.Info("device certificate renewed", "device", res.ID, "cert_serial", res.CertSerial, "after_expiry", rr.Expired,
		"superseded", res.Superseded)
	return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: res.ID, Certificate: res.CertPEM})
}

// checkDeviceCert is the device branch of authenticate, on the hot path of
// every poll: one query, plus one write at the first use of a renewed
// certificate (which supersedes the replaced one and refreshes the CRL).
func (s *Server) checkDeviceCert(ctx context.Context, p identity.Principal, serial string, revoked func() error) error {
	acc, err := s.cfg.Store.CheckDeviceAccess(ctx, p.URI(), serial)
	switch {
	case err != nil:
		return err
	case acc.CertSuperseded:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s of %s is revoked as superseded: the device renewed and has used its newer certificate", serial, p.URI())
	case acc.CertRevoked:
		return revoked()
	case !acc.Enrolled:
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "device %s is not enrolled", p.URI())
	case acc.Status != store.DeviceActive:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "device %s is %s", p.URI(), acc.Status)
	case !acc.CertCurrent && !acc.CertReplaced:
		return apierr.New(http.StatusForbidden, apierr.CodeRevoked, "client certificate %s of %s is superseded: the device holds a newer certificate", serial, p.URI())
	case acc.CertCurrent && acc.Pending:
		n, err := s.cfg.Store.SupersedeReplaced(ctx, p.URI(), serial)
		if err != nil {
			return err
		}
		if n > 0 {
			s.log.Info("device used its renewed certificate: older certificates superseded", "device", p.URI(), "cert_serial", serial, "superseded", n)
			s.refreshCRL(ctx)
		}
	}
	return nil
}

// csrDER returns the DER of one PEM CSR (or of raw DER).
func csrDER(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return nil, badRequest("csr is required")
	}
	if len(b) > ca.MaxCSRSize {
		return nil, badRequest("csr larger than %d bytes", ca.MaxCSRSize)
	}
	if block, _ := pem.Decode(b); block != nil {
		return block.Bytes, nil
	}
	return b, nil
}
