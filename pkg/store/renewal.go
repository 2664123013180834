package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Renewal and the life of the certificates it replaces.
//
// A device renews with its current certificate and its current key, never
// another: re-keying is an admin act (AllowReprovision, then enrollment). A
// renewal replaces the current certificate; the replaced one stays usable
// only until the device first authenticates with the new one, so a device
// whose renewal reply was lost can retry with the certificate it still
// holds (and gets the same new certificate back). At that first use, every
// older certificate of the device is revoked as superseded (RFC 5280 reason
// 4) in one write (SupersedeReplaced); any certificate of the device that is
// neither its current one nor the replaced one still pending is refused
// (CheckDeviceAccess, RenewDevice).

// ErrKeyMismatch: a renewal asked for a certificate for a key that is not
// the device's current key (a stolen certificate trying to move the device
// to the thief's key). It is recorded as a refusal and changes nothing.
var ErrKeyMismatch = errors.New("key mismatch: a device renews only with its current key (re-keying needs an admin's `device reprovision` and a new enrollment)")

// Revocation reason of certificates a renewal replaced (RFC 5280 CRLReason
// superseded).
const (
	ReasonSuperseded     = 4
	supersededByRenewal  = "superseded by renewal"
	maxRefusalSerialText = 64
)

// RenewRequest is one renewal of a device certificate.
type RenewRequest struct {
	DeviceID string
	// PresentedSerial and PresentedKeySHA256 identify the certificate that
	// authenticated the request (over mTLS, or in the renew-expired token).
	PresentedSerial    string
	PresentedKeySHA256 string
	// KeySHA256 identifies the key in the CSR: it must be the device's.
	KeySHA256 string
	// Expired marks renewal after expiry (proof of possession of the old key).
	Expired bool
	// JTI is the renew-expired token's id (single use).
	JTI          string
	JTIExpiresAt time.Time
}

func (r RenewRequest) via() string {
	if r.Expired {
		return "renew-expired"
	}
	return "renew"
}

// RenewResult is what a renewal did.
type RenewResult struct {
	Device // as it is now; CertPEM is the certificate to hand back
	// Replayed: the request retried a renewal whose reply was lost (it
	// presented the replaced certificate, and the certificate that renewal
	// issued is unused and unexpired): nothing was issued, the device gets
	// that certificate again.
	Replayed bool
	// Superseded counts the certificates revoked as superseded (the CRL
	// needs refreshing when it is not zero).
	Superseded int64
}

// RenewDevice checks that the device may renew with the presented
// certificate and the CSR's key, runs issue and records the new
// certificate, in one transaction:
//
//   - a revoked device gets ErrDeviceRevoked; after expiry, a device marked
//     for re-provisioning gets ErrReprovisioning;
//   - a CSR for any key but the device's current key gets ErrKeyMismatch,
//     recorded as a refusal (ListRefusals);
//   - a certificate that is revoked, not the device's, not for its current
//     key, or neither its current certificate nor the replaced one still
//     pending gets ErrSuperseded;
//   - the replaced certificate, while the certificate that replaced it is
//     unused and unexpired, gets that certificate back (Replayed), issuing
//     nothing.
//
// Otherwise the new certificate becomes current, the presented one becomes
// the replaced one (pending until the device uses the new one), and any
// other unrevoked certificate of the device is revoked as superseded.
func (d *DB) RenewDevice(ctx context.Context, r RenewRequest, issue func() (Issued, error)) (RenewResult, error) {
	if r.KeySHA256 == "" {
		return RenewResult{}, errors.New("renewal needs the CSR's key")
	}
	var res RenewResult
	err := d.tx(ctx, func(tx *sql.Tx) error {
		now := d.now()
		old, err := scanDevice(tx.QueryRowContext(ctx, d.q(`SELECT `+deviceCols+` FROM devices WHERE id = ?`+d.forUpdate()), r.DeviceID))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device %s: %w", r.DeviceID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading device: %w", err)
		}
		if old.Status == DeviceRevoked {
			return fmt.Errorf("device %s: %w", r.DeviceID, ErrDeviceRevoked)
		}
		if r.Expired && !old.ReprovisionAllowedAt.IsZero() {
			return fmt.Errorf("device %s: %w", r.DeviceID, ErrReprovisioning)
		}
		if r.KeySHA256 != old.KeySHA256 {
			return fmt.Errorf("device %s: %w", r.DeviceID, ErrKeyMismatch)
		}
		if err := d.checkPresented(ctx, tx, r, old); err != nil {
			return err
		}
		if r.JTI != "" {
			if err := d.useTokenID(ctx, tx, r.JTI, r.DeviceID, r.JTIExpiresAt, now); err != nil {
				return err
			}
		}
		retry := r.PresentedSerial != old.CertSerial
		if retry && now.Before(old.CertNotAfter) {
			res = RenewResult{Device: old, Replayed: true}
			return nil
		}
		is, err := issue()
		if err != nil {
			return err
		}
		if is.KeySHA256 != old.KeySHA256 {
			return fmt.Errorf("renewal of %s issued a certificate for another key: %w", r.DeviceID, ErrKeyMismatch)
		}
		// A current certificate issued before certificates were recorded
		// is recorded now, so superseding it later reaches the CRL.
		if _, err := tx.ExecContext(ctx, d.q(`INSERT INTO certificates (serial, subject, key_sha256, not_before, not_after, issued_at, issued_via) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING`),
			old.CertSerial, old.ID, old.KeySHA256, ts(old.EnrolledAt), ts(old.CertNotAfter), ts(old.EnrolledAt), "token"); err != nil {
			return fmt.Errorf("recording certificate %s: %w", old.CertSerial, err)
		}
		if _, err := tx.ExecContext(ctx, d.q(`UPDATE devices SET cert_serial = ?, cert_not_after = ?, cert_pem = ?, replaced_cert_serial = ? WHERE id = ?`),
			is.Serial, ts(is.NotAfter), is.ChainPEM, r.PresentedSerial, r.DeviceID); err != nil {
			return fmt.Errorf("recording renewal: %w", err)
		}
		if err := d.insertCert(ctx, tx, Certificate{Serial: is.Serial, Subject: r.DeviceID, KeySHA256: is.KeySHA256,
			NotBefore: is.NotBefore, NotAfter: is.NotAfter, IssuedAt: now, IssuedVia: r.via(), IssuedBy: r.PresentedSerial}, ""); err != nil {
			return err
		}
		// Whatever else is still valid (the unused certificate of a lost
		// reply that expired, the replaced one of the renewal before, or
		// certificates left valid by older versions) is superseded now.
		sup, err := tx.ExecContext(ctx, d.q(`UPDATE certificates SET revoked_at = ?, revoke_reason_code = ?, revoke_reason = ? WHERE subject = ? AND revoked_at = 0 AND serial != ? AND serial != ?`),
			ts(now), ReasonSuperseded, supersededByRenewal, r.DeviceID, is.Serial, r.PresentedSerial)
		if err != nil {
			return fmt.Errorf("superseding certificates of %s: %w", r.DeviceID, err)
		}
		res.Superseded, _ = sup.RowsAffected()
		res.Device = old
		res.CertSerial, res.CertNotAfter, res.CertPEM, res.ReplacedCertSerial = is.Serial, is.NotAfter, is.ChainPEM, r.PresentedSerial
		return nil
	})
	if errors.Is(err, ErrKeyMismatch) {
		serial := r.PresentedSerial
		if len(serial) > maxRefusalSerialText {
			serial = serial[:maxRefusalSerialText]
		}
		reason := "key_mismatch: " + r.via() + " with certificate " + serial + " asked for another key"
		if rerr := d.recordRefusal(ctx, r.DeviceID, reason, r.KeySHA256, r.via()); rerr != nil {
			return RenewResult{}, errors.Join(err, rerr)
		}
	}
	if err != nil {
		return RenewResult{}, err
	}
	return res, nil
}

// checkPresented accepts only the device's current certificate, or the one
// its last renewal replaced while that is pending, unrevoked and for the
// device's current key.
func (d *DB) checkPresented(ctx context.Context, tx *sql.Tx, r RenewRequest, old Device) error {
	c, err := getCert(ctx, tx, d, r.PresentedSerial)
	switch {
	case errors.Is(err, ErrNotFound):
		// Issued before certificates were recorded: only the current one counts.
		if r.PresentedSerial != old.CertSerial {
			return fmt.Errorf("certificate %s: %w", r.PresentedSerial, ErrSuperseded)
		}
	case err != nil:
		return err
	case c.Subject != r.DeviceID || !c.RevokedAt.IsZero():
		return fmt.Errorf("certificate %s: %w", r.PresentedSerial, ErrSuperseded)
	}
	if r.PresentedSerial != old.CertSerial && (old.ReplacedCertSerial == "" || r.PresentedSerial != old.ReplacedCertSerial) {
		return fmt.Errorf("certificate %s is not the device's current certificate: %w", r.PresentedSerial, ErrSuperseded)
	}
	if r.PresentedKeySHA256 != old.KeySHA256 {
		return fmt.Errorf("certificate %s is not for the device's current key: %w", r.PresentedSerial, ErrSuperseded)
	}
	return nil
}

// SupersedeReplaced is called at the first request a device authenticates
// with its current certificate while a replaced one is pending
// (DeviceAccess.Pending): it ends the replaced certificate's grace and
// revokes every certificate of the device but current as superseded, in one
// transaction. Concurrent first uses supersede once; the others, and any
// call when nothing is pending or current is no longer current, do nothing
// and return 0. It returns how many certificates it revoked.
func (d *DB) SupersedeReplaced(ctx context.Context, deviceID, current string) (int64, error) {
	var n int64
	err := d.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, d.q(`UPDATE devices SET replaced_cert_serial = '' WHERE id = ? AND cert_serial = ? AND replaced_cert_serial != ''`), deviceID, current)
		if err != nil {
			return fmt.Errorf("ending the replaced certificate's grace: %w", err)
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return nil
		}
		res, err = tx.ExecContext(ctx, d.q(`UPDATE certificates SET revoked_at = ?, revoke_reason_code = ?, revoke_reason = ? WHERE subject = ? AND revoked_at = 0 AND serial != ?`),
			ts(d.now()), ReasonSuperseded, supersededByRenewal, deviceID, current)
		if err != nil {
			return fmt.Errorf("superseding certificates of %s: %w", deviceID, err)
		}
		n, _ = res.RowsAffected()
		return nil
	})
	return n, err
}

// DeviceAccess is what an mTLS request of a device is allowed on.
type DeviceAccess struct {
	Enrolled    bool   // the device exists
	Status      string // its status (DeviceActive, ...) when enrolled
	CertRevoked bool   // the presented certificate is revoked
	// CertSuperseded: it is revoked as superseded (a newer one replaced it).
	CertSuperseded bool
	// CertCurrent: the presented certificate is the device's current one.
	CertCurrent bool
	// CertReplaced: the presented certificate is the one the last renewal
	// replaced, still accepted because the device has not used the new one.
	CertReplaced bool
	// Pending: a replaced certificate is pending; the first request with
	// the current certificate must call SupersedeReplaced.
	Pending bool
}

// CheckDeviceAccess reads, in one query, the device's status, whether the
// certificate it presented is revoked, and whether it is the device's
// current certificate or the replaced one still pending: every mTLS request
// of a device asks all of it, so revocation and supersession take effect on
// the very next request.
func (d *DB) CheckDeviceAccess(ctx context.Context, deviceID, certSerial string) (DeviceAccess, error) {
	var status, current, replaced string
	var revokedAt, reason sql.NullInt64
	err := cached{d, nil}.QueryRowContext(ctx, d.q(sqlDeviceAccess),
		certSerial, deviceID).Scan(&status, &current, &replaced, &revokedAt, &reason)
	if errors.Is(err, sql.ErrNoRows) {
		return DeviceAccess{}, nil
	}
	if err != nil {
		return DeviceAccess{}, fmt.Errorf("checking device access: %w", err)
	}
	revoked := revokedAt.Valid && revokedAt.Int64 != 0
	return DeviceAccess{Enrolled: true, Status: status, CertRevoked: revoked, CertSuperseded: revoked && reason.Int64 == ReasonSuperseded,
		CertCurrent: certSerial == current, CertReplaced: replaced != "" && certSerial == replaced, Pending: replaced != ""}, nil
}
