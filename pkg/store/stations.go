package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// Station statuses.
const (
	StationActive  = "active"
	StationRevoked = "revoked"
)

// MaxSerialPattern bounds a station's serial pattern (RE2, so matching is
// linear in the serial whatever the pattern).
const MaxSerialPattern = 256 // bytes

// Station is a factory station: a certificate holder that may enroll devices
// (offline tokens or CSRs it submits), within a quota, a validity window,
// a list of models and a serial pattern, all enforced here at enrollment.
type Station struct {
	Name      string    `json:"name"`
	Status    string    `json:"status"`
	Quota     int64     `json:"quota"`
	Used      int64     `json:"used"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Models the station may enroll; ["*"] (AllModels) means every model,
	// present and future, spelled out by the admin. Empty, only in stations
	// created before the list was required, also means every model.
	Models []string `json:"models"`
	// SerialPattern is an RE2 regular expression the whole serial must
	// match: it is evaluated anchored, ^(?:pattern)$, also for stations
	// created before anchoring; empty means any valid serial.
	SerialPattern string    `json:"serial_pattern,omitempty"`
	CertSerial    string    `json:"cert_serial"`
	CreatedBy     string    `json:"created_by"`
	CreatedAt     time.Time `json:"created_at"`
	RevokedAt     time.Time `json:"revoked_at,omitzero"`
	RevokedBy     string    `json:"revoked_by,omitempty"`
}

// AllModels, as a station's only model, lets it enroll every model.
const AllModels = "*"

// AnyModel reports whether the station may enroll every model.
func (s Station) AnyModel() bool { return len(s.Models) == 0 || slices.Contains(s.Models, AllModels) }

// Remaining is the unused quota.
func (s Station) Remaining() int64 { return max(0, s.Quota-s.Used) }

// Validate checks a new station's settings.
func (s Station) Validate() error {
	switch {
	case s.Quota <= 0:
		return fmt.Errorf("station quota must be positive, got %d", s.Quota)
	case !s.NotAfter.After(s.NotBefore):
		return fmt.Errorf("station validity window %s to %s is empty", s.NotBefore, s.NotAfter)
	case len(s.SerialPattern) > MaxSerialPattern:
		return fmt.Errorf("serial pattern longer than %d bytes", MaxSerialPattern)
	}
	if _, err := compilePattern(s.SerialPattern); err != nil {
		return err
	}
	return nil
}

// Permits checks the station's status, validity window, remaining quota,
// models and serial pattern. The quota is checked here to refuse early; it is
// charged atomically at issuance (consume).
func (s Station) Permits(serial, model string, now time.Time) error {
	return s.permits(serial, model, now, true)
}

// permits is Permits, without the quota check when quota is false (a
// replayed enrollment charges nothing).
func (s Station) permits(serial, model string, now time.Time, quota bool) error {
	switch {
	case s.Status != StationActive:
		return fmt.Errorf("station %q: %w", s.Name, ErrStationRevoked)
	case now.Before(s.NotBefore) || !now.Before(s.NotAfter):
		return fmt.Errorf("station %q is valid from %s to %s: %w", s.Name, s.NotBefore.Format(time.RFC3339), s.NotAfter.Format(time.RFC3339), ErrStationExpired)
	case quota && s.Used >= s.Quota:
		return fmt.Errorf("station %q (%d of %d): %w", s.Name, s.Used, s.Quota, ErrStationQuota)
	case !s.AnyModel() && !slices.Contains(s.Models, model):
		return fmt.Errorf("%w: model %q is not among the station's models %v", ErrStationPolicy, model, s.Models)
	}
	re, err := compilePattern(s.SerialPattern)
	if err != nil {
		return err
	}
	if re != nil && !re.MatchString(serial) {
		return fmt.Errorf("%w: serial %q does not match the station's pattern %s", ErrStationPolicy, serial, s.SerialPattern)
	}
	return nil
}

var patterns sync.Map // string -> *regexp.Regexp (anchored)

// ValidSerialPattern checks a station's serial pattern as it will be
// evaluated (anchored).
func ValidSerialPattern(p string) error {
	_, err := compilePattern(p)
	return err
}

func compilePattern(p string) (*regexp.Regexp, error) {
	if p == "" {
		return nil, nil
	}
	if re, ok := patterns.Load(p); ok {
		return re.(*regexp.Regexp), nil
	}
	// The pattern alone must compile, so that it cannot close the
	// anchoring group (`a)|(.*`), and it matches the whole serial: SN-[0-9]{4}
	// must not accept ZZ-SN-1234-x.
	if _, err := regexp.Compile(p); err != nil {
		return nil, fmt.Errorf("serial pattern %q: %w", p, err)
	}
	re, err := regexp.Compile(`^(?:` + p + `)$`)
	if err != nil {
		return nil, fmt.Errorf("serial pattern %q: %w", p, err)
	}
	patterns.Store(p, re)
	return re, nil
}

const stationCols = `name, status, quota, used, not_before, not_after, models, serial_pattern, cert_serial, created_by, created_at, revoked_at, revoked_by`

func scanStation(s scanner) (Station, error) {
	var st Station
	var nb, na, ca, ra int64
	var models string
	err := s.Scan(&st.Name, &st.Status, &st.Quota, &st.Used, &nb, &na, &models, &st.SerialPattern, &st.CertSerial, &st.CreatedBy, &ca, &ra, &st.RevokedBy)
	if err != nil {
		return Station{}, err
	}
	st.NotBefore, st.NotAfter, st.CreatedAt, st.RevokedAt = fromTS(nb), fromTS(na), fromTS(ca), fromTS(ra)
	if err := json.Unmarshal([]byte(models), &st.Models); err != nil {
		return Station{}, fmt.Errorf("station %q: corrupt models: %w", st.Name, err)
	}
	return st, nil
}

// CreateStation records a station and its certificate in one transaction.
// A station name is never reused (ErrConflict), even after revocation.
func (d *DB) CreateStation(ctx context.Context, s Station, cert Certificate) (Station, error) {
	if err := s.Validate(); err != nil {
		return Station{}, err
	}
	if s.Models == nil {
		s.Models = []string{}
	}
	s.Status, s.Used, s.CreatedAt, s.CertSerial = StationActive, 0, d.now(), cert.Serial
	models, _ := json.Marshal(s.Models)
	err := d.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, d.q(`INSERT INTO stations (name, status, quota, used, not_before, not_after, models, serial_pattern, cert_serial, created_by, created_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)`),
			s.Name, s.Status, s.Quota, ts(s.NotBefore), ts(s.NotAfter), string(models), s.SerialPattern, s.CertSerial, s.CreatedBy, ts(s.CreatedAt))
		if isUnique(err) {
			return fmt.Errorf("station %q: %w", s.Name, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("creating station: %w", err)
		}
		cert.IssuedAt = s.CreatedAt
		return d.insertCert(ctx, tx, cert, "")
	})
	if err != nil {
		return Station{}, err
	}
	return s, nil
}

// GetStation returns a station or ErrNotFound.
func (d *DB) GetStation(ctx context.Context, name string) (Station, error) {
	st, err := scanStation(d.db.QueryRowContext(ctx, d.q(`SELECT `+stationCols+` FROM stations WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return Station{}, fmt.Errorf("station %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Station{}, fmt.Errorf("reading station: %w", err)
	}
	return st, nil
}

// ListStations returns every station by name.
func (d *DB) ListStations(ctx context.Context) ([]Station, error) {
	return queryAll(ctx, d.db, "listing stations", `SELECT `+stationCols+` FROM stations ORDER BY name`, scanStation)
}

// RevokeStation stops a station and revokes its certificates (reason code
// per RFC 5280), in one transaction. Revoking a revoked station is ErrConflict.
func (d *DB) RevokeStation(ctx context.Context, name string, code int, reason, by string) (Station, error) {
	var st Station
	err := d.tx(ctx, func(tx *sql.Tx) error {
		now := d.now()
		var err error
		st, err = scanStation(tx.QueryRowContext(ctx, d.q(`SELECT `+stationCols+` FROM stations WHERE name = ?`+d.forUpdate()), name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("station %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading station: %w", err)
		}
		if st.Status == StationRevoked {
			return fmt.Errorf("station %q is already revoked: %w", name, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, d.q(`UPDATE stations SET status = ?, revoked_at = ?, revoked_by = ? WHERE name = ?`), StationRevoked, ts(now), by, name); err != nil {
			return fmt.Errorf("revoking station: %w", err)
		}
		st.Status, st.RevokedAt, st.RevokedBy = StationRevoked, now, by
		return revokeCerts(ctx, tx, d, identity.Principal{Role: identity.RoleStation, Name: name}.URI(), code, reason, now)
	})
	if err != nil {
		return Station{}, err
	}
	return st, nil
}
