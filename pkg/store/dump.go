package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Backups (docs/OPERATIONS.md) dump the store logically: every table, row
// by row, as JSON arrays of the column values (Snapshot), loaded into an
// empty store of either dialect by a Loader. A SQLite store can be restored
// into PostgreSQL and back; the schema itself is not dumped but created by
// this binary's migrations at the dump's schema version.
//
// A row is a JSON array, one element per column: null, an integer, a
// string (valid UTF-8), true or false, or an object for what JSON cannot
// carry as is: {"bytes":"<base64>"} (BLOB/BYTEA), {"text":"<base64>"} (a
// string that is not valid UTF-8), {"float":"<decimal>"}.

var (
	// ErrNotEmpty: a restore's target store already holds data.
	ErrNotEmpty = errors.New("store is not empty")
	// ErrDump wraps errors of a dump's content (unknown tables or
	// columns, malformed rows).
	ErrDump = errors.New("bad store dump")
)

// TableInfo names a table and its columns, in the order its rows list them.
type TableInfo struct {
	Name    string   `json:"name"`
	Columns []string `json:"columns"`
}

// versionTable is goose's record of applied migrations: not dumped (a dump
// records the version; a restore migrates its target to it).
const versionTable = "goose_db_version"

// seedRows are the rows a schema migration inserts into a new store, by
// table: a store holding nothing else is empty, and a load replaces them.
var seedRows = map[string]string{
	"tuf_state": "timestamp_version = 0", // tufstate.go: the publish record before any publish
}

// Snapshot is one read-only transaction over a whole store, for a
// consistent dump while fosterd keeps writing: REPEATABLE READ on
// PostgreSQL, a WAL read transaction on SQLite. Not safe for concurrent use.
type Snapshot struct {
	d       *DB
	tx      *sql.Tx
	version int64
	tables  []TableInfo
}

// OpenSnapshot opens the store at dsn without migrating it and begins the
// snapshot. While the snapshot begins, it holds the TUF publish lock
// (tufstate.go; on SQLite the write lock), so no release or TUF publish is
// half done: quiet, if not nil, runs then, still under the lock and after
// the snapshot is taken, to read what must match it (the published
// timestamp.json). It waits at most PublishLockTimeout for a publish in
// progress.
func OpenSnapshot(ctx context.Context, dsn string, quiet func(context.Context) error) (_ *Snapshot, err error) {
	d, err := connect(ctx, dsn, true)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.db.Close()
		}
	}()
	unlock, err := d.lockPublishing(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var opts *sql.TxOptions
	if d.dialect == postgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := d.db.BeginTx(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("beginning the snapshot: %w", err)
	}
	s := &Snapshot{d: d, tx: tx}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	// The first read fixes the snapshot (both dialects).
	var v sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(version_id) FROM `+versionTable+` WHERE is_applied`).Scan(&v); err != nil {
		return nil, fmt.Errorf("reading the store's schema version (is it a Foster store?): %w", err)
	}
	s.version = v.Int64
	if quiet != nil {
		if err := quiet(ctx); err != nil {
			return nil, err
		}
	}
	unlock()
	names, err := d.tableNames(ctx, tx)
	if err != nil {
		return nil, err
	}
	if names, err = d.fkOrder(ctx, tx, names); err != nil {
		return nil, err
	}
	for _, n := range names {
		cols, err := columns(ctx, tx, n)
		if err != nil {
			return nil, err
		}
		s.tables = append(s.tables, TableInfo{Name: n, Columns: cols})
	}
	return s, nil
}

// lockPublishing takes the TUF publish lock and returns its release, which
// may be called more than once.
func (d *DB) lockPublishing(ctx context.Context, dsn string) (func(), error) {
	var tx *sql.Tx
	var closeDB func() error
	if d.dialect == postgres {
		var err error
		if tx, err = d.db.BeginTx(ctx, nil); err != nil {
			return nil, fmt.Errorf("taking the TUF publish lock: %w", err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d`, PublishLockTimeout.Milliseconds())); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("taking the TUF publish lock: %w", err)
		}
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT timestamp_version FROM tuf_state WHERE id = 1 FOR UPDATE`).Scan(&n); err != nil {
			tx.Rollback()
			return nil, lockError(err)
		}
	} else {
		// A writer's connection (BEGIN IMMEDIATE) beside the read-only one.
		w, err := connect(ctx, dsn, false)
		if err != nil {
			return nil, err
		}
		// SQLite's busy handler is not fair: retry, as a publish would wait.
		deadline := time.Now().Add(PublishLockTimeout)
		for {
			if tx, err = w.db.BeginTx(ctx, nil); err == nil {
				break
			}
			if !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) || ctx.Err() != nil {
				w.db.Close()
				return nil, fmt.Errorf("taking the store's write lock: %w", err)
			}
		}
		closeDB = w.db.Close
	}
	done := false
	return func() {
		if done {
			return
		}
		done = true
		tx.Rollback()
		if closeDB != nil {
			closeDB()
		}
	}, nil
}

// SchemaVersion is the store's schema version (goose_db_version).
func (s *Snapshot) SchemaVersion() int64 { return s.version }

// Dialect is "sqlite" or "postgres".
func (s *Snapshot) Dialect() string { return s.d.dialectName() }

// Tables are the store's tables, each after the tables its foreign keys
// reference (the order a Loader needs).
func (s *Snapshot) Tables() []TableInfo { return slices.Clone(s.tables) }

// Rows calls fn with every row of table, encoded (see the package's dump
// format); fn must not keep row. It returns the number of rows.
func (s *Snapshot) Rows(ctx context.Context, table string, fn func(row []byte) error) (int64, error) {
	i := slices.IndexFunc(s.tables, func(t TableInfo) bool { return t.Name == table })
	if i < 0 {
		return 0, fmt.Errorf("%w: no table %q", ErrDump, table)
	}
	cols := s.tables[i].Columns
	q := "SELECT " + quoteList(cols) + " FROM " + quoteIdent(table)
	rows, err := s.tx.QueryContext(ctx, q)
	if err != nil {
		return 0, fmt.Errorf("dumping %s: %w", table, err)
	}
	defer rows.Close()
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var n int64
	var buf []byte
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, fmt.Errorf("dumping %s: %w", table, err)
		}
		buf, err = appendRow(buf[:0], vals, cols)
		if err != nil {
			return n, fmt.Errorf("dumping %s: %w", table, err)
		}
		if err := fn(buf); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("dumping %s: %w", table, err)
	}
	return n, nil
}

// Close ends the snapshot and closes the database.
func (s *Snapshot) Close() error {
	s.tx.Rollback()
	return s.d.db.Close()
}

func (d *DB) dialectName() string {
	if d.dialect == postgres {
		return "postgres"
	}
	return "sqlite"
}

// tableNames lists the store's tables, sorted, without goose's.
func (d *DB) tableNames(ctx context.Context, q rowsQuerier) ([]string, error) {
	query := `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`
	if d.dialect == postgres {
		query = `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`
	}
	names, err := queryAll(ctx, q, "listing tables", query, func(s scanner) (string, error) {
		var n string
		return n, s.Scan(&n)
	})
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(names, func(n string) bool { return n == versionTable }), nil
}

// fkOrder orders names so that every table comes after those its foreign
// keys reference (ties by name).
func (d *DB) fkOrder(ctx context.Context, q rowsQuerier, names []string) ([]string, error) {
	query := `SELECT m.name, f."table" FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'`
	if d.dialect == postgres {
		query = `SELECT c.relname, p.relname FROM pg_constraint k
			JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid
			WHERE k.contype = 'f' AND k.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())`
	}
	edges, err := queryAll(ctx, q, "reading foreign keys", query, func(s scanner) ([2]string, error) {
		var e [2]string
		return e, s.Scan(&e[0], &e[1])
	})
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for _, e := range edges {
		if e[0] != e[1] {
			deps[e[0]] = append(deps[e[0]], e[1])
		}
	}
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("foreign keys form a cycle through %s", n)
		case 2:
			return nil
		}
		state[n] = 1
		for _, p := range deps[n] {
			if slices.Contains(names, p) {
				if err := visit(p); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		out = append(out, n)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func columns(ctx context.Context, q rowsQuerier, table string) ([]string, error) {
	rows, err := q.QueryContext(ctx, "SELECT * FROM "+quoteIdent(table)+" LIMIT 0")
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", table, err)
	}
	defer rows.Close()
	return rows.Columns()
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quoteIdent(n)
	}
	return strings.Join(q, ", ")
}

// appendRow appends the JSON encoding of one row.
func appendRow(b []byte, vals []any, cols []string) ([]byte, error) {
	b = append(b, '[')
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		switch x := v.(type) {
		case nil:
			b = append(b, "null"...)
		case int64:
			b = strconv.AppendInt(b, x, 10)
		case bool:
			b = strconv.AppendBool(b, x)
		case float64:
			b = append(b, `{"float":"`...)
			b = strconv.AppendFloat(b, x, 'g', -1, 64)
			b = append(b, `"}`...)
		case []byte:
			b = append(b, `{"bytes":"`...)
			b = base64.StdEncoding.AppendEncode(b, x)
			b = append(b, `"}`...)
		case string:
			if !utf8.ValidString(x) {
				b = append(b, `{"text":"`...)
				b = base64.StdEncoding.AppendEncode(b, []byte(x))
				b = append(b, `"}`...)
				continue
			}
			s, err := json.Marshal(x)
			if err != nil {
				return nil, err
			}
			b = append(b, s...)
		default:
			return nil, fmt.Errorf("column %s: values of type %T are not supported in dumps", cols[i], v)
		}
	}
	return append(b, ']'), nil
}

// decodeRow decodes a row of n values (see appendRow).
func decodeRow(row []byte, n int) ([]any, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(row, &raw); err != nil {
		return nil, fmt.Errorf("%w: row is not a JSON array: %v", ErrDump, err)
	}
	if len(raw) != n {
		return nil, fmt.Errorf("%w: row has %d values, the table %d columns", ErrDump, len(raw), n)
	}
	out := make([]any, n)
	for i, r := range raw {
		v, err := decodeValue(r)
		if err != nil {
			return nil, fmt.Errorf("%w: value %d: %v", ErrDump, i+1, err)
		}
		out[i] = v
	}
	return out, nil
}

func decodeValue(r json.RawMessage) (any, error) {
	if len(r) == 0 {
		return nil, errors.New("empty")
	}
	switch r[0] {
	case 'n':
		return nil, nil
	case 't', 'f':
		var b bool
		err := json.Unmarshal(r, &b)
		return b, err
	case '"':
		var s string
		err := json.Unmarshal(r, &s)
		return s, err
	case '{':
		var o map[string]string
		if err := json.Unmarshal(r, &o); err != nil || len(o) != 1 {
			return nil, fmt.Errorf("want one of {\"bytes\"|\"text\"|\"float\": ...}")
		}
		for k, v := range o {
			switch k {
			case "bytes":
				return base64.StdEncoding.DecodeString(v)
			case "text":
				b, err := base64.StdEncoding.DecodeString(v)
				return string(b), err
			case "float":
				x, err := strconv.ParseFloat(v, 64)
				if err == nil && (math.IsNaN(x) || math.IsInf(x, 0)) {
					return nil, fmt.Errorf("float %q is not finite", v)
				}
				return x, err
			}
			return nil, fmt.Errorf("unknown value kind %q", k)
		}
	}
	return strconv.ParseInt(string(r), 10, 64)
}

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
