package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

type dialect int

const (
	sqlite dialect = iota
	postgres
)

// DB is the database/sql implementation of the store. Safe for concurrent use.
type DB struct {
	db      *sql.DB
	dialect dialect
	now     func() time.Time
	group   group // concurrent enrollments' group commit (group.go)

	// The hot paths' statements by dialect text, prepared in Open and
	// read-only after it (see cached). unprepared, when set (tests), hears
	// of a query cached runs without a prepared statement.
	stmts      map[string]*sql.Stmt
	unprepared func(query string)

	models     sync.Map     // name -> cachedModel (see GetModel)
	modelCount atomic.Int64 // models cached, bounded by maxCachedModels
	rolloutMu  sync.Mutex   // UpdateRollout on SQLite (rollouts.go)
}

// Open opens the store named by dsn and migrates its schema (migrate.go):
//
//	sqlite:/path/foster.db | /path/foster.db   embedded SQLite (WAL, busy timeout 5 s)
//	postgres://user@host:5432/db?sslmode=disable
func Open(ctx context.Context, dsn string) (*DB, error) {
	d, err := connect(ctx, dsn, false)
	if err != nil {
		return nil, err
	}
	if err := d.migrate(ctx); err != nil {
		d.db.Close()
		return nil, err
	}
	if err := d.prepareHot(ctx); err != nil {
		d.db.Close()
		return nil, err
	}
	return d, nil
}

// connect opens the database named by dsn (see Open) and checks that it
// answers, without migrating it. readOnly (backups of a store that a
// running fosterd owns): a SQLite file must exist already, its
// transactions are deferred and its connections refuse writes.
func connect(ctx context.Context, dsn string, readOnly bool) (*DB, error) {
	var d *DB
	switch {
	case isPostgresDSN(dsn):
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("opening postgres: %w", err)
		}
		// As many idle connections as open ones: database/sql keeps only 2
		// idle by default and closes the rest after each use, so under load
		// every request forked a new PostgreSQL backend and prepared the hot
		// statements again (9,524 backends for 10,000 devices in the fleet
		// simulator, docs/BENCHMARKS.md).
		db.SetMaxOpenConns(16)
		db.SetMaxIdleConns(16)
		d = &DB{db: db, dialect: postgres}
	default:
		abs, err := sqlitePath(dsn)
		if err != nil {
			return nil, err
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(5000)")
		if readOnly {
			if _, err := os.Stat(abs); err != nil {
				return nil, fmt.Errorf("store: %w", err)
			}
			q.Add("_pragma", "query_only(1)")
			q.Set("_txlock", "deferred")
		} else {
			if err := createPrivate(abs); err != nil {
				return nil, err
			}
			q.Add("_pragma", "journal_mode(WAL)")
			q.Add("_pragma", "synchronous(FULL)")
			q.Add("_pragma", "foreign_keys(1)")
			q.Set("_txlock", "immediate")
		}
		db, err := sql.Open("sqlite", "file:"+abs+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("opening sqlite %s: %w", abs, err)
		}
		// One writer at a time is SQLite's model; a small pool keeps readers concurrent.
		db.SetMaxOpenConns(4)
		db.SetMaxIdleConns(4) // kept open, as for PostgreSQL
		d = &DB{db: db, dialect: sqlite}
	}
	d.now = func() time.Time { return time.Now().UTC() }
	if err := d.db.PingContext(ctx); err != nil {
		d.db.Close()
		return nil, fmt.Errorf("connecting to store: %w", err)
	}
	return d, nil
}

func isPostgresDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// sqlitePath is the absolute path of a SQLite DSN.
func sqlitePath(dsn string) (string, error) {
	path := strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite://"), "sqlite:")
	if path == "" {
		return "", errors.New("store: empty sqlite path")
	}
	return filepath.Abs(path)
}

// Close closes the prepared statements and the database.
func (d *DB) Close() error {
	closeStmts(d.stmts)
	return d.db.Close()
}

// Ping checks that the database answers (fosterd's /readyz).
func (d *DB) Ping(ctx context.Context) error {
	if err := d.db.PingContext(ctx); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// SetClock replaces the clock (tests).
func (d *DB) SetClock(now func() time.Time) { d.now = now }

const schema = `
CREATE TABLE IF NOT EXISTS models (
	name TEXT PRIMARY KEY,
	hardware_ids TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
	hash TEXT PRIMARY KEY,
	serial TEXT NOT NULL,
	model TEXT NOT NULL REFERENCES models(name),
	expires_at BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	used_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
	id TEXT PRIMARY KEY,
	serial TEXT NOT NULL,
	model TEXT NOT NULL REFERENCES models(name),
	status TEXT NOT NULL,
	cert_serial TEXT NOT NULL,
	cert_not_after BIGINT NOT NULL,
	cert_pem TEXT NOT NULL,
	enrolled_at BIGINT NOT NULL,
	installed_version TEXT NOT NULL DEFAULT '',
	installed_target TEXT NOT NULL DEFAULT '',
	installed_counter BIGINT NOT NULL DEFAULT 0,
	last_attestation_at BIGINT NOT NULL DEFAULT 0,
	last_sequence BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS releases (
	id @ID@,
	model TEXT NOT NULL REFERENCES models(name),
	version TEXT NOT NULL,
	counter BIGINT NOT NULL,
	target_path TEXT NOT NULL UNIQUE,
	sha256 TEXT NOT NULL,
	length BIGINT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	UNIQUE (model, version),
	UNIQUE (model, counter)
);
CREATE TABLE IF NOT EXISTS attestations (
	id @ID@,
	device_id TEXT NOT NULL REFERENCES devices(id),
	sequence BIGINT NOT NULL,
	outcome TEXT NOT NULL,
	target_path TEXT NOT NULL,
	sha256 TEXT NOT NULL,
	version TEXT NOT NULL,
	counter BIGINT NOT NULL,
	envelope TEXT NOT NULL,
	received_at BIGINT NOT NULL,
	UNIQUE (device_id, sequence)
);
CREATE TABLE IF NOT EXISTS audit_events (
	id @ID@,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	detail TEXT NOT NULL,
	at BIGINT NOT NULL
);
`

// execSchema runs the ";"-separated statements of schema, with @ID@ as the
// dialect's auto-increment primary key; what names the schema in errors.
func (d *DB) execSchema(ctx context.Context, what, schema string) error {
	id := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if d.dialect == postgres {
		id = "BIGSERIAL PRIMARY KEY"
	}
	for _, stmt := range strings.Split(strings.ReplaceAll(schema, "@ID@", id), ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := d.db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrating %s: %w", what, err)
		}
	}
	return nil
}

// baseline is schema migration 1: it creates a new store, and brings a
// store created before schema versions were recorded (by any earlier
// fosterd) to the same shape; every step is idempotent. Frozen: schema
// changes go in a new numbered migration (migrate.go).
func (d *DB) baseline(ctx context.Context) error {
	if err := d.execSchema(ctx, "store schema", schema); err != nil {
		return err
	}
	// Per-model device certificate lifetime in seconds (0: instance default).
	if err := d.addColumn(ctx, "models", "cert_validity", "BIGINT NOT NULL DEFAULT 0"); err != nil {
		return err
	}
	if err := d.migrateIdentity(ctx); err != nil {
		return err
	}
	if err := d.migrateTUFState(ctx); err != nil {
		return err
	}
	if err := d.migrateDeviceSerial(ctx); err != nil {
		return err
	}
	if err := d.migrateAttestations(ctx); err != nil {
		return err
	}
	return d.migrateRollouts(ctx)
}

// q rewrites ? placeholders for PostgreSQL.
func (d *DB) q(query string) string {
	if d.dialect != postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromTS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func isUnique(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "UNIQUE constraint") || strings.Contains(s, "SQLSTATE 23505") || strings.Contains(s, "duplicate key")
}

func (d *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// --- models

// CreateModel registers a device model.
func (d *DB) CreateModel(ctx context.Context, m Model) (Model, error) {
	if m.HardwareIDs == nil {
		m.HardwareIDs = []string{}
	}
	if m.CertValiditySeconds < 0 {
		return Model{}, fmt.Errorf("model %q: negative certificate validity", m.Name)
	}
	m.CreatedAt = d.now()
	hw, _ := json.Marshal(m.HardwareIDs)
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO models (name, hardware_ids, cert_validity, created_at) VALUES (?, ?, ?, ?)`),
		m.Name, string(hw), m.CertValiditySeconds, ts(m.CreatedAt))
	if isUnique(err) {
		return Model{}, fmt.Errorf("model %q: %w", m.Name, ErrConflict)
	}
	if err != nil {
		return Model{}, fmt.Errorf("creating model: %w", err)
	}
	return m, nil
}

// GetModel returns a model or ErrNotFound.
//
// Every enrollment reads its model, and models change rarely (UpdateModel
// adds or removes hardware ids), so a model read is kept in memory for
// modelCacheTTL: UpdateModel drops it from this process's cache at once,
// and other fosterd sharing the database see the change within the TTL.
func (d *DB) GetModel(ctx context.Context, name string) (Model, error) {
	if v, ok := d.models.Load(name); ok {
		c := v.(cachedModel)
		if time.Since(c.at) < modelCacheTTL {
			m := c.m
			m.HardwareIDs = slices.Clone(m.HardwareIDs)
			return m, nil
		}
	}
	var m Model
	var hw string
	var at int64
	// Prepared at Open: every enrollment reads its model.
	err := cached{d, nil}.QueryRowContext(ctx, d.q(sqlModel), name).Scan(&m.Name, &hw, &m.CertValiditySeconds, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return Model{}, fmt.Errorf("model %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Model{}, fmt.Errorf("reading model: %w", err)
	}
	m.CreatedAt = fromTS(at)
	if err := json.Unmarshal([]byte(hw), &m.HardwareIDs); err != nil {
		return Model{}, fmt.Errorf("model %q: corrupt hardware ids: %w", name, err)
	}
	if _, known := d.models.Load(name); known || d.modelCount.Add(1) <= maxCachedModels {
		c := m
		c.HardwareIDs = slices.Clone(m.HardwareIDs)
		d.models.Store(name, cachedModel{m: c, at: time.Now()})
	}
	return m, nil
}

// cachedModel is a model as read at a time (GetModel).
type cachedModel struct {
	m  Model
	at time.Time
}

// modelCacheTTL bounds how long a model changed by another fosterd on the
// same database may be served from this one's cache.
const modelCacheTTL = 10 * time.Second

// MaxHardwareIDs bounds a model's hardware ids.
const MaxHardwareIDs = 64

// UpdateModel adds and then removes hardware ids of a model and returns the
// model as stored. Adding an id the model has, or removing one it lacks,
// changes nothing; the result may hold at most MaxHardwareIDs ids
// (ErrConflict otherwise). ErrNotFound if the model does not exist.
func (d *DB) UpdateModel(ctx context.Context, name string, add, remove []string) (Model, error) {
	var m Model
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var hw string
		var at int64
		err := tx.QueryRowContext(ctx, d.q(sqlModel+d.forUpdate()), name).Scan(&m.Name, &hw, &m.CertValiditySeconds, &at)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("model %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading model: %w", err)
		}
		m.CreatedAt = fromTS(at)
		if err := json.Unmarshal([]byte(hw), &m.HardwareIDs); err != nil {
			return fmt.Errorf("model %q: corrupt hardware ids: %w", name, err)
		}
		for _, h := range add {
			if !slices.Contains(m.HardwareIDs, h) {
				m.HardwareIDs = append(m.HardwareIDs, h)
			}
		}
		m.HardwareIDs = slices.DeleteFunc(m.HardwareIDs, func(h string) bool { return slices.Contains(remove, h) })
		if m.HardwareIDs == nil {
			m.HardwareIDs = []string{}
		}
		if len(m.HardwareIDs) > MaxHardwareIDs {
			return fmt.Errorf("model %q: at most %d hardware ids: %w", name, MaxHardwareIDs, ErrConflict)
		}
		b, _ := json.Marshal(m.HardwareIDs)
		if _, err := tx.ExecContext(ctx, d.q(`UPDATE models SET hardware_ids = ? WHERE name = ?`), string(b), name); err != nil {
			return fmt.Errorf("updating model: %w", err)
		}
		return nil
	})
	d.models.Delete(name)
	if err != nil {
		return Model{}, err
	}
	return m, nil
}

const maxCachedModels = 4096

// ListModels returns all models by name.
func (d *DB) ListModels(ctx context.Context) ([]Model, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT name FROM models ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing models: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		names = append(names, n)
	}
	rows.Close()
	out := make([]Model, 0, len(names))
	for _, n := range names {
		m, err := d.GetModel(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// --- tokens and enrollment

// CreateToken stores a token (by hash).
func (d *DB) CreateToken(ctx context.Context, t Token) error {
	t.CreatedAt = d.now()
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO tokens (hash, serial, model, expires_at, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)`),
		t.Hash, t.Serial, t.Model, ts(t.ExpiresAt), t.CreatedBy, ts(t.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("token: %w", ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("creating token: %w", err)
	}
	return nil
}

func (d *DB) forUpdate() string {
	if d.dialect == postgres {
		return " FOR UPDATE"
	}
	return "" // SQLite transactions here are BEGIN IMMEDIATE: already exclusive for writers
}

// --- devices

const deviceCols = `id, serial, model, status, cert_serial, cert_not_after, cert_pem, enrolled_at, installed_version, installed_target, installed_counter, last_attestation_at, last_sequence, key_sha256, reprovision_at, reprovision_by, revoked_at, revoke_reason, replaced_cert_serial, hardware_id`

type scanner interface{ Scan(...any) error }

// rowsQuerier is a *sql.DB or a *sql.Tx, for reads of many rows.
type rowsQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryAll runs query on q and reads every row with scan. doing says what
// failed when the query does ("listing devices").
func queryAll[T any](ctx context.Context, q rowsQuerier, doing, query string, scan func(scanner) (T, error), args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", doing, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func scanDevice(s scanner) (Device, error) {
	var dv Device
	var notAfter, enrolled, lastAtt, reprov, revoked int64
	err := s.Scan(&dv.ID, &dv.Serial, &dv.Model, &dv.Status, &dv.CertSerial, &notAfter, &dv.CertPEM, &enrolled,
		&dv.InstalledVersion, &dv.InstalledTarget, &dv.InstalledCounter, &lastAtt, &dv.LastSequence,
		&dv.KeySHA256, &reprov, &dv.ReprovisionBy, &revoked, &dv.RevokeReason, &dv.ReplacedCertSerial, &dv.HardwareID)
	dv.CertNotAfter, dv.EnrolledAt, dv.LastAttestationAt = fromTS(notAfter), fromTS(enrolled), fromTS(lastAtt)
	dv.ReprovisionAllowedAt, dv.RevokedAt = fromTS(reprov), fromTS(revoked)
	return dv, err
}

// GetDevice returns a device by URN or ErrNotFound.
func (d *DB) GetDevice(ctx context.Context, id string) (Device, error) {
	// Every mTLS request of a device reads it: prepared at Open.
	dv, err := scanDevice(cached{d, nil}.QueryRowContext(ctx, d.q(sqlDevice), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("reading device: %w", err)
	}
	return dv, nil
}

// ListDevices returns devices ordered by model then serial.
func (d *DB) ListDevices(ctx context.Context) ([]Device, error) {
	return d.queryDevices(ctx, `SELECT `+deviceCols+` FROM devices ORDER BY model, serial`)
}

func (d *DB) queryDevices(ctx context.Context, query string, args ...any) ([]Device, error) {
	return queryAll(ctx, d.db, "listing devices", query, scanDevice, args...)
}

// MaxDevicePage bounds one page of PageDevices.
const MaxDevicePage = 1000

// PageDevices returns at most limit (1..MaxDevicePage) devices whose id (URN)
// sorts after afterID, in id order (model, then serial).
func (d *DB) PageDevices(ctx context.Context, afterID string, limit int) ([]Device, error) {
	if limit <= 0 || limit > MaxDevicePage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxDevicePage)
	}
	return d.queryDevices(ctx, d.q(`SELECT `+deviceCols+` FROM devices WHERE id > ? ORDER BY id LIMIT `+strconv.Itoa(limit)), afterID)
}

// SetDeviceStatus changes a device's status (e.g. revoked).
func (d *DB) SetDeviceStatus(ctx context.Context, id, status string) error {
	res, err := d.db.ExecContext(ctx, d.q(`UPDATE devices SET status = ? WHERE id = ?`), status, id)
	if err != nil {
		return fmt.Errorf("updating device: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return nil
}

// --- releases

// AddRelease records a release after check confirms it (typically by
// publishing it). The counter must be above every earlier counter for the
// model and at most MaxReleaseCounter (a counter of 0 takes the model's
// latest + 1, ErrCounterRange if that is above the bound); check runs inside the
// transaction so concurrent adds are ordered, and if it fails nothing is
// recorded.
func (d *DB) AddRelease(ctx context.Context, r Release, check func() error) (Release, error) {
	var fn PublishFunc
	if check != nil {
		fn = func(*TUFLock, Release, *Release) error { return check() }
	}
	return d.addRelease(ctx, r, false, fn)
}

// PublishFunc publishes a release under the TUF publish lock: rel is the
// release as it will be recorded (its counter chosen), latest the model's
// latest release as of the lock (nil if it has none). If it fails, nothing
// is recorded.
type PublishFunc func(lock *TUFLock, rel Release, latest *Release) error

// PublishRelease is AddRelease for a release that publish publishes: the
// transaction holds the TUF publish lock (tufstate.go) from its start, so
// replicas sharing a PostgreSQL database publish one at a time, check
// counters against each other's committed releases, and record the published
// timestamp (TUFLock.Record) in the transaction that records the release.
//
// A counter of 0 is chosen under the lock: the model's latest + 1 (1 for its
// first release), so concurrent adds of one model on several replicas get
// distinct, increasing counters in the order they publish. publish sees
// that counter, and the latest release it was chosen after, before it
// signs anything.
func (d *DB) PublishRelease(ctx context.Context, r Release, publish PublishFunc) (Release, error) {
	return d.addRelease(ctx, r, true, publish)
}

func (d *DB) addRelease(ctx context.Context, r Release, lock bool, check PublishFunc) (Release, error) {
	r.CreatedAt = d.now()
	want := r.Counter
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var l *TUFLock
		if lock {
			var err error
			if l, err = d.lockTUF(ctx, tx); err != nil {
				return err
			}
		}
		// Read after the lock: under PostgreSQL's READ COMMITTED each
		// statement sees what the replica that held it before committed.
		var latest *Release
		var lr Release
		var at int64
		err := tx.QueryRowContext(ctx, d.q(`SELECT id, model, version, counter, target_path, sha256, length, created_by, created_at FROM releases WHERE model = ? ORDER BY counter DESC LIMIT 1`), r.Model).
			Scan(&lr.ID, &lr.Model, &lr.Version, &lr.Counter, &lr.TargetPath, &lr.SHA256, &lr.Length, &lr.CreatedBy, &at)
		switch {
		case err == nil:
			lr.CreatedAt = fromTS(at)
			latest = &lr
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("reading latest release: %w", err)
		}
		r.Counter = want
		switch {
		case want == 0 && latest == nil:
			r.Counter = 1
		case want == 0:
			if r.Counter, err = nextReleaseCounter(latest.Counter); err != nil {
				return err
			}
		case want < 1 || want > MaxReleaseCounter:
			return fmt.Errorf("%w: counter %d is not in 1..%d", ErrCounterRange, want, int64(MaxReleaseCounter))
		case latest != nil && want <= latest.Counter:
			return fmt.Errorf("%w: counter %d, latest is %d", ErrStale, want, latest.Counter)
		}
		var dup int
		if err := tx.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM releases WHERE model = ? AND version = ?`), r.Model, r.Version).Scan(&dup); err != nil {
			return err
		}
		if dup > 0 {
			return fmt.Errorf("release %s %s: %w", r.Model, r.Version, ErrConflict)
		}
		if check != nil {
			if err := check(l, r, latest); err != nil {
				return err
			}
		}
		err = tx.QueryRowContext(ctx, d.q(`INSERT INTO releases (model, version, counter, target_path, sha256, length, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
			r.Model, r.Version, r.Counter, r.TargetPath, r.SHA256, r.Length, r.CreatedBy, ts(r.CreatedAt)).Scan(&r.ID)
		if isUnique(err) {
			return fmt.Errorf("release %s %s: %w", r.Model, r.Version, ErrConflict)
		}
		return err
	})
	if err != nil {
		return Release{}, err
	}
	return r, nil
}

// LatestRelease returns the release with the highest counter for model, or ErrNotFound.
func (d *DB) LatestRelease(ctx context.Context, model string) (Release, error) {
	rs, err := d.listReleases(ctx, `WHERE model = ? ORDER BY counter DESC LIMIT 1`, model)
	if err != nil {
		return Release{}, err
	}
	if len(rs) == 0 {
		return Release{}, fmt.Errorf("releases of %s: %w", model, ErrNotFound)
	}
	return rs[0], nil
}

// GetRelease returns model's release version, or ErrNotFound. UNIQUE
// (model, version) makes it a single-row index lookup.
func (d *DB) GetRelease(ctx context.Context, model, version string) (Release, error) {
	rs, err := d.listReleases(ctx, `WHERE model = ? AND version = ?`, model, version)
	if err != nil {
		return Release{}, err
	}
	if len(rs) == 0 {
		return Release{}, fmt.Errorf("release %s %s: %w", model, version, ErrNotFound)
	}
	return rs[0], nil
}

// ReleaseByTarget returns the release published as target path p.
func (d *DB) ReleaseByTarget(ctx context.Context, p string) (Release, error) {
	rs, err := d.listReleases(ctx, `WHERE target_path = ?`, p)
	if err != nil {
		return Release{}, err
	}
	if len(rs) == 0 {
		return Release{}, fmt.Errorf("release %s: %w", p, ErrNotFound)
	}
	return rs[0], nil
}

// ListReleases returns releases, optionally for one model, newest first.
func (d *DB) ListReleases(ctx context.Context, model string) ([]Release, error) {
	if model == "" {
		return d.listReleases(ctx, `ORDER BY model, counter DESC`)
	}
	return d.listReleases(ctx, `WHERE model = ? ORDER BY counter DESC`, model)
}

// MaxReleasePage bounds one page of PageReleases.
const MaxReleasePage = 1000

// PageReleases returns at most limit (1..MaxReleasePage) releases in
// ListReleases' order (model, then newest release counter first), optionally
// of one model ("" for all). afterID 0 starts at the beginning; otherwise the
// page starts after the release with that id, which must exist (and be of
// model, when one is given), else ErrNotFound. (model, counter) is unique and
// a release's row never changes, so the order is total and stable while
// releases are added: a walk sees each release at most once.
func (d *DB) PageReleases(ctx context.Context, model string, afterID int64, limit int) ([]Release, error) {
	if limit <= 0 || limit > MaxReleasePage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxReleasePage)
	}
	page := " LIMIT " + strconv.Itoa(limit)
	if afterID == 0 {
		if model == "" {
			return d.listReleases(ctx, `ORDER BY model, counter DESC`+page)
		}
		return d.listReleases(ctx, `WHERE model = ? ORDER BY counter DESC`+page, model)
	}
	var afterModel string
	var afterCounter int64
	err := d.db.QueryRowContext(ctx, d.q(`SELECT model, counter FROM releases WHERE id = ?`), afterID).Scan(&afterModel, &afterCounter)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && model != "" && afterModel != model) {
		return nil, fmt.Errorf("release id %d: %w", afterID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading release %d: %w", afterID, err)
	}
	if model == "" {
		return d.listReleases(ctx, `WHERE model > ? OR (model = ? AND counter < ?) ORDER BY model, counter DESC`+page, afterModel, afterModel, afterCounter)
	}
	return d.listReleases(ctx, `WHERE model = ? AND counter < ? ORDER BY counter DESC`+page, model, afterCounter)
}

func (d *DB) listReleases(ctx context.Context, where string, args ...any) ([]Release, error) {
	return queryAll(ctx, d.db, "listing releases", d.q(`SELECT id, model, version, counter, target_path, sha256, length, created_by, created_at FROM releases `+where), scanRelease, args...)
}

func scanRelease(s scanner) (Release, error) {
	var r Release
	var at int64
	err := s.Scan(&r.ID, &r.Model, &r.Version, &r.Counter, &r.TargetPath, &r.SHA256, &r.Length, &r.CreatedBy, &at)
	r.CreatedAt = fromTS(at)
	return r, err
}

// --- attestations: attestations.go

// --- audit trail

// Audit records an admin action.
func (d *DB) Audit(ctx context.Context, actor, action, detail string) error {
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO audit_events (actor, action, detail, at) VALUES (?, ?, ?, ?)`), actor, action, detail, ts(d.now()))
	if err != nil {
		return fmt.Errorf("recording audit event: %w", err)
	}
	return nil
}

// ListAudit returns audit events, oldest first.
func (d *DB) ListAudit(ctx context.Context) ([]AuditEvent, error) {
	return d.listAudit(ctx, "", "")
}

// MaxAuditPage bounds one page of PageAudit.
const MaxAuditPage = 1000

// PageAudit returns at most limit (1..MaxAuditPage) audit events with id >
// afterID, oldest first.
func (d *DB) PageAudit(ctx context.Context, afterID int64, limit int) ([]AuditEvent, error) {
	if limit <= 0 || limit > MaxAuditPage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxAuditPage)
	}
	return d.listAudit(ctx, "WHERE id > ?", " LIMIT "+strconv.Itoa(limit), afterID)
}

func (d *DB) listAudit(ctx context.Context, where, suffix string, args ...any) ([]AuditEvent, error) {
	return queryAll(ctx, d.db, "listing audit events", d.q(`SELECT id, actor, action, detail, at FROM audit_events `+where+` ORDER BY id`+suffix), scanAudit, args...)
}

func scanAudit(s scanner) (AuditEvent, error) {
	var e AuditEvent
	var at int64
	err := s.Scan(&e.ID, &e.Actor, &e.Action, &e.Detail, &at)
	e.At = fromTS(at)
	return e, err
}

// SQL exposes the underlying database for packages that keep their own
// tables in the same store (e.g. the transparency log). Rebind rewrites ?
// placeholders for the dialect; IsPostgres tells which dialect it is.
func (d *DB) SQL() *sql.DB { return d.db }

// Rebind rewrites ? placeholders for this store's dialect.
func (d *DB) Rebind(query string) string { return d.q(query) }

// IsPostgres reports whether the store is PostgreSQL (else SQLite).
func (d *DB) IsPostgres() bool { return d.dialect == postgres }
