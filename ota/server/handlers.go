package server

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

const (
	maxEnrollBody = 64 << 10 // bytes
	maxAdminBody  = 16 << 10 // bytes
	tokenPrefix   = "fst_"
)

// --- enrollment

type enrollRequest struct {
	Token  string `json:"token"`
	Serial string `json:"serial"`
	Model  string `json:"model"`
	CSR    string `json:"csr"`
}

type enrollResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"`
}

// enroll issues a device's first certificate against a one-time token: an
// admin's opaque token (fst_...) or a factory station's offline JWT.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	var req enrollRequest
	if err := decodeJSON(w, r, maxEnrollBody, &req); err != nil {
		return err
	}
	p := identity.Device(req.Model, req.Serial)
	if err := p.Validate(); err != nil {
		return badRequest("device identity: %v", err)
	}
	auth := store.EnrollRequest{Serial: req.Serial, Model: req.Model}
	switch {
	case strings.HasPrefix(req.Token, tokenPrefix) && len(req.Token) <= 256:
		auth.TokenHash = hashToken(req.Token)
	case x5ctoken.LooksLikeJWT(req.Token):
		st, err := s.cfg.Issuer.VerifyStationToken(req.Token)
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
	return s.issueEnrollment(w, r, auth, []byte(req.CSR))
}

// --- distribution

// serveBlob serves prefix+{param} from the blob store with Range support.
func (s *Server) serveBlob(prefix, param string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		key := prefix + r.PathValue(param)
		if err := blob.ValidKey(key); err != nil {
			return badRequest("invalid path: %v", err)
		}
		f, info, err := s.cfg.Blobs.Open(r.Context(), key)
		if errors.Is(err, blob.ErrNotFound) {
			return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "%s not found", r.URL.Path)
		}
		if err != nil {
			return err
		}
		defer f.Close()
		if info.ETag != "" {
			w.Header().Set("ETag", info.ETag)
		}
		if prefix == "tuf/" {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-cache")
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		http.ServeContent(w, r, "", info.ModTime, f)
		return nil
	}
}

// --- attestations: ingest in attestations.go

func readBounded(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "request body larger than %d bytes", limit)
	}
	if err != nil {
		return nil, badRequest("reading body: %v", err)
	}
	return buf.Bytes(), nil
}

// --- admin

func (s *Server) audit(r *http.Request, action, detail string) {
	p, _ := principalFrom(r.Context())
	if err := s.cfg.Store.Audit(r.Context(), p.URI(), action, detail); err != nil {
		s.log.Error("recording audit event", "err", err)
	}
}

type modelRequest struct {
	Name        string   `json:"name"`
	HardwareIDs []string `json:"hardware_ids"`
}

func (s *Server) createModel(w http.ResponseWriter, r *http.Request) error {
	var req modelRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.ValidName(req.Name); err != nil {
		return badRequest("model: %v", err)
	}
	if len(req.HardwareIDs) > 64 {
		return badRequest("at most 64 hardware ids")
	}
	for _, h := range req.HardwareIDs {
		if err := identity.ValidName(h); err != nil {
			return badRequest("hardware id: %v", err)
		}
	}
	m, err := s.cfg.Store.CreateModel(r.Context(), store.Model{Name: req.Name, HardwareIDs: req.HardwareIDs})
	if errors.Is(err, store.ErrConflict) {
		return apierr.New(http.StatusConflict, apierr.CodeConflict, "model %q already exists", req.Name)
	}
	if err != nil {
		return err
	}
	s.audit(r, "model.create", m.Name)
	return writeJSON(w, http.StatusCreated, m)
}

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.cfg.Store.ListModels(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ms))
}

type tokenRequest struct {
	Serial     string `json:"serial"`
	Model      string `json:"model"`
	TTLSeconds int64  `json:"ttl_seconds"`
}

type tokenResponse struct {
	Token     string    `json:"token"`
	Serial    string    `json:"serial"`
	Model     string    `json:"model"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) error {
	var req tokenRequest
	if err := decodeJSON(w, r, maxAdminBody, &req); err != nil {
		return err
	}
	if err := identity.Device(req.Model, req.Serial).Validate(); err != nil {
		return badRequest("%v", err)
	}
	ttl := s.cfg.DefaultTokenTTL
	if req.TTLSeconds != 0 {
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	if ttl <= 0 || ttl > s.cfg.MaxTokenTTL {
		return badRequest("ttl must be between 1s and %s", s.cfg.MaxTokenTTL)
	}
	if _, err := s.cfg.Store.GetModel(r.Context(), req.Model); errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q (create it with: foster model add %s)", req.Model, req.Model)
	} else if err != nil {
		return err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	p, _ := principalFrom(r.Context())
	exp := s.cfg.Now().Add(ttl).UTC()
	if err := s.cfg.Store.CreateToken(r.Context(), store.Token{Hash: hashToken(tok), Serial: req.Serial, Model: req.Model, ExpiresAt: exp, CreatedBy: p.URI()}); err != nil {
		return err
	}
	s.audit(r, "token.create", req.Model+"/"+req.Serial)
	return writeJSON(w, http.StatusCreated, tokenResponse{Token: tok, Serial: req.Serial, Model: req.Model, ExpiresAt: exp})
}

var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$`)

// targetCustom is the custom metadata of a firmware target (docs/CONTRACTS.md).
type targetCustom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
}

func (s *Server) addRelease(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	model, version, name := q.Get("model"), q.Get("version"), q.Get("name")
	if err := identity.ValidName(model); err != nil {
		return badRequest("model: %v", err)
	}
	if len(version) > 64 || !semverRE.MatchString(version) {
		return badRequest("version %q is not a semantic version (e.g. 1.0.1)", version)
	}
	if name == "" {
		name = "firmware.bin"
	}
	if err := identity.ValidName(name); err != nil {
		return badRequest("file name: %v", err)
	}
	if r.ContentLength == 0 {
		return badRequest("firmware file is empty")
	}
	if r.ContentLength > s.cfg.MaxFirmwareSize {
		return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "firmware larger than %d bytes", s.cfg.MaxFirmwareSize)
	}
	m, err := s.cfg.Store.GetModel(r.Context(), model)
	if errors.Is(err, store.ErrNotFound) {
		return apierr.New(http.StatusBadRequest, apierr.CodeUnknownModel, "unknown model %q (create it with: foster model add %s)", model, model)
	} else if err != nil {
		return err
	}

	s.releaseMu.Lock()
	defer s.releaseMu.Unlock()
	counter := int64(1)
	latest, err := s.cfg.Store.LatestRelease(r.Context(), model)
	switch {
	case err == nil:
		counter = latest.Counter + 1
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	if c := q.Get("counter"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n <= 0 {
			return badRequest("counter must be a positive integer")
		}
		if n < counter {
			return apierr.New(http.StatusConflict, "stale_release", "release counter %d is not above the latest (%d) for %s", n, counter-1, model)
		}
		counter = n
	}
	if existing, err := s.cfg.Store.ListReleases(r.Context(), model); err != nil {
		return err
	} else {
		for _, e := range existing {
			if e.Version == version {
				return apierr.New(http.StatusConflict, apierr.CodeConflict, "release %s %s already exists", model, version)
			}
		}
	}
	custom, _ := json.Marshal(targetCustom{Model: model, Version: version, ReleaseCounter: counter, HardwareIDs: nonNil(m.HardwareIDs)})
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxFirmwareSize)
	tpath := path.Join(model, version, name)
	t, err := s.cfg.Repo.AddTarget(r.Context(), tpath, body, r.ContentLength, custom)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "firmware larger than %d bytes", s.cfg.MaxFirmwareSize)
		}
		return badRequest("publishing %s: %v", tpath, err)
	}
	p, _ := principalFrom(r.Context())
	rel, err := s.cfg.Store.AddRelease(r.Context(), store.Release{
		Model: model, Version: version, Counter: counter, TargetPath: t.Path, SHA256: t.SHA256, Length: t.Length, CreatedBy: p.URI(),
	}, nil)
	if err != nil {
		return fmt.Errorf("recording published release %s: %w", tpath, err)
	}
	s.audit(r, "release.add", fmt.Sprintf("%s sha256=%s length=%d counter=%d", t.Path, t.SHA256, t.Length, counter))
	s.log.Info("release published", "target", t.Path, "sha256", t.SHA256, "length", t.Length, "counter", counter)
	return writeJSON(w, http.StatusCreated, rel)
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.cfg.Store.ListReleases(r.Context(), r.URL.Query().Get("model"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(rs))
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) error {
	ds, err := s.cfg.Store.ListDevices(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ds))
}

func (s *Server) listAttestations(w http.ResponseWriter, r *http.Request) error {
	as, err := s.cfg.Store.ListAttestations(r.Context(), r.URL.Query().Get("device"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(as))
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	ev, err := s.cfg.Store.ListAudit(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, nonNil(ev))
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
