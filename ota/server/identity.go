package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// Device identity lifecycle endpoints: enrollment through factory stations,
// renewal (mTLS, and after expiry by proof of possession), revocation, the
// CRL, re-provisioning, and stations (admin credentials: admins.go).
// Every refusal is a 4xx JSON error and leaves the store unchanged (except
// that refused clone attempts are recorded).

// Station and credential limits.
const (
	DefaultStationValidity = 30 * 24 * time.Hour
	MaxStationValidity     = 5 * 365 * 24 * time.Hour
	MaxStationQuota        = 1 << 40
)

// --- devices: detail, revoke, re-provision

type deviceDetail struct {
	store.Device
	Certificates []store.Certificate `json:"certificates"`
	Refusals     []store.Refusal     `json:"refusals"`
}

// resolveDevice finds a device by URN or by an unambiguous serial.
func (s *Server) resolveDevice(ctx context.Context, id string) (store.Device, error) {
	if strings.HasPrefix(id, "urn:") {
		d, err := s.cfg.Store.GetDevice(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return store.Device{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "device %s not found", id)
		}
		return d, err
	}
	match, err := s.cfg.Store.DevicesBySerial(ctx, id)
	if err != nil {
		return store.Device{}, err
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return store.Device{}, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "device %s not found", id)
	default:
		return store.Device{}, badRequest("serial %s exists in %d models: use the device URN", id, len(match))
	}
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.resolveDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	certs, err := s.cfg.Store.ListCertificates(r.Context(), d.ID)
	if err != nil {
		return err
	}
	refusals, err := s.cfg.Store.ListRefusals(r.Context(), d.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, deviceDetail{Device: d, Certificates: nonNil(certs), Refusals: nonNil(refusals)})
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

func (s *Server) revokeDevice(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "") // "": the parser's own default
	if err != nil {
		return err
	}
	d, err := s.resolveDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	d, err = s.cfg.Store.RevokeDevice(r.Context(), d.ID, code, reason, p.URI())
	if err != nil {
		return identityError(err)
	}
	s.trail.record(r, "device.revoke", d.ID+" reason="+reason)
	s.crl.refresh(r.Context())
	s.log.Info("device revoked", "device", d.ID, "reason", reason)
	return writeJSON(w, http.StatusOK, d)
}

func (s *Server) reprovisionDevice(w http.ResponseWriter, r *http.Request) error {
	d, err := s.resolveDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	d, err = s.cfg.Store.AllowReprovision(r.Context(), d.ID, p.URI())
	if err != nil {
		return identityError(err)
	}
	s.trail.record(r, "device.reprovision", d.ID)
	return writeJSON(w, http.StatusOK, d)
}

// --- stations

type stationRequest struct {
	Name            string   `json:"name"`
	Quota           int64    `json:"quota"`
	ValidForSeconds int64    `json:"valid_for_seconds"`
	Models          []string `json:"models"`
	SerialPattern   string   `json:"serial_pattern"`
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

func (s *Server) createStation(w http.ResponseWriter, r *http.Request) error {
	var req stationRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	ctx := r.Context()
	sp := identity.Principal{Role: identity.RoleStation, Name: req.Name}
	if err := sp.Validate(); err != nil {
		return badRequest("station %v", err)
	}
	validFor := time.Duration(req.ValidForSeconds) * time.Second
	if req.ValidForSeconds == 0 {
		validFor = DefaultStationValidity
	}
	switch {
	case req.Quota <= 0 || req.Quota > MaxStationQuota:
		return badRequest("quota must be between 1 and %d", int64(MaxStationQuota))
	case validFor <= 0 || validFor > MaxStationValidity:
		return badRequest("valid_for must be between 1s and %s", MaxStationValidity)
	case len(req.SerialPattern) > store.MaxSerialPattern:
		return badRequest("serial_pattern longer than %d bytes", store.MaxSerialPattern)
	case len(req.Models) > 64:
		return badRequest("at most 64 models per station")
	}
	if err := checkStationModels(req.Models); err != nil {
		return err
	}
	if err := store.ValidSerialPattern(req.SerialPattern); err != nil {
		return badRequest("serial_pattern: %v", err)
	}
	for _, m := range req.Models {
		if m == store.AllModels {
			continue
		}
		if _, err := s.cfg.Store.GetModel(ctx, m); errors.Is(err, store.ErrNotFound) {
			return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q", m)
		} else if err != nil {
			return err
		}
	}
	if _, err := s.cfg.Store.GetStation(ctx, req.Name); err == nil {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "station %q already exists (station names are never reused)", req.Name)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	chainPEM, keyPEM, leaf, err := s.issueCredential(ctx, sp, validFor)
	if err != nil {
		return err
	}
	admin, _ := principalFrom(ctx)
	st, err := s.cfg.Store.CreateStation(ctx, store.Station{
		Name: req.Name, Quota: req.Quota, NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(),
		Models: req.Models, SerialPattern: req.SerialPattern, CreatedBy: admin.URI(),
	}, certRecord(sp, leaf, admin))
	if errors.Is(err, store.ErrConflict) {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "%v", err)
	}
	if err != nil {
		return err
	}
	s.trail.record(r, "station.create", fmt.Sprintf("%s quota=%d not_after=%s models=%v serial_pattern=%q cert_serial=%s",
		st.Name, st.Quota, st.NotAfter.Format(time.RFC3339), st.Models, st.SerialPattern, st.CertSerial))
	return writeJSON(w, http.StatusCreated, credentialResponse{Principal: sp.URI(), Certificate: string(chainPEM), Key: string(keyPEM), NotAfter: leaf.NotAfter.UTC(), Station: &st})
}

func (s *Server) issueCredential(ctx context.Context, p identity.Principal, validFor time.Duration) (chainPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	chainPEM, keyPEM, err = s.cfg.Issuer.IssueClient(ctx, p, ca.WithValidity(validFor))
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

func (s *Server) listStations(w http.ResponseWriter, r *http.Request) error {
	sts, err := s.cfg.Store.ListStations(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(sts))
}

func (s *Server) getStation(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Store.GetStation(r.Context(), r.PathValue("name"))
	if err != nil {
		return identityError(err)
	}
	return writeJSON(w, http.StatusOK, st)
}

func (s *Server) revokeStation(w http.ResponseWriter, r *http.Request) error {
	code, reason, err := readRevocation(w, r, "cessationOfOperation")
	if err != nil {
		return err
	}
	p, _ := principalFrom(r.Context())
	st, err := s.cfg.Store.RevokeStation(r.Context(), r.PathValue("name"), code, reason, p.URI())
	if err != nil {
		return identityError(err)
	}
	s.trail.record(r, "station.revoke", st.Name+" reason="+reason)
	s.crl.refresh(r.Context())
	return writeJSON(w, http.StatusOK, st)
}
