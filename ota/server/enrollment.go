package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// Device identity: enrollment (an admin's one-time token, a factory
// station's offline token, or a station over mTLS), renewal (renew.go) and
// the CRL. Every refusal is a 4xx JSON error and leaves the store unchanged
// (except that refused clone attempts are recorded).

// enrollStore is what enrollment and renewal need of the store (*store.DB).
type enrollStore interface {
	GetModel(ctx context.Context, name string) (store.Model, error)
	CheckEnroll(ctx context.Context, r store.EnrollRequest) error
	EnrollDevice(ctx context.Context, r store.EnrollRequest, issue func() (store.Issued, error)) (store.Device, error)
	ReplayEnrollment(ctx context.Context, r store.EnrollRequest, refusal error) (store.Device, bool, error)
	RenewDevice(ctx context.Context, r store.RenewRequest, issue func() (store.Issued, error)) (store.RenewResult, error)
}

// membershipSyncer signs the groups of a newly enrolled device
// (*rollout.Controller): a static group may list its serial, and a
// re-enrolled device keeps its tags.
type membershipSyncer interface {
	SyncEnrolled(ctx context.Context, deviceID string) error
}

// deviceIssuer checks device requests and signs device certificates (ca.CA).
type deviceIssuer interface {
	// CheckDeviceCSR validates a device CSR before anything is authorised or signed.
	CheckDeviceCSR(csr []byte, model, serial string) (*ca.DeviceRequest, error)
	IssueDeviceRequest(ctx context.Context, r *ca.DeviceRequest, opts ...ca.IssueOption) ([]*x509.Certificate, error)
	VerifyStationToken(tok string) (*ca.StationToken, error)
	VerifyRenewToken(tok string, grace time.Duration) (*ca.RenewToken, error)
}

// enrollAPI is the device identity group. Safe for concurrent use.
type enrollAPI struct {
	store       enrollStore
	issuer      deviceIssuer
	memberships membershipSyncer
	crl         *crl
	log         *slog.Logger
	renewGrace  time.Duration
}

func (g *enrollAPI) routes(mux *http.ServeMux, e *edge) {
	mux.Handle("POST /v1/enroll", e.throttled("POST /v1/enroll", g.enroll))
	mux.Handle("POST /v1/renew-expired", e.throttled("POST /v1/renew-expired", g.renewExpired))
	mux.Handle("GET /crl", e.throttled("GET /crl", g.crl.serve))
	mux.Handle("POST /v1/station/enroll", e.handle(stationOnly, g.stationEnroll))
	mux.Handle("POST /v1/renew", e.handle(deviceOnly, g.renew))
}

const (
	maxEnrollBody = 64 << 10 // bytes
	tokenPrefix   = "fst_"
)

type enrollRequest struct {
	Token  string `json:"token"`
	Serial string `json:"serial"`
	Model  string `json:"model"`
	CSR    string `json:"csr"`
	// HardwareID is required for a model that declares hardware ids, and
	// must be one of them (checkHardwareID).
	HardwareID string `json:"hardware_id,omitempty"`
}

type enrollResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
}

// enroll issues a device's first certificate against a one-time token: an
// admin's opaque token (fst_...) or a factory station's offline JWT.
func (g *enrollAPI) enroll(w http.ResponseWriter, r *http.Request) error {
	var req enrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		return err
	}
	p := identity.Device(req.Model, req.Serial)
	if err := p.Validate(); err != nil {
		return badRequest("device identity: %v", err)
	}
	auth := store.EnrollRequest{Serial: req.Serial, Model: req.Model, HardwareID: req.HardwareID}
	switch {
	case strings.HasPrefix(req.Token, tokenPrefix) && len(req.Token) <= 256:
		auth.TokenHash = hashToken(req.Token)
	case x5ctoken.LooksLikeJWT(req.Token):
		st, err := g.issuer.VerifyStationToken(req.Token)
		if err != nil {
			return tokenError(err)
		}
		if st.Device != p {
			return apierr.New(http.StatusForbidden, apierr.CodeTokenInvalid, "%v: token is for %s, request is for %s", store.ErrTokenBinding, st.Device, p)
		}
		auth.Station, auth.JTI, auth.JTIExpiresAt = st.Station, st.ID, st.Expiry
	default:
		return apierr.New(http.StatusUnauthorized, apierr.CodeTokenInvalid, "enrollment token is malformed")
	}
	if req.CSR == "" {
		return badRequest("csr is required")
	}
	return g.issueEnrollment(w, r, auth, []byte(req.CSR))
}

// hashToken is how an enrollment token is stored and looked up (models.go
// creates them).
func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

type stationEnrollRequest struct {
	Serial string `json:"serial"`
	Model  string `json:"model"`
	CSR    string `json:"csr"`
	// HardwareID: as in enrollRequest.
	HardwareID string `json:"hardware_id,omitempty"`
}

// stationEnroll lets a factory station submit a device's CSR itself.
func (g *enrollAPI) stationEnroll(w http.ResponseWriter, r *http.Request) error {
	var req stationEnrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		return err
	}
	if err := identity.Device(req.Model, req.Serial).Validate(); err != nil {
		return badRequest("device identity: %v", err)
	}
	if req.CSR == "" {
		return badRequest("csr is required")
	}
	p, _ := principalFrom(r.Context())
	return g.issueEnrollment(w, r, store.EnrollRequest{Serial: req.Serial, Model: req.Model, Station: p.Name, HardwareID: req.HardwareID}, []byte(req.CSR))
}

// issueEnrollment checks the CSR and (read-only) everything the store will
// check, signs, and then lets the store authorise again (token or station
// policy, quota, single use, clone detection) and record the device and its
// certificate in one transaction. Signing before that transaction keeps
// the CPU-heavy part out of the store's write lock (SQLite has one writer);
// a certificate signed for a request the transaction then refuses (a race
// lost to another request with the same token) is dropped: it is never
// recorded nor returned, so it was never issued.
func (g *enrollAPI) issueEnrollment(w http.ResponseWriter, r *http.Request, auth store.EnrollRequest, csr []byte) error {
	ctx := r.Context()
	model, err := g.store.GetModel(ctx, auth.Model)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q", auth.Model)
	} else if err != nil {
		return err
	}
	if err := checkHardwareID(model, auth.HardwareID); err != nil {
		return err
	}
	dr, err := g.issuer.CheckDeviceCSR(csr, auth.Model, auth.Serial)
	if err != nil {
		return csrError(err)
	}
	auth.KeySHA256 = dr.KeySHA256
	if err := g.store.CheckEnroll(ctx, auth); err != nil {
		return g.replayOrRefuse(w, r, auth, err)
	}
	chain, err := g.issuer.IssueDeviceRequest(ctx, dr, ca.WithValidity(model.CertValidity()))
	if err != nil {
		return csrError(err)
	}
	is, err := issued(chain)
	if err != nil {
		return err
	}
	dev, err := g.store.EnrollDevice(ctx, auth, func() (store.Issued, error) { return is, nil })
	if err != nil {
		// A retry that raced its own first attempt (the client timed out
		// while that one was committing) lands here: the certificate just
		// signed is dropped, and the committed one is returned.
		return g.replayOrRefuse(w, r, auth, err)
	}
	g.log.Info("device enrolled", "device", dev.ID, "cert_serial", dev.CertSerial, "via", viaOf(auth))
	// Before the answer, so the device's first check sees its groups. A
	// failure does not undo the enrollment: the device is enrolled, and a
	// membership resync signs it later.
	if err := g.memberships.SyncEnrolled(ctx, dev.ID); err != nil {
		g.log.Error("signing the groups of an enrolled device", "device", dev.ID, "err", err)
	}
	return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: dev.ID, Certificate: dev.CertPEM})
}

// replayOrRefuse answers an enrollment the store refused with refusal: when
// it retries, with the same token and key, an enrollment that committed but
// whose response was lost, with what that enrollment answered (201 and the
// device's certificate chain as stored; store.ReplayEnrollment says when);
// otherwise with the refusal, unchanged. A replay issues, spends and records
// nothing; it is logged, not counted as a refusal. Only the holder of the
// device key (the CSR's signature was verified) with the original token gets
// the certificate back, and it is the certificate that key already owns.
func (g *enrollAPI) replayOrRefuse(w http.ResponseWriter, r *http.Request, auth store.EnrollRequest, refusal error) error {
	dev, ok, err := g.store.ReplayEnrollment(r.Context(), auth, refusal)
	if err != nil {
		g.log.Error("checking whether a refused enrollment is a retry", "device", auth.Serial, "model", auth.Model, "err", err)
	}
	if !ok {
		return identityError(refusal)
	}
	g.log.Info("device enrollment replayed: returning the certificate this token already issued to this key",
		"device", dev.ID, "cert_serial", dev.CertSerial, "via", viaOf(auth))
	return writeJSON(w, http.StatusCreated, enrollResponse{DeviceID: dev.ID, Certificate: dev.CertPEM})
}

func viaOf(a store.EnrollRequest) string {
	if a.Station != "" {
		return "station:" + a.Station
	}
	return "token"
}

func issued(chain []*x509.Certificate) (store.Issued, error) {
	pemChain, err := cryptoutils.MarshalCertificatesToPEM(chain)
	if err != nil {
		return store.Issued{}, err
	}
	leaf := chain[0]
	return store.Issued{
		Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(),
		KeySHA256: ca.PublicKeySHA256(leaf.PublicKey), ChainPEM: string(pemChain),
	}, nil
}
