package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// Admin and auditor credentials: the certificates of the people who run
// fosterd. Their lifecycle rules, enforced here in one transaction each so
// two fosterd replicas cannot race past them:
//
//   - every credential ever issued is recorded in certificates, the one
//     written at init included (RecordExistingCredential records it for
//     instances created before that);
//   - a name (admin and auditor names share one namespace, so `admin revoke
//     NAME` is unambiguous) holds at most one live credential: another is
//     refused (ErrCredentialExists) until the old one is revoked or expired;
//   - renewal is the exception: the holder gets a second credential, and the
//     first request made with it supersedes the older ones (Supersede), so a
//     lost response never locks the holder out;
//   - revoking a name revokes every credential it holds, unless that would
//     leave no admin with a live credential (ErrLastAdmin).

// Admin credential errors, both wrapping ErrConflict.
var (
	ErrCredentialExists = fmt.Errorf("the name already holds a live credential (revoke it first): %w", ErrConflict)
	ErrLastAdmin        = fmt.Errorf("the last active admin cannot be revoked (create another admin first): %w", ErrConflict)
)

// Credential statuses (AdminCredential.Status).
const (
	CredentialActive     = "active"
	CredentialExpired    = "expired"
	CredentialRevoked    = "revoked"
	CredentialSuperseded = "superseded"
)

// Issued-via values of admin and auditor certificates.
const (
	IssuedViaAdmin = "admin" // POST /v1/admins
	IssuedViaInit  = "init"  // the first admin, written at instance creation
	IssuedViaRenew = "renew" // the holder renewed its own credential
)

// supersededReasonCode is RFC 5280 CRLReason superseded(4).
const supersededReasonCode = 4

// AdminCredential is one admin or auditor certificate with its holder.
type AdminCredential struct {
	Name   string `json:"name"`
	Role   string `json:"role"` // admin or auditor
	Status string `json:"status"`
	Certificate
}

// adminSubjects are the certificate subjects admin and auditor credentials
// use: "urn:foster:admin:<name>", "urn:foster:auditor:<name>".
var adminRoles = []string{"admin", "auditor"}

func adminSubject(role, name string) string {
	return identity.Principal{Role: identity.Role(role), Name: name}.URI()
}

// subjectRange is a WHERE fragment matching subjects of role by prefix, as
// a range so the subject index serves it (';' sorts right after ':').
func subjectRange(role string) (string, []any) {
	p := identity.Principal{Role: identity.Role(role)}.URI() // "urn:foster:<role>:"
	return `(subject >= ? AND subject < ?)`, []any{p, p[:len(p)-1] + ";"}
}

func credentialOf(c Certificate, now time.Time) AdminCredential {
	p, _ := identity.ParseURI(c.Subject) // recorded subjects were built by identity
	a := AdminCredential{Name: p.Name, Role: string(p.Role), Certificate: c}
	switch {
	case !c.RevokedAt.IsZero() && c.RevokeReasonCode == supersededReasonCode:
		a.Status = CredentialSuperseded
	case !c.RevokedAt.IsZero():
		a.Status = CredentialRevoked
	case !now.Before(c.NotAfter):
		a.Status = CredentialExpired
	default:
		a.Status = CredentialActive
	}
	return a
}

// lockAdmins serialises the admin credential transactions: SQLite
// transactions here are already exclusive (BEGIN IMMEDIATE); on PostgreSQL
// a transaction-scoped advisory lock does it without locking the
// certificates table that every enrollment writes.
func (d *DB) lockAdmins(ctx context.Context, tx *sql.Tx) error {
	if d.dialect != postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7365413470238291)`); err != nil {
		return fmt.Errorf("locking admin credentials: %w", err)
	}
	return nil
}

// ListAdminCredentials returns every admin and auditor credential ever
// recorded, by name, oldest first.
func (d *DB) ListAdminCredentials(ctx context.Context) ([]AdminCredential, error) {
	wa, aa := subjectRange("admin")
	wu, au := subjectRange("auditor")
	certs, err := d.listCerts(ctx, `WHERE `+wa+` OR `+wu+` ORDER BY subject, issued_at, serial`, append(aa, au...)...)
	if err != nil {
		return nil, err
	}
	now := d.now()
	out := make([]AdminCredential, len(certs))
	for i, c := range certs {
		out[i] = credentialOf(c, now)
	}
	return out, nil
}

// nameCredentials returns the certificates name holds in either role.
func (d *DB) nameCredentials(ctx context.Context, tx *sql.Tx, name string) ([]Certificate, error) {
	return queryAll(ctx, tx, "reading credentials of "+name, d.q(`SELECT `+certCols+` FROM certificates WHERE subject IN (?, ?) ORDER BY issued_at, serial`),
		scanCert, adminSubject("admin", name), adminSubject("auditor", name))
}

// IssueAdminCredential records a new credential for name in role, issued
// by issue inside the transaction that checks name holds no live credential
// (ErrCredentialExists otherwise, and issue is not called). The returned
// certificate is what issue returned, recorded with IssuedVia "admin".
func (d *DB) IssueAdminCredential(ctx context.Context, role, name, by string, issue func() (Certificate, error)) (Certificate, error) {
	if role != "admin" && role != "auditor" {
		return Certificate{}, fmt.Errorf("role %q is neither admin nor auditor", role)
	}
	var out Certificate
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if err := d.lockAdmins(ctx, tx); err != nil {
			return err
		}
		held, err := d.nameCredentials(ctx, tx, name)
		if err != nil {
			return err
		}
		now := d.now()
		for _, c := range held {
			if credentialOf(c, now).Status == CredentialActive {
				return fmt.Errorf("%s holds credential %s until %s: %w", c.Subject, c.Serial, c.NotAfter.Format(time.RFC3339), ErrCredentialExists)
			}
		}
		c, err := issue()
		if err != nil {
			return err
		}
		if c.Subject != adminSubject(role, name) {
			return fmt.Errorf("issued credential names %s, want %s", c.Subject, adminSubject(role, name))
		}
		c.IssuedAt, c.IssuedVia, c.IssuedBy = now, IssuedViaAdmin, by
		if err := d.insertCert(ctx, tx, c, ""); err != nil {
			return err
		}
		out = c
		return nil
	})
	return out, err
}

// RenewAdminCredential records a fresh credential for the holder of the
// live credential presentedSerial (issued by issue inside the transaction),
// with IssuedVia "renew". The presented credential stays valid until the new
// one is first used (Supersede).
func (d *DB) RenewAdminCredential(ctx context.Context, presentedSerial string, issue func() (Certificate, error)) (Certificate, error) {
	var out Certificate
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if err := d.lockAdmins(ctx, tx); err != nil {
			return err
		}
		old, err := getCert(ctx, tx, d, presentedSerial)
		if err != nil {
			return err
		}
		now := d.now()
		a := credentialOf(old, now)
		if a.Role != "admin" && a.Role != "auditor" {
			return fmt.Errorf("certificate %s is not an admin or auditor credential: %w", old.Serial, ErrNotFound)
		}
		if a.Status != CredentialActive {
			return fmt.Errorf("credential %s is %s: %w", old.Serial, a.Status, ErrSuperseded)
		}
		c, err := issue()
		if err != nil {
			return err
		}
		if c.Subject != old.Subject {
			return fmt.Errorf("issued credential names %s, want %s", c.Subject, old.Subject)
		}
		c.IssuedAt, c.IssuedVia, c.IssuedBy = now, IssuedViaRenew, old.Subject
		if err := d.insertCert(ctx, tx, c, ""); err != nil {
			return err
		}
		out = c
		return nil
	})
	return out, err
}

// CredentialAccess is what the store knows of an admin or auditor
// certificate presented over mTLS.
type CredentialAccess struct {
	Recorded bool   // the store recorded this certificate
	Subject  string // its subject, when recorded
	Revoked  bool
	// Supersedes: it was issued by a renewal and older credentials of the
	// same subject are still unrevoked (Supersede revokes them).
	Supersedes bool
}

// CheckCredentialAccess reads, in one query, whether an admin or auditor
// certificate is recorded and revoked, and whether using it supersedes
// older credentials.
func (d *DB) CheckCredentialAccess(ctx context.Context, serial string) (CredentialAccess, error) {
	var a CredentialAccess
	var revokedAt, older int64
	var via string
	err := cached{d, nil}.QueryRowContext(ctx, d.q(sqlCredentialAccess), serial).Scan(&a.Subject, &revokedAt, &via, &older)
	if errors.Is(err, sql.ErrNoRows) {
		return CredentialAccess{}, nil
	}
	if err != nil {
		return CredentialAccess{}, fmt.Errorf("checking credential access: %w", err)
	}
	a.Recorded, a.Revoked = true, revokedAt != 0
	a.Supersedes = !a.Revoked && via == IssuedViaRenew && older > 0
	return a, nil
}

// Supersede revokes, as superseded, every unrevoked credential of the
// subject of serial issued before it: a renewed credential's first use
// retires the one it replaces. It returns the certificates it revoked.
func (d *DB) Supersede(ctx context.Context, serial string) ([]Certificate, error) {
	var out []Certificate
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if err := d.lockAdmins(ctx, tx); err != nil {
			return err
		}
		c, err := getCert(ctx, tx, d, serial)
		if err != nil {
			return err
		}
		if !c.RevokedAt.IsZero() {
			return fmt.Errorf("credential %s: %w", serial, ErrSuperseded)
		}
		out, err = queryAll(ctx, tx, "reading superseded credentials", d.q(`SELECT `+certCols+` FROM certificates WHERE subject = ? AND revoked_at = 0 AND issued_at < ?`),
			scanCert, c.Subject, ts(c.IssuedAt))
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, d.q(`UPDATE certificates SET revoked_at = ?, revoke_reason_code = ?, revoke_reason = ? WHERE subject = ? AND revoked_at = 0 AND issued_at < ?`),
			ts(d.now()), supersededReasonCode, "superseded", c.Subject, ts(c.IssuedAt))
		if err != nil {
			return fmt.Errorf("superseding credentials of %s: %w", c.Subject, err)
		}
		return nil
	})
	return out, err
}

// RevokeAdminCredentials revokes every unrevoked credential of name (admin
// or auditor) with an RFC 5280 reason, and returns them. ErrNotFound: name
// never held a credential; ErrConflict: all of them are already revoked;
// ErrLastAdmin: name holds the only live admin credential.
func (d *DB) RevokeAdminCredentials(ctx context.Context, name string, code int, reason string) ([]Certificate, error) {
	var out []Certificate
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if err := d.lockAdmins(ctx, tx); err != nil {
			return err
		}
		held, err := d.nameCredentials(ctx, tx, name)
		if err != nil {
			return err
		}
		if len(held) == 0 {
			return fmt.Errorf("no admin or auditor named %q: %w", name, ErrNotFound)
		}
		now := d.now()
		liveAdmin := false
		for _, c := range held {
			if c.RevokedAt.IsZero() {
				out = append(out, c)
				a := credentialOf(c, now)
				liveAdmin = liveAdmin || (a.Role == "admin" && a.Status == CredentialActive)
			}
		}
		if len(out) == 0 {
			return fmt.Errorf("every credential of %q is already revoked: %w", name, ErrConflict)
		}
		if liveAdmin {
			w, args := subjectRange("admin")
			var others int
			err := tx.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM certificates WHERE `+w+` AND subject != ? AND revoked_at = 0 AND not_after > ?`),
				append(args, adminSubject("admin", name), ts(now))...).Scan(&others)
			if err != nil {
				return fmt.Errorf("counting admins: %w", err)
			}
			if others == 0 {
				return fmt.Errorf("%q: %w", name, ErrLastAdmin)
			}
		}
		for _, role := range adminRoles {
			if err := revokeCerts(ctx, tx, d, adminSubject(role, name), code, reason, now); err != nil {
				return err
			}
		}
		for i := range out {
			out[i].RevokedAt, out[i].RevokeReasonCode, out[i].RevokeReason = now, code, reason
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// RecordExistingCredential records a certificate issued before the store
// recorded such certificates (the first admin of an older instance), unless
// its serial is recorded already. It reports whether it recorded it.
func (d *DB) RecordExistingCredential(ctx context.Context, c Certificate) (bool, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = c.NotBefore
	}
	res, err := d.db.ExecContext(ctx, d.q(`INSERT INTO certificates (serial, subject, key_sha256, not_before, not_after, issued_at, issued_via, issued_by, enroll_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '') ON CONFLICT (serial) DO NOTHING`),
		c.Serial, c.Subject, c.KeySHA256, ts(c.NotBefore), ts(c.NotAfter), ts(c.IssuedAt), c.IssuedVia, c.IssuedBy)
	if err != nil {
		return false, fmt.Errorf("recording certificate %s: %w", c.Serial, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}
