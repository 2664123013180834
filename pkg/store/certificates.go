package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Revocation, issued certificates and the CRL.

// --- revocation

// RevokeDevice marks the device revoked and revokes every certificate issued
// to it, with an RFC 5280 reason code, in one transaction. Revoking a revoked
// device is ErrConflict.
func (d *DB) RevokeDevice(ctx context.Context, id string, reasonCode int, reason, by string) (Device, error) {
	var dev Device
	err := d.tx(ctx, func(tx *sql.Tx) error {
		now := d.now()
		old, err := scanDevice(tx.QueryRowContext(ctx, d.q(`SELECT `+deviceCols+` FROM devices WHERE id = ?`+d.forUpdate()), id))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading device: %w", err)
		}
		if old.Status == DeviceRevoked {
			return fmt.Errorf("device %s is already revoked: %w", id, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, d.q(`UPDATE devices SET status = ?, revoked_at = ?, revoke_reason = ?, reprovision_at = 0, reprovision_by = '' WHERE id = ?`),
			DeviceRevoked, ts(now), reason, id); err != nil {
			return fmt.Errorf("revoking device: %w", err)
		}
		if err := d.revokeSubject(ctx, tx, old, reasonCode, reason, now); err != nil {
			return err
		}
		dev = old
		dev.Status, dev.RevokedAt, dev.RevokeReason = DeviceRevoked, now, reason
		dev.ReprovisionAllowedAt, dev.ReprovisionBy = time.Time{}, ""
		return nil
	})
	if err != nil {
		return Device{}, err
	}
	return dev, nil
}

// revokeSubject revokes every unrevoked certificate of the device, first
// recording its current one if it predates the certificates table.
func (d *DB) revokeSubject(ctx context.Context, tx *sql.Tx, dev Device, code int, reason string, now time.Time) error {
	if dev.CertSerial != "" {
		_, err := tx.ExecContext(ctx, d.q(`INSERT INTO certificates (serial, subject, key_sha256, not_before, not_after, issued_at, issued_via) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING`),
			dev.CertSerial, dev.ID, dev.KeySHA256, ts(dev.EnrolledAt), ts(dev.CertNotAfter), ts(dev.EnrolledAt), "token")
		if err != nil {
			return fmt.Errorf("recording certificate %s: %w", dev.CertSerial, err)
		}
	}
	return revokeCerts(ctx, tx, d, dev.ID, code, reason, now)
}

func revokeCerts(ctx context.Context, tx *sql.Tx, d *DB, subject string, code int, reason string, now time.Time) error {
	_, err := tx.ExecContext(ctx, d.q(`UPDATE certificates SET revoked_at = ?, revoke_reason_code = ?, revoke_reason = ? WHERE subject = ? AND revoked_at = 0`),
		ts(now), code, reason, subject)
	if err != nil {
		return fmt.Errorf("revoking certificates of %s: %w", subject, err)
	}
	return nil
}

// --- certificates

const certCols = `serial, subject, key_sha256, not_before, not_after, issued_at, issued_via, issued_by, revoked_at, revoke_reason_code, revoke_reason`

func scanCert(s scanner) (Certificate, error) {
	var c Certificate
	var nb, na, ia, ra int64
	err := s.Scan(&c.Serial, &c.Subject, &c.KeySHA256, &nb, &na, &ia, &c.IssuedVia, &c.IssuedBy, &ra, &c.RevokeReasonCode, &c.RevokeReason)
	c.NotBefore, c.NotAfter, c.IssuedAt, c.RevokedAt = fromTS(nb), fromTS(na), fromTS(ia), fromTS(ra)
	return c, err
}

// insertCert records c; enrollToken is the enrollment's enrollRef ("" for
// anything but an enrollment).
func (d *DB) insertCert(ctx context.Context, tx runner, c Certificate, enrollToken string) error {
	_, err := tx.ExecContext(ctx, d.q(sqlInsertCert),
		c.Serial, c.Subject, c.KeySHA256, ts(c.NotBefore), ts(c.NotAfter), ts(c.IssuedAt), c.IssuedVia, c.IssuedBy, enrollToken)
	if isUnique(err) {
		return fmt.Errorf("certificate serial %s: %w", c.Serial, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("recording certificate: %w", err)
	}
	return nil
}

func getCert(ctx context.Context, q querier, d *DB, serial string) (Certificate, error) {
	c, err := scanCert(q.QueryRowContext(ctx, d.q(`SELECT `+certCols+` FROM certificates WHERE serial = ?`), serial))
	if errors.Is(err, sql.ErrNoRows) {
		return Certificate{}, fmt.Errorf("certificate %s: %w", serial, ErrNotFound)
	}
	if err != nil {
		return Certificate{}, fmt.Errorf("reading certificate: %w", err)
	}
	return c, nil
}

// RecordCertificate records a certificate issued outside enrollment (admin,
// auditor and station credentials).
func (d *DB) RecordCertificate(ctx context.Context, c Certificate) error {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = d.now()
	}
	return d.tx(ctx, func(tx *sql.Tx) error { return d.insertCert(ctx, tx, c, "") })
}

// GetCertificate returns an issued certificate by hex serial, or ErrNotFound.
func (d *DB) GetCertificate(ctx context.Context, serial string) (Certificate, error) {
	return getCert(ctx, d.db, d, serial)
}

// IsRevoked reports whether the certificate with this hex serial is revoked.
// Certificates the store never recorded are not revoked.
func (d *DB) IsRevoked(ctx context.Context, serial string) (bool, error) {
	var ra int64
	err := cached{d, nil}.QueryRowContext(ctx, d.q(sqlCertRevokedAt), serial).Scan(&ra)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking revocation: %w", err)
	}
	return ra != 0, nil
}

// ListCertificates returns the certificates issued to subject ("" for all),
// oldest first.
func (d *DB) ListCertificates(ctx context.Context, subject string) ([]Certificate, error) {
	if subject == "" {
		return d.listCerts(ctx, `ORDER BY issued_at, serial`)
	}
	return d.listCerts(ctx, `WHERE subject = ? ORDER BY issued_at, serial`, subject)
}

// MaxDeviceHistory bounds the certificates and refusals of one device that
// RecentCertificates and RecentRefusals return.
const MaxDeviceHistory = 100

// RecentCertificates returns the newest limit (1..MaxDeviceHistory)
// certificates issued to subject, oldest first, and how many there are.
func (d *DB) RecentCertificates(ctx context.Context, subject string, limit int) ([]Certificate, int, error) {
	if limit < 1 || limit > MaxDeviceHistory {
		return nil, 0, fmt.Errorf("limit %d out of range 1..%d", limit, MaxDeviceHistory)
	}
	var n int
	if err := d.db.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM certificates WHERE subject = ?`), subject).Scan(&n); err != nil {
		return nil, 0, fmt.Errorf("counting certificates: %w", err)
	}
	cs, err := d.listCerts(ctx, `WHERE subject = ? ORDER BY issued_at DESC, serial DESC LIMIT `+strconv.Itoa(limit), subject)
	slices.Reverse(cs)
	return cs, n, err
}

// RevokedCertificates returns every revoked certificate, for the CRL.
func (d *DB) RevokedCertificates(ctx context.Context) ([]Certificate, error) {
	return d.listCerts(ctx, `WHERE revoked_at != 0 ORDER BY revoked_at, serial`)
}

func (d *DB) listCerts(ctx context.Context, where string, args ...any) ([]Certificate, error) {
	return queryAll(ctx, d.db, "listing certificates", d.q(`SELECT `+certCols+` FROM certificates `+where), scanCert, args...)
}

// RevokeCertificates revokes every certificate of subject (admins, auditors,
// stations). It returns how many it revoked.
func (d *DB) RevokeCertificates(ctx context.Context, subject string, code int, reason string) (int64, error) {
	res, err := d.db.ExecContext(ctx, d.q(`UPDATE certificates SET revoked_at = ?, revoke_reason_code = ?, revoke_reason = ? WHERE subject = ? AND revoked_at = 0`),
		ts(d.now()), code, reason, subject)
	if err != nil {
		return 0, fmt.Errorf("revoking certificates of %s: %w", subject, err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// --- CRL

// GetCRL returns the stored CRL, or ErrNotFound before the first one.
func (d *DB) GetCRL(ctx context.Context) (CRL, error) {
	var c CRL
	var this, exp, dur int64
	var der string
	err := d.db.QueryRowContext(ctx, `SELECT number, this_update, expires_at, duration, der FROM crl WHERE id = 1`).Scan(&c.Number, &this, &exp, &dur, &der)
	if errors.Is(err, sql.ErrNoRows) {
		return CRL{}, fmt.Errorf("crl: %w", ErrNotFound)
	}
	if err != nil {
		return CRL{}, fmt.Errorf("reading crl: %w", err)
	}
	c.ThisTime, c.ExpiresAt, c.Duration = fromTS(this), fromTS(exp), time.Duration(dur)
	if c.DER, err = base64.StdEncoding.DecodeString(der); err != nil {
		return CRL{}, fmt.Errorf("crl: corrupt DER: %w", err)
	}
	return c, nil
}

// StoreCRL replaces the stored CRL unless a newer one (higher number) is
// already stored.
func (d *DB) StoreCRL(ctx context.Context, c CRL) error {
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO crl (id, number, this_update, expires_at, duration, der) VALUES (1, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET number = excluded.number, this_update = excluded.this_update, expires_at = excluded.expires_at, duration = excluded.duration, der = excluded.der
		WHERE crl.number < excluded.number`),
		c.Number, ts(c.ThisTime), ts(c.ExpiresAt), int64(c.Duration), base64.StdEncoding.EncodeToString(c.DER))
	if err != nil {
		return fmt.Errorf("storing crl: %w", err)
	}
	return nil
}
