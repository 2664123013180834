package store

import (
	"context"
	"database/sql"
	"fmt"
)

// The hot paths' statements (enrollment and its early check, attestation
// ingest, the checks every mTLS request makes, the group commit's
// savepoints): parsing the SQL each time cost more than running it, so they
// are prepared once, when the store opens (prepareHot), and run through
// cached. Writing them once here keeps the call sites and what Open prepares
// the same text.
const (
	sqlModel       = `SELECT name, hardware_ids, cert_validity, created_at FROM models WHERE name = ?`
	sqlDevice      = `SELECT ` + deviceCols + ` FROM devices WHERE id = ?`                  // + lock
	sqlToken       = `SELECT serial, model, expires_at, used_at FROM tokens WHERE hash = ?` // + lock
	sqlStation     = `SELECT ` + stationCols + ` FROM stations WHERE name = ?`
	sqlTokenIDSeen = `SELECT 1 FROM used_token_ids WHERE issuer = ? AND jti = ?`
	sqlUseTokenID  = `INSERT INTO used_token_ids (issuer, jti, expires_at, used_at) VALUES (?, ?, ?, ?)`

	sqlReenrollDevice = `UPDATE devices SET status = ?, cert_serial = ?, cert_not_after = ?, cert_pem = ?, enrolled_at = ?, seen_day = ?, key_sha256 = ?, reprovision_at = 0, reprovision_by = '', revoked_at = 0, revoke_reason = '', replaced_cert_serial = ?, hardware_id = ? WHERE id = ?`
	sqlEnrollDevice   = `INSERT INTO devices (id, serial, model, status, cert_serial, cert_not_after, cert_pem, enrolled_at, seen_day, key_sha256, hardware_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqlInsertCert     = `INSERT INTO certificates (serial, subject, key_sha256, not_before, not_after, issued_at, issued_via, issued_by, enroll_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqlSpendToken     = `UPDATE tokens SET used_at = ? WHERE hash = ? AND used_at = 0`
	sqlChargeStation  = `UPDATE stations SET used = used + 1 WHERE name = ? AND used < quota AND status = ? AND not_before <= ? AND not_after > ?`

	sqlLastSequence      = `SELECT last_sequence FROM devices WHERE id = ?` // + lock
	sqlInsertAttestation = `INSERT INTO attestations (device_id, sequence, outcome, target_path, sha256, version, counter, envelope, received_at, leaf_index, cert_serial) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`
	// seen_day (the day of the device's last sign of life) changes once a
	// day at most, so PostgreSQL can still update the row in place (HOT):
	// it is in an index, last_attestation_at is not (fleet.go).
	sqlAttested          = `UPDATE devices SET last_sequence = ?, last_attestation_at = ?, seen_day = CASE WHEN seen_day > ? THEN seen_day ELSE ? END WHERE id = ?`
	sqlAttestedInstalled = `UPDATE devices SET last_sequence = ?, last_attestation_at = ?, seen_day = CASE WHEN seen_day > ? THEN seen_day ELSE ? END,
		installed_version = ?, installed_target = ?, installed_counter = ?,
		installed_at = CASE WHEN installed_counter = ? AND installed_at != 0 THEN installed_at ELSE ? END WHERE id = ?`

	sqlCertRevokedAt    = `SELECT revoked_at FROM certificates WHERE serial = ?`
	sqlCredentialAccess = `SELECT c.subject, c.revoked_at, c.issued_via,
		(SELECT COUNT(*) FROM certificates o WHERE o.subject = c.subject AND o.revoked_at = 0 AND o.issued_at < c.issued_at)
		FROM certificates c WHERE c.serial = ?`
	sqlDeviceAccess = `SELECT d.status, d.cert_serial, d.replaced_cert_serial, c.revoked_at, c.revoke_reason_code
		FROM devices d LEFT JOIN certificates c ON c.serial = ? WHERE d.id = ?`
	sqlPublishedTUF = `SELECT timestamp_version, timestamp_etag FROM tuf_state WHERE id = 1`

	sqlSavepoint           = `SAVEPOINT foster_w`
	sqlRollbackToSavepoint = `ROLLBACK TO SAVEPOINT foster_w`
	sqlReleaseSavepoint    = `RELEASE SAVEPOINT foster_w`
)

// hotQueries are the dialect's texts of the statements prepared at Open,
// with and without the row lock where the query takes one.
func (d *DB) hotQueries() []string {
	lock := d.forUpdate()
	qs := []string{
		sqlModel, sqlDevice, sqlDevice + lock, sqlToken, sqlToken + lock, sqlStation, sqlTokenIDSeen, sqlUseTokenID,
		sqlReenrollDevice, sqlEnrollDevice, sqlInsertCert, sqlSpendToken, sqlChargeStation,
		sqlLastSequence + lock, sqlInsertAttestation, sqlAttested, sqlAttestedInstalled,
		sqlCertRevokedAt, sqlCredentialAccess, sqlDeviceAccess, sqlPublishedTUF,
		sqlSavepoint, sqlRollbackToSavepoint, sqlReleaseSavepoint,
	}
	for i, q := range qs {
		qs[i] = d.q(q)
	}
	return qs
}

// prepareHot prepares the hot paths' statements on the pool. Open runs it
// after migrating (the statements name the migrated columns) and outside
// any transaction: preparing on the pool from inside one could wait for a
// connection held by a transaction waiting for ours.
func (d *DB) prepareHot(ctx context.Context) error {
	stmts, err := prepareAll(ctx, d.db, d.hotQueries())
	if err != nil {
		return err
	}
	d.stmts = stmts
	return nil
}

// prepareAll prepares each distinct query; on a failure it closes what it
// prepared and names the query that failed.
func prepareAll(ctx context.Context, db *sql.DB, queries []string) (map[string]*sql.Stmt, error) {
	stmts := make(map[string]*sql.Stmt, len(queries))
	for _, q := range queries {
		if _, ok := stmts[q]; ok {
			continue
		}
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			closeStmts(stmts)
			return nil, fmt.Errorf("store: preparing %.80q: %w", q, err)
		}
		stmts[q] = st
	}
	return stmts, nil
}

func closeStmts(stmts map[string]*sql.Stmt) {
	for _, st := range stmts {
		st.Close()
	}
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// runner is a *sql.Tx, a *sql.DB or a cached one of them.
type runner interface {
	querier
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// cached runs queries (already rewritten for the dialect) through the
// statements prepared at Open, inside tx (tx.StmtContext) or, tx nil, on
// the pool. A query Open did not prepare runs unprepared.
type cached struct {
	d  *DB
	tx *sql.Tx
}

func (c cached) stmt(ctx context.Context, query string) *sql.Stmt {
	st, ok := c.d.stmts[query]
	if !ok {
		if c.d.unprepared != nil {
			c.d.unprepared(query)
		}
		return nil
	}
	if c.tx != nil {
		return c.tx.StmtContext(ctx, st)
	}
	return st
}

func (c cached) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := c.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	if c.tx != nil {
		return c.tx.QueryRowContext(ctx, query, args...)
	}
	return c.d.db.QueryRowContext(ctx, query, args...)
}

func (c cached) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := c.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	if c.tx != nil {
		return c.tx.ExecContext(ctx, query, args...)
	}
	return c.d.db.ExecContext(ctx, query, args...)
}
