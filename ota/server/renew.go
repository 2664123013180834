package server

import (
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
func (g *enrollAPI) renew(w http.ResponseWriter, r *http.Request) error {
	var req renewRequest
	if err := decodeJSON(w, r, maxRenewBody, &req); err != nil {
		return err
	}
	p, cert := principalFrom(r.Context())
	return g.issueRenewal(w, r, p, cert, []byte(req.CSR), store.RenewRequest{})
}

// renewExpired renews a device whose certificate expired (TLS would refuse
// it), within the grace period: the token, signed by the old key and
// carrying the old certificate, proves possession and binds the CSR.
func (g *enrollAPI) renewExpired(w http.ResponseWriter, r *http.Request) error {
	var req renewExpiredRequest
	if err := decodeJSON(w, r, maxRenewBody, &req); err != nil {
		return err
	}
	if !x5ctoken.LooksLikeJWT(req.Token) {
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "renew token is malformed")
	}
	rt, err := g.issuer.VerifyRenewToken(req.Token, g.renewGrace)
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
	return g.issueRenewal(w, r, rt.Device, rt.Cert, []byte(req.CSR), store.RenewRequest{Expired: true, JTI: rt.ID, JTIExpiresAt: rt.Expiry})
}

func (g *enrollAPI) issueRenewal(w http.ResponseWriter, r *http.Request, p identity.Principal, cert *x509.Certificate, csr []byte, rr store.RenewRequest) error {
	ctx := r.Context()
	if len(csr) == 0 {
		return badRequest("csr is required")
	}
	dr, err := g.issuer.CheckDeviceCSR(csr, p.Model, p.Serial())
	if err != nil {
		return csrError(err)
	}
	model, err := g.store.GetModel(ctx, p.Model)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	rr.DeviceID, rr.PresentedSerial, rr.PresentedKeySHA256 = p.URI(), cert.SerialNumber.Text(16), ca.PublicKeySHA256(cert.PublicKey)
	rr.KeySHA256 = dr.KeySHA256
	res, err := g.store.RenewDevice(ctx, rr, func() (store.Issued, error) {
		chain, err := g.issuer.IssueDeviceRequest(ctx, dr, ca.WithValidity(model.CertValidity()))
		if err != nil {
			return store.Issued{}, err
		}
		return issued(chain)
	})
	if errors.Is(err, store.ErrKeyMismatch) {
		g.log.Warn("renewal refused: CSR is not for the device's current key", "device", rr.DeviceID,
			"presented_serial", rr.PresentedSerial, "csr_key_sha256", rr.KeySHA256, "after_expiry", rr.Expired)
	}
	if err != nil {
		return identityError(err)
	}
	if res.Superseded > 0 {
		g.crl.refresh(ctx)
	}
	if res.Replayed {
		g.log.Info("device renewal replayed: the device retried with its replaced certificate and gets the unused one again",
			"device", res.ID, "cert_serial", res.CertSerial, "presented_serial", rr.PresentedSerial)
		return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: res.ID, Certificate: res.CertPEM})
	}
	g.log.Info("device certificate renewed", "device", res.ID, "cert_serial", res.CertSerial, "after_expiry", rr.Expired,
		"superseded", res.Superseded)
	return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: res.ID, Certificate: res.CertPEM})
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
