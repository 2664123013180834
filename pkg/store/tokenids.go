package store

import (
	"context"
	"database/sql"
	"fmt"
)

// used_token_ids records every single-use token id (station enrollment
// tokens, renew-expired tokens) with its issuer. Ids are chosen by their
// issuers, so one issuer's id must never spend another's: the table is
// keyed by (issuer, jti). Stores created before that were keyed by jti
// alone; migrateTokenIDs rebuilds such a table with the new key, keeping
// every row.

const tokenIDsTable = `CREATE TABLE used_token_ids_v2 (
	issuer TEXT NOT NULL,
	jti TEXT NOT NULL,
	expires_at BIGINT NOT NULL,
	used_at BIGINT NOT NULL,
	PRIMARY KEY (issuer, jti)
)`

// tokenIDKeyColumns counts the columns of used_token_ids' primary key.
func (d *DB) tokenIDKeyColumns(ctx context.Context, q querier) (int, error) {
	query := `SELECT COUNT(*) FROM pragma_table_info('used_token_ids') WHERE pk > 0`
	if d.dialect == postgres {
		query = `SELECT COUNT(*) FROM information_schema.table_constraints tc
			JOIN information_schema.key_column_usage k ON k.constraint_name = tc.constraint_name
				AND k.table_schema = tc.table_schema AND k.table_name = tc.table_name
			WHERE tc.table_schema = current_schema() AND tc.table_name = 'used_token_ids' AND tc.constraint_type = 'PRIMARY KEY'`
	}
	var n int
	if err := q.QueryRowContext(ctx, query).Scan(&n); err != nil {
		return 0, fmt.Errorf("inspecting used_token_ids: %w", err)
	}
	return n, nil
}

// migrateTokenIDs re-keys a used_token_ids table keyed by jti alone by
// (issuer, jti), in one transaction: create the new table, copy every row,
// drop the old one, rename. Replicas starting together serialise on the
// table lock (PostgreSQL) or the write lock (SQLite) and re-check inside.
func (d *DB) migrateTokenIDs(ctx context.Context) error {
	if n, err := d.tokenIDKeyColumns(ctx, d.db); err != nil || n == 2 {
		return err
	}
	return d.tx(ctx, func(tx *sql.Tx) error {
		if d.dialect == postgres {
			if _, err := tx.ExecContext(ctx, `LOCK TABLE used_token_ids IN ACCESS EXCLUSIVE MODE`); err != nil {
				return fmt.Errorf("locking used_token_ids: %w", err)
			}
		}
		if n, err := d.tokenIDKeyColumns(ctx, tx); err != nil || n == 2 {
			return err
		}
		for _, stmt := range []string{
			`DROP TABLE IF EXISTS used_token_ids_v2`,
			tokenIDsTable,
			`INSERT INTO used_token_ids_v2 (issuer, jti, expires_at, used_at) SELECT issuer, jti, expires_at, used_at FROM used_token_ids`,
			`DROP TABLE used_token_ids`,
			`ALTER TABLE used_token_ids_v2 RENAME TO used_token_ids`,
		} {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("re-keying used_token_ids by (issuer, jti): %w", err)
			}
		}
		return nil
	})
}
