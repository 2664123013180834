package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// Device identity lifecycle: every issued certificate, enrollment through
// admin tokens or factory stations, clone detection and re-provisioning,
// renewal (also after expiry), revocation, the CRL, and single-use token ids.
// Every issuance is recorded in the same transaction that authorises it, so a
// certificate that is not in the store was never handed out.

// Identity errors callers branch on with errors.Is.
var (
	// ErrClone: the serial is enrolled with another key and no admin allowed
	// re-provisioning. It wraps ErrConflict.
	ErrClone = fmt.Errorf("clone: this serial is already enrolled with another key (an admin must run `device reprovision` first): %w", ErrConflict)
	// ErrDeviceRevoked: the device is revoked; it can neither enroll again
	// (without re-provisioning) nor renew.
	ErrDeviceRevoked = errors.New("device is revoked")
	// ErrReprovisioning: the device is marked for re-provisioning, so its old
	// key can no longer renew after expiry.
	ErrReprovisioning = errors.New("device is marked for re-provisioning: its old key cannot renew")
	// ErrSuperseded: the presented certificate is revoked, superseded, or not
	// this device's.
	ErrSuperseded = errors.New("certificate is revoked or superseded")
	// ErrStationRevoked, ErrStationExpired, ErrStationQuota, ErrStationPolicy:
	// a factory station may not enroll this device.
	ErrStationRevoked = errors.New("factory station is revoked")
	ErrStationExpired = errors.New("factory station is outside its validity window")
	ErrStationQuota   = errors.New("factory station has used its whole quota")
	ErrStationPolicy  = errors.New("factory station may not enroll this device")
)

// Certificate is one issued certificate (any role). Serial is lower-case hex,
// like Device.CertSerial.
type Certificate struct {
	Serial           string    `json:"serial"`
	Subject          string    `json:"subject"` // principal URN
	KeySHA256        string    `json:"key_sha256"`
	NotBefore        time.Time `json:"not_before"`
	NotAfter         time.Time `json:"not_after"`
	IssuedAt         time.Time `json:"issued_at"`
	IssuedVia        string    `json:"issued_via"` // token, station:<name>, renew, renew-expired, admin, reprovision
	IssuedBy         string    `json:"issued_by,omitempty"`
	RevokedAt        time.Time `json:"revoked_at,omitzero"`
	RevokeReasonCode int       `json:"revoke_reason_code,omitempty"` // RFC 5280 CRLReason
	RevokeReason     string    `json:"revoke_reason,omitempty"`
}

// Issued is what an issue callback returns: the certificate it signed.
type Issued struct {
	Serial    string // hex
	NotBefore time.Time
	NotAfter  time.Time
	KeySHA256 string
	ChainPEM  string
}

// Refusal is a refused enrollment or renewal of a device, kept for audit
// (clone attempts, enrollments of revoked devices).
type Refusal struct {
	ID        int64     `json:"id"`
	DeviceID  string    `json:"device_id"`
	Reason    string    `json:"reason"`
	KeySHA256 string    `json:"key_sha256"`
	Via       string    `json:"via"`
	At        time.Time `json:"at"`
}

// CRL is the current certificate revocation list.
type CRL struct {
	Number    int64
	ThisTime  time.Time
	ExpiresAt time.Time
	Duration  time.Duration
	DER       []byte
}

const identitySchema = `
CREATE TABLE IF NOT EXISTS certificates (
	serial TEXT PRIMARY KEY,
	subject TEXT NOT NULL,
	key_sha256 TEXT NOT NULL,
	not_before BIGINT NOT NULL,
	not_after BIGINT NOT NULL,
	issued_at BIGINT NOT NULL,
	issued_via TEXT NOT NULL,
	issued_by TEXT NOT NULL DEFAULT '',
	revoked_at BIGINT NOT NULL DEFAULT 0,
	revoke_reason_code INTEGER NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS certificates_subject ON certificates (subject);
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates (revoked_at);
CREATE TABLE IF NOT EXISTS used_token_ids (
	issuer TEXT NOT NULL,
	jti TEXT NOT NULL,
	expires_at BIGINT NOT NULL,
	used_at BIGINT NOT NULL,
	PRIMARY KEY (issuer, jti)
);
CREATE TABLE IF NOT EXISTS device_refusals (
	id @ID@,
	device_id TEXT NOT NULL,
	reason TEXT NOT NULL,
	key_sha256 TEXT NOT NULL,
	via TEXT NOT NULL,
	at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_refusals_device ON device_refusals (device_id);
CREATE TABLE IF NOT EXISTS crl (
	id INTEGER PRIMARY KEY,
	number BIGINT NOT NULL,
	this_update BIGINT NOT NULL,
	expires_at BIGINT NOT NULL,
	duration BIGINT NOT NULL,
	der TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stations (
	name TEXT PRIMARY KEY,
	status TEXT NOT NULL,
	quota BIGINT NOT NULL,
	used BIGINT NOT NULL DEFAULT 0,
	not_before BIGINT NOT NULL,
	not_after BIGINT NOT NULL,
	models TEXT NOT NULL,
	serial_pattern TEXT NOT NULL,
	cert_serial TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	revoked_at BIGINT NOT NULL DEFAULT 0,
	revoked_by TEXT NOT NULL DEFAULT ''
);
`

// deviceIdentityColumns extend the walking skeleton's devices table.
var deviceIdentityColumns = [][2]string{
	{"key_sha256", "TEXT NOT NULL DEFAULT ''"},
	{"reprovision_at", "BIGINT NOT NULL DEFAULT 0"},
	{"reprovision_by", "TEXT NOT NULL DEFAULT ''"},
	{"revoked_at", "BIGINT NOT NULL DEFAULT 0"},
	{"revoke_reason", "TEXT NOT NULL DEFAULT ''"},
	// replaced_cert_serial: the certificate the last renewal replaced, still
	// accepted until the device first uses its current one (renewal.go).
	{"replaced_cert_serial", "TEXT NOT NULL DEFAULT ''"},
	// hardware_id: the hardware id the device enrolled with (one of its
	// model's; '' when the model declares none).
	{"hardware_id", "TEXT NOT NULL DEFAULT ''"},
}

// certIdentityColumns extend the certificates table. enroll_token names the
// one-time token an enrollment spent (enrollRef), so a device that lost the
// response can get that very certificate back (ReplayEnrollment); empty for
// every other certificate, and for those enrolled before it was recorded.
var certIdentityColumns = [][2]string{
	{"enroll_token", "TEXT NOT NULL DEFAULT ''"},
}

func (d *DB) migrateIdentity(ctx context.Context) error {
	if err := d.execSchema(ctx, "identity schema", identitySchema); err != nil {
		return err
	}
	for _, c := range deviceIdentityColumns {
		if err := d.addColumn(ctx, "devices", c[0], c[1]); err != nil {
			return err
		}
	}
	for _, c := range certIdentityColumns {
		if err := d.addColumn(ctx, "certificates", c[0], c[1]); err != nil {
			return err
		}
	}
	return d.migrateTokenIDs(ctx)
}

// addColumn adds a column unless it exists (stores created by older versions).
func (d *DB) addColumn(ctx context.Context, table, column, decl string) error {
	if d.dialect == postgres {
		_, err := d.db.ExecContext(ctx, `ALTER TABLE `+table+` ADD COLUMN IF NOT EXISTS `+column+` `+decl)
		if err != nil {
			return fmt.Errorf("adding column %s.%s: %w", table, column, err)
		}
		return nil
	}
	var n int
	if err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?`, table, column).Scan(&n); err != nil {
		return fmt.Errorf("inspecting %s: %w", table, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := d.db.ExecContext(ctx, `ALTER TABLE `+table+` ADD COLUMN `+column+` `+decl); err != nil && !strings.Contains(err.Error(), "duplicate column") {
		return fmt.Errorf("adding column %s.%s: %w", table, column, err)
	}
	return nil
}

// --- enrollment

// EnrollRequest is one device enrollment and what authorises it: exactly one
// of TokenHash (an admin's one-time token) and Station.
type EnrollRequest struct {
	Serial, Model string
	// KeySHA256 identifies the key in the CSR (see Device.KeySHA256).
	KeySHA256 string
	TokenHash string
	Station   string
	// HardwareID is the device's hardware id, one of its model's (checked
	// by the caller); "" when the model declares none.
	HardwareID string
	// JTI is the station token's id, recorded so the token is single use;
	// empty when the station submitted the CSR itself over mTLS.
	JTI          string
	JTIExpiresAt time.Time
}

// enrollRef names the one-time token that authorises r, as recorded on the
// certificate it issues: the admin token's hash, or the station and its
// token id (station names cannot contain "/"). Empty when a station submits
// the CSR itself: that enrollment cannot be replayed.
func (r EnrollRequest) enrollRef() string {
	switch {
	case r.TokenHash != "":
		return "token:" + r.TokenHash
	case r.JTI != "":
		return "jti:" + r.Station + "/" + r.JTI
	}
	return ""
}

// jtiIssuer is who issued the station token whose id is r.JTI: token ids
// are single use per issuer (used_token_ids is keyed by issuer and id).
func (r EnrollRequest) jtiIssuer() string {
	return identity.Principal{Role: identity.RoleStation, Name: r.Station}.URI()
}

func (r EnrollRequest) via() string {
	if r.Station != "" {
		return "station:" + r.Station
	}
	return "token"
}

// EnrollDevice authorises r, runs issue and records the device and its
// certificate, all in one transaction: if anything refuses or fails, nothing
// is consumed (token, station quota, token id) and nothing is recorded.
//
// An existing serial may enroll again only with the same key (a device
// retrying an interrupted enrollment) or after an admin allowed
// re-provisioning; then the device's older certificates are revoked as
// superseded. Any other second enrollment is refused with ErrClone, and clone
// attempts and enrollments of revoked devices are recorded as refusals. The
// certificate records the token it spent, so that a retry with that token
// after a lost response can get it back (ReplayEnrollment).
func (d *DB) EnrollDevice(ctx context.Context, r EnrollRequest, issue func() (Issued, error)) (Device, error) {
	if (r.TokenHash == "") == (r.Station == "") {
		return Device{}, errors.New("enrollment needs exactly one of a token and a station")
	}
	id := r.deviceID()
	var dev Device
	// Group commit: concurrent enrollments share a transaction (group.go).
	err := d.groupTx(ctx, func(ctx context.Context, sqltx *sql.Tx) error {
		tx := cached{d, sqltx}
		now := d.now()
		useJTI := func() error {
			return d.useTokenID(ctx, tx, r.JTI, r.jtiIssuer(), r.JTIExpiresAt, now)
		}
		old, exists, err := d.authorize(ctx, tx, r, now, d.forUpdate(), useJTI)
		if err != nil {
			return err
		}
		is, err := issue()
		if err != nil {
			return err
		}
		via := r.via()
		reprovision := exists && !old.ReprovisionAllowedAt.IsZero()
		if reprovision {
			if err := d.revokeSubject(ctx, sqltx, old, 4, "superseded by re-provisioning", now); err != nil {
				return err
			}
			via = "reprovision:" + via
		}
		// A second enrollment with the same key (the device lost the first
		// reply and used a new token) replaces the certificate the way a
		// renewal does: the old one is accepted until the device uses the
		// new one, then superseded (SupersedeReplaced).
		replaced := ""
		if exists && !reprovision {
			replaced = old.CertSerial
		}
		dev = Device{ID: id, Serial: r.Serial, Model: r.Model, Status: DeviceActive, CertSerial: is.Serial,
			CertNotAfter: is.NotAfter, CertPEM: is.ChainPEM, EnrolledAt: now, KeySHA256: is.KeySHA256,
			ReplacedCertSerial: replaced, HardwareID: r.HardwareID}
		if exists {
			_, err = tx.ExecContext(ctx, d.q(sqlReenrollDevice),
				DeviceActive, is.Serial, ts(is.NotAfter), is.ChainPEM, ts(now), dayOf(now), is.KeySHA256, replaced, r.HardwareID, id)
		} else {
			_, err = tx.ExecContext(ctx, d.q(sqlEnrollDevice),
				id, r.Serial, r.Model, DeviceActive, is.Serial, ts(is.NotAfter), is.ChainPEM, ts(now), dayOf(now), is.KeySHA256, r.HardwareID)
		}
		if isUnique(err) {
			return fmt.Errorf("device %s: %w", id, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("recording device: %w", err)
		}
		if exists {
			dev.InstalledVersion, dev.InstalledTarget, dev.InstalledCounter = old.InstalledVersion, old.InstalledTarget, old.InstalledCounter
			dev.LastAttestationAt, dev.LastSequence = old.LastAttestationAt, old.LastSequence
		}
		if err := d.insertCert(ctx, tx, Certificate{Serial: is.Serial, Subject: id, KeySHA256: is.KeySHA256,
			NotBefore: is.NotBefore, NotAfter: is.NotAfter, IssuedAt: now, IssuedVia: via}, r.enrollRef()); err != nil {
			return err
		}
		// Last, so the station's row (shared by every enrollment of the
		// station) is locked only from here to the commit.
		return d.consume(ctx, tx, r, now)
	})
	if err := d.noteRefusal(ctx, r, err); err != nil {
		return Device{}, err
	}
	return dev, nil
}

// CheckEnroll runs every check EnrollDevice runs, without locking or
// writing (except recording a refused clone or revoked device), so callers
// can refuse early and sign only what will very likely be accepted.
// EnrollDevice checks again, authoritatively, in its transaction.
func (d *DB) CheckEnroll(ctx context.Context, r EnrollRequest) error {
	if (r.TokenHash == "") == (r.Station == "") {
		return errors.New("enrollment needs exactly one of a token and a station")
	}
	jtiUnused := func() error {
		var one int
		err := cached{d, nil}.QueryRowContext(ctx, d.q(sqlTokenIDSeen), r.jtiIssuer(), r.JTI).Scan(&one)
		switch {
		case err == nil:
			return ErrTokenUsed
		case errors.Is(err, sql.ErrNoRows):
			return nil
		}
		return fmt.Errorf("reading token ids: %w", err)
	}
	_, _, err := d.authorize(ctx, cached{d, nil}, r, d.now(), "", jtiUnused)
	return d.noteRefusal(ctx, r, err)
}

func (r EnrollRequest) deviceID() string { return identity.Device(r.Model, r.Serial).URI() }

// ReplayEnrollment answers a retried enrollment whose first attempt
// committed but whose response never reached the device (network drop,
// power cut, client timeout): refusal is what CheckEnroll or EnrollDevice
// returned for r. It reports true, with the device as the first attempt
// recorded it, when r's token was spent by the enrollment that issued the
// device's current certificate, for r's key:
//
//   - the refusal is ErrTokenUsed, or ErrStationQuota (the first attempt may
//     have spent the station's last unit);
//   - the token is unexpired: the admin token by its expires_at, still bound
//     to this serial and model; the station token id by the token's expiry,
//     and the station is active, inside its window and its policy still
//     admits the device (its quota is not looked at: nothing is charged);
//   - the device is active and not marked for re-provisioning, its key is
//     r.KeySHA256 (the caller verified the CSR's signature, so the requester
//     holds that key), and its current certificate is unrevoked, for that
//     key, and recorded as issued by this very token (certificates.enroll_token).
//
// Otherwise it reports false and the caller returns refusal unchanged. It
// only reads: a replay spends no token, charges no quota, issues nothing
// and records no refusal. A renewal, a re-provisioning or a revocation since
// the first attempt ends the token's replays for good; a key that is not the
// device's gets the refusal as before. The error is a failed read only.
func (d *DB) ReplayEnrollment(ctx context.Context, r EnrollRequest, refusal error) (Device, bool, error) {
	ref := r.enrollRef()
	if ref == "" || r.KeySHA256 == "" || (!errors.Is(refusal, ErrTokenUsed) && !errors.Is(refusal, ErrStationQuota)) {
		return Device{}, false, nil
	}
	now := d.now()
	var token string
	var args []any
	if r.TokenHash != "" {
		token = `SELECT 1 FROM tokens t WHERE t.hash = ? AND t.used_at != 0 AND t.expires_at > ? AND t.serial = ? AND t.model = ?`
		args = []any{r.TokenHash, ts(now), r.Serial, r.Model}
	} else {
		if r.Station == "" || !now.Before(r.JTIExpiresAt) {
			return Device{}, false, nil
		}
		st, err := d.GetStation(ctx, r.Station)
		if errors.Is(err, ErrNotFound) {
			return Device{}, false, nil
		}
		if err != nil {
			return Device{}, false, err
		}
		if st.permits(r.Serial, r.Model, now, false) != nil {
			return Device{}, false, nil
		}
		token = `SELECT 1 FROM used_token_ids u WHERE u.jti = ? AND u.issuer = ? AND u.expires_at > ?`
		args = []any{r.JTI, r.jtiIssuer(), ts(now)}
	}
	// One statement, so device, certificate and token are read as of one
	// moment (a revocation commits either wholly before or wholly after).
	dev, err := scanDevice(d.db.QueryRowContext(ctx, d.q(`SELECT `+deviceCols+` FROM devices
		WHERE devices.id = ? AND devices.status = ? AND devices.reprovision_at = 0 AND devices.key_sha256 = ?
		AND EXISTS (SELECT 1 FROM certificates c WHERE c.serial = devices.cert_serial AND c.subject = devices.id
			AND c.key_sha256 = devices.key_sha256 AND c.revoked_at = 0 AND c.enroll_token = ?)
		AND EXISTS (`+token+`)`),
		append([]any{r.deviceID(), DeviceActive, r.KeySHA256, ref}, args...)...))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, false, nil
	}
	if err != nil {
		return Device{}, false, fmt.Errorf("checking for a replayed enrollment: %w", err)
	}
	return dev, true, nil
}

// noteRefusal records clone attempts and enrollments of revoked devices,
// and passes err through.
func (d *DB) noteRefusal(ctx context.Context, r EnrollRequest, err error) error {
	if !errors.Is(err, ErrClone) && !errors.Is(err, ErrDeviceRevoked) {
		return err
	}
	reason := refusalClone
	if errors.Is(err, ErrDeviceRevoked) {
		reason = "enrollment of a revoked device"
	}
	if rerr := d.recordRefusal(ctx, r.deviceID(), reason, r.KeySHA256, r.via()); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// authorize checks the token or station, then (stations) the token id
// with jti, then the device (clone, revoked), reading with lock ("" or
// " FOR UPDATE"). The station row is never locked here: it is shared by all
// of the station's enrollments, and consume charges its quota last with a
// guarded update that re-checks status, window and quota atomically. It
// returns the existing device.
func (d *DB) authorize(ctx context.Context, q querier, r EnrollRequest, now time.Time, lock string, jti func() error) (Device, bool, error) {
	if r.TokenHash != "" {
		if err := d.checkToken(ctx, q, r, now, lock); err != nil {
			return Device{}, false, err
		}
	} else if err := d.checkStation(ctx, q, r, now); err != nil {
		return Device{}, false, err
	}
	if r.JTI != "" {
		if err := jti(); err != nil {
			return Device{}, false, err
		}
	}
	id := r.deviceID()
	old, err := scanDevice(q.QueryRowContext(ctx, d.q(sqlDevice+lock), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, false, nil
	}
	if err != nil {
		return Device{}, false, fmt.Errorf("reading device: %w", err)
	}
	if old.ReprovisionAllowedAt.IsZero() {
		switch {
		case old.Status == DeviceRevoked:
			return Device{}, false, fmt.Errorf("device %s: %w (an admin must run `device reprovision` before it can enroll again)", id, ErrDeviceRevoked)
		case old.KeySHA256 == "" || old.KeySHA256 != r.KeySHA256:
			return Device{}, false, fmt.Errorf("device %s: %w", id, ErrClone)
		}
	}
	return old, true, nil
}

func (d *DB) checkToken(ctx context.Context, q querier, r EnrollRequest, now time.Time, lock string) error {
	var serial, model string
	var exp, used int64
	err := q.QueryRowContext(ctx, d.q(sqlToken+lock), r.TokenHash).
		Scan(&serial, &model, &exp, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrTokenInvalid
	}
	if err != nil {
		return fmt.Errorf("reading token: %w", err)
	}
	switch {
	case used != 0:
		return ErrTokenUsed
	case !now.Before(fromTS(exp)):
		return ErrTokenExpired
	case serial != r.Serial || model != r.Model:
		return fmt.Errorf("%w: token is for %s/%s, request is for %s/%s", ErrTokenBinding, model, serial, r.Model, r.Serial)
	}
	return nil
}

func (d *DB) checkStation(ctx context.Context, q querier, r EnrollRequest, now time.Time) error {
	st, err := scanStation(q.QueryRowContext(ctx, d.q(sqlStation), r.Station))
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("station %q is not registered: %w", r.Station, ErrStationRevoked)
	}
	if err != nil {
		return fmt.Errorf("reading station: %w", err)
	}
	return st.Permits(r.Serial, r.Model, now)
}

// useTokenID records a token id of issuer; a second use of the same
// (issuer, id) is ErrTokenUsed. Two issuers may pick the same id.
func (d *DB) useTokenID(ctx context.Context, tx runner, jti, issuer string, exp, now time.Time) error {
	if jti == "" {
		return fmt.Errorf("%w: token has no id", ErrTokenInvalid)
	}
	_, err := tx.ExecContext(ctx, d.q(sqlUseTokenID), issuer, jti, ts(exp), ts(now))
	if isUnique(err) {
		return ErrTokenUsed
	}
	if err != nil {
		return fmt.Errorf("recording token id: %w", err)
	}
	return nil
}

// consume spends what authorised the enrollment: the token, or one unit of
// the station's quota (guarded, so concurrent enrollments cannot overrun it).
func (d *DB) consume(ctx context.Context, tx runner, r EnrollRequest, now time.Time) error {
	if r.TokenHash != "" {
		res, err := tx.ExecContext(ctx, d.q(sqlSpendToken), ts(now), r.TokenHash)
		if err != nil {
			return fmt.Errorf("consuming token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrTokenUsed
		}
		return nil
	}
	res, err := tx.ExecContext(ctx, d.q(sqlChargeStation),
		r.Station, StationActive, ts(now), ts(now))
	if err != nil {
		return fmt.Errorf("charging station quota: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		// Lost a race: find out which limit was hit.
		st, err := d.getStationTx(ctx, tx, r.Station)
		if err != nil {
			return err
		}
		if err := st.Permits(r.Serial, r.Model, now); err != nil {
			return err
		}
		return fmt.Errorf("station %q: %w", r.Station, ErrStationQuota)
	}
	return nil
}

func (d *DB) getStationTx(ctx context.Context, tx runner, name string) (Station, error) {
	st, err := scanStation(tx.QueryRowContext(ctx, d.q(sqlStation), name))
	if err != nil {
		return Station{}, fmt.Errorf("reading station: %w", err)
	}
	return st, nil
}

func (d *DB) recordRefusal(ctx context.Context, deviceID, reason, keySHA256, via string) error {
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO device_refusals (device_id, reason, key_sha256, via, at) VALUES (?, ?, ?, ?, ?)`),
		deviceID, reason, keySHA256, via, ts(d.now()))
	if err != nil {
		return fmt.Errorf("recording refusal: %w", err)
	}
	return d.Audit(ctx, via, "device.refused", deviceID+": "+reason+" key_sha256="+keySHA256)
}

// ListRefusals returns a device's refused enrollments, oldest first.
func (d *DB) ListRefusals(ctx context.Context, deviceID string) ([]Refusal, error) {
	return queryAll(ctx, d.db, "listing refusals", d.q(`SELECT id, device_id, reason, key_sha256, via, at FROM device_refusals WHERE device_id = ? ORDER BY id`), scanRefusal, deviceID)
}

// RecentRefusals returns a device's newest limit (1..MaxDeviceHistory)
// refusals, oldest first, and how many there are: a clone that keeps
// trying cannot make a device's page unbounded.
func (d *DB) RecentRefusals(ctx context.Context, deviceID string, limit int) ([]Refusal, int, error) {
	if limit < 1 || limit > MaxDeviceHistory {
		return nil, 0, fmt.Errorf("limit %d out of range 1..%d", limit, MaxDeviceHistory)
	}
	var n int
	if err := d.db.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM device_refusals WHERE device_id = ?`), deviceID).Scan(&n); err != nil {
		return nil, 0, fmt.Errorf("counting refusals: %w", err)
	}
	rs, err := queryAll(ctx, d.db, "listing refusals", d.q(`SELECT id, device_id, reason, key_sha256, via, at FROM device_refusals WHERE device_id = ? ORDER BY id DESC LIMIT `+strconv.Itoa(limit)), scanRefusal, deviceID)
	slices.Reverse(rs)
	return rs, n, err
}

func scanRefusal(s scanner) (Refusal, error) {
	var f Refusal
	var at int64
	err := s.Scan(&f.ID, &f.DeviceID, &f.Reason, &f.KeySHA256, &f.Via, &at)
	f.At = fromTS(at)
	return f, err
}

// AllowReprovision lets the next enrollment of the device use a new key.
func (d *DB) AllowReprovision(ctx context.Context, id, by string) (Device, error) {
	res, err := d.db.ExecContext(ctx, d.q(`UPDATE devices SET reprovision_at = ?, reprovision_by = ? WHERE id = ?`), ts(d.now()), by, id)
	if err != nil {
		return Device{}, fmt.Errorf("updating device: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return d.GetDevice(ctx, id)
}
