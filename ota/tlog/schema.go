package tlog

import (
	"context"
	"fmt"
	"strings"

	"github.com/foster-ota/foster/pkg/store"
)

// The log's tables, kept in the store's database next to fosterd's own.
//
//	tlog_meta        one row: the log's origin and committed tree size. Each
//	                 append updates it in the same transaction, and PostgreSQL
//	                 writers lock it (FOR UPDATE) so that replicas sharing one
//	                 database still append one batch at a time.
//	tlog_leaves      leaf index -> leaf data and its RFC 6962 leaf hash
//	                 (level-0 node). leaf_hash is indexed for LeafIndex.
//	tlog_nodes       (level >= 1, index) -> hash of every perfect subtree,
//	                 written once when its last leaf is appended and never
//	                 changed. Any inclusion or consistency proof, and the
//	                 compact range of any size, is O(log n) point reads here.
//	tlog_checkpoints tree size -> root and the signed checkpoint note, one
//	                 per committed batch; the largest is the latest.
//
// About one node row per leaf on average (n-1 internal nodes in total, minus
// those not yet complete).
const schema = `
CREATE TABLE IF NOT EXISTS tlog_meta (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	origin TEXT NOT NULL,
	size BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tlog_leaves (
	idx @IDX@,
	leaf_hash @BLOB@ NOT NULL,
	data @BLOB@ NOT NULL
);
CREATE INDEX IF NOT EXISTS tlog_leaves_hash ON tlog_leaves (leaf_hash);
CREATE TABLE IF NOT EXISTS tlog_nodes (
	level INTEGER NOT NULL,
	idx BIGINT NOT NULL,
	hash @BLOB@ NOT NULL,
	PRIMARY KEY (level, idx)
)@NOROWID@;
CREATE TABLE IF NOT EXISTS tlog_checkpoints (
	size BIGINT PRIMARY KEY,
	root @BLOB@ NOT NULL,
	note @BLOB@ NOT NULL,
	created_at BIGINT NOT NULL
)
`

// Migrate creates the log's tables in db if they are missing, without
// creating a log (Open does both): a restore loads a backed-up log into
// them.
func Migrate(ctx context.Context, db *store.DB) error { return migrate(ctx, db) }

func migrate(ctx context.Context, db *store.DB) error {
	r := strings.NewReplacer(
		"@IDX@", "INTEGER PRIMARY KEY", // SQLite: the rowid itself
		"@BLOB@", "BLOB",
		"@NOROWID@", " WITHOUT ROWID", // SQLite: clustered on (level, idx)
	)
	if db.IsPostgres() {
		r = strings.NewReplacer("@IDX@", "BIGINT PRIMARY KEY", "@BLOB@", "BYTEA", "@NOROWID@", "")
	}
	tx, err := db.SQL().BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrating transparency log schema: %w", err)
	}
	defer tx.Rollback()
	if db.IsPostgres() {
		// Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's
		// catalogs when two replicas start together: serialize them.
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(7216501)"); err != nil {
			return fmt.Errorf("migrating transparency log schema: %w", err)
		}
	}
	for _, stmt := range strings.Split(r.Replace(schema), ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrating transparency log schema: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrating transparency log schema: %w", err)
	}
	return nil
}
