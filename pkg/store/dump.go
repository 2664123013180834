package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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
	"key_set":   "version = 0",           // keyset.go: the online key record before any rotation
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
