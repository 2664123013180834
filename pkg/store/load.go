package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Loader loads a dump into an empty store in one transaction: nothing is
// visible, and a failed load leaves only empty tables, until Commit. Not
// safe for concurrent use.
type Loader struct {
	d         *DB
	tx        *sql.Tx
	tables    map[string][]string // the target's tables and their columns
	started   map[string]bool
	committed bool
}

// OpenLoader checks that the store at dsn is empty (ErrNotEmpty
// otherwise: it then changes nothing), creates its schema at version (a
// dump's SchemaVersion; ErrSchemaTooNew if above this binary's), calls
// prepare (if not nil) to create tables kept by other packages (the
// transparency log), and begins the load.
func OpenLoader(ctx context.Context, dsn string, version int64, prepare func(context.Context, *DB) error) (_ *Loader, err error) {
	if version < 1 {
		return nil, fmt.Errorf("%w: schema version %d", ErrDump, version)
	}
	if known := SchemaVersion(); version > known {
		return nil, fmt.Errorf("%w: the backup is of schema version %d, this build knows versions up to %d; restore it with the release that made it (or a newer one)", ErrSchemaTooNew, version, known)
	}
	if err := CheckEmpty(ctx, dsn, version); err != nil {
		return nil, err
	}
	d, err := connect(ctx, dsn, false)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.db.Close()
		}
	}()
	if err := d.migrateTo(ctx, version); err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(ctx, d); err != nil {
			return nil, err
		}
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("beginning the load: %w", err)
	}
	l := &Loader{d: d, tx: tx, tables: map[string][]string{}, started: map[string]bool{}}
	names, err := d.tableNames(ctx, tx)
	if err != nil {
		tx.Rollback()
		return nil, err
	}
	for _, n := range names {
		cols, err := columns(ctx, tx, n)
		if err != nil {
			tx.Rollback()
			return nil, err
		}
		l.tables[n] = cols
	}
	return l, nil
}

// CheckEmpty returns nil if the store at dsn holds no data (no file, no
// tables, or empty tables) and, if it has a schema, is at version;
// ErrNotEmpty otherwise. It changes nothing.
func CheckEmpty(ctx context.Context, dsn string, version int64) error {
	if !isPostgresDSN(dsn) {
		path, err := sqlitePath(dsn)
		if err != nil {
			return err
		}
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	d, err := connect(ctx, dsn, true)
	if err != nil {
		return err
	}
	defer d.db.Close()
	names, err := d.tableNames(ctx, d.db)
	if err != nil {
		return err
	}
	for _, n := range names {
		q := "SELECT 1 FROM " + quoteIdent(n)
		if pred, ok := seedRows[n]; ok {
			q += " WHERE NOT (" + pred + ")"
		}
		var one int
		err := d.db.QueryRowContext(ctx, q+" LIMIT 1").Scan(&one)
		if err == nil {
			return fmt.Errorf("%w: table %s has rows", ErrNotEmpty, n)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("checking that the store is empty: %w", err)
		}
	}
	var has int
	err = d.db.QueryRowContext(ctx, "SELECT 1 FROM "+versionTable+" LIMIT 1").Scan(&has)
	if err != nil {
		return nil // no version table (or no row in it): no schema yet
	}
	current, err := d.StoredSchemaVersion(ctx)
	if err != nil {
		return err
	}
	if current != version {
		return fmt.Errorf("%w: its tables are empty but at schema version %d, the backup's is %d: restore into a store without tables", ErrNotEmpty, current, version)
	}
	return nil
}

// Table starts loading rows of table, which must exist in the target with
// every one of columns. A table may be started more than once (a dump in
// parts); the first start removes the rows migrations seeded.
func (l *Loader) Table(ctx context.Context, table string, columns []string) (*TableLoader, error) {
	have, ok := l.tables[table]
	if !ok {
		return nil, fmt.Errorf("%w: table %q does not exist in this schema", ErrDump, table)
	}
	if len(columns) == 0 {
		return nil, fmt.Errorf("%w: table %q: no columns", ErrDump, table)
	}
	for i, c := range columns {
		if !slices.Contains(have, c) || slices.Contains(columns[:i], c) {
			return nil, fmt.Errorf("%w: table %q has no column %q (or it is listed twice)", ErrDump, table, c)
		}
	}
	if !l.started[table] {
		if _, ok := seedRows[table]; ok {
			if _, err := l.tx.ExecContext(ctx, "DELETE FROM "+quoteIdent(table)); err != nil {
				return nil, fmt.Errorf("loading %s: %w", table, err)
			}
		}
		l.started[table] = true
	}
	// Bounded batches: SQLite allows 32766 parameters per statement.
	batch := max(1, min(200, 30000/len(columns)))
	return &TableLoader{l: l, table: table, columns: slices.Clone(columns), batch: batch}, nil
}

// TableLoader inserts the rows of one table in batches. Not safe for
// concurrent use.
type TableLoader struct {
	l       *Loader
	table   string
	columns []string
	batch   int
	pending []any
	// pendingBytes bounds the memory a batch holds (maxBatchBytes).
	pendingBytes int
	rows         int64
}

// maxBatchBytes bounds the encoded rows one insert batch holds.
const maxBatchBytes = 4 << 20

// Add decodes row (a row of Snapshot.Rows) and inserts it, in a batch.
func (t *TableLoader) Add(ctx context.Context, row []byte) error {
	vals, err := decodeRow(row, len(t.columns))
	if err != nil {
		return fmt.Errorf("table %s row %d: %w", t.table, t.rows+1, err)
	}
	t.pending = append(t.pending, vals...)
	t.pendingBytes += len(row)
	t.rows++
	if len(t.pending) >= t.batch*len(t.columns) || t.pendingBytes >= maxBatchBytes {
		return t.Flush(ctx)
	}
	return nil
}

// Flush inserts the rows added since the last flush.
func (t *TableLoader) Flush(ctx context.Context) error {
	if len(t.pending) == 0 {
		return nil
	}
	n := len(t.pending) / len(t.columns)
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(t.columns)), ", ") + ")"
	q := "INSERT INTO " + quoteIdent(t.table) + " (" + quoteList(t.columns) + ") VALUES " +
		strings.TrimSuffix(strings.Repeat(one+", ", n), ", ")
	if _, err := t.l.tx.ExecContext(ctx, t.l.d.q(q), t.pending...); err != nil {
		return fmt.Errorf("loading %s: %w", t.table, err)
	}
	t.pending, t.pendingBytes = t.pending[:0], 0
	return nil
}

// Rows is the number of rows added.
func (t *TableLoader) Rows() int64 { return t.rows }

// Commit makes the load durable: it moves PostgreSQL's id sequences past
// the loaded ids, commits, and migrates the store to this binary's schema
// version. Every TableLoader must have been flushed.
func (l *Loader) Commit(ctx context.Context) error {
	if l.d.dialect == postgres {
		if err := l.resetSequences(ctx); err != nil {
			return err
		}
	}
	if err := l.tx.Commit(); err != nil {
		return fmt.Errorf("committing the load: %w", err)
	}
	l.committed = true
	return l.d.migrate(ctx)
}

// resetSequences makes every serial column's next value follow the largest
// loaded one (SQLite's AUTOINCREMENT does this by itself).
func (l *Loader) resetSequences(ctx context.Context) error {
	cols, err := queryAll(ctx, l.tx, "reading id sequences", `SELECT table_name, column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'`, func(s scanner) ([2]string, error) {
		var c [2]string
		return c, s.Scan(&c[0], &c[1])
	})
	if err != nil {
		return err
	}
	for _, c := range cols {
		col := quoteIdent(c[1])
		q := `SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX(` + col + `), 1), MAX(` + col + `) IS NOT NULL) FROM ` + quoteIdent(c[0])
		if _, err := l.tx.ExecContext(ctx, q, quoteIdent(c[0]), c[1]); err != nil {
			return fmt.Errorf("moving the id sequence of %s.%s: %w", c[0], c[1], err)
		}
	}
	return nil
}

// Close rolls back what was not committed and closes the database.
func (l *Loader) Close() error {
	if !l.committed {
		l.tx.Rollback()
	}
	return l.d.db.Close()
}
