package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/pressly/goose/v3"
)

// Schema migrations are numbered and run by goose; the versions applied are
// recorded in the goose_db_version table. Version 1, the baseline, is the
// schema code every store was created and upgraded with before versions
// were recorded (baseline in sql.go): it creates a new store and brings an
// unversioned one of any earlier release to the same shape, idempotently, so
// there is one definition of the schema for both dialects. To change the
// schema, append the next version to migrations (a Go migration, or SQL
// files embedded per dialect); never change one that a release has applied.
func (d *DB) migrations() []*goose.Migration {
	return []*goose.Migration{
		goose.NewGoMigration(1, &goose.GoFunc{RunDB: func(ctx context.Context, _ *sql.DB) error { return d.baseline(ctx) }}, nil),
		// 2: the online key record and the replicas' reports of it (keyset.go).
		goose.NewGoMigration(2, &goose.GoFunc{RunDB: func(ctx context.Context, _ *sql.DB) error { return d.migrateKeySet(ctx) }}, nil),
		// 3: devices' installed_at and seen_day, rollouts' stored health, and
		// the indexes of the fleet page and of rollout health (fleet.go).
		goose.NewGoMigration(3, &goose.GoFunc{RunDB: func(ctx context.Context, _ *sql.DB) error { return d.migrateFleetViews(ctx) }}, nil),
	}
}

// ErrSchemaTooNew: the store was migrated by a newer fosterd than this one.
var ErrSchemaTooNew = errors.New("store schema is newer than this fosterd")

// migrateLockKey names the PostgreSQL advisory lock that serialises the
// migration of one schema across replicas starting together.
const migrateLockKey = "foster schema migration"

// SchemaVersion is the schema version this binary migrates stores to.
func SchemaVersion() int64 {
	m := (&DB{}).migrations()
	return m[len(m)-1].Version
}

// migrate brings the schema to SchemaVersion. On PostgreSQL it holds an
// advisory lock (per database schema) for the whole of it, so replicas
// starting together migrate one after the other: the first applies what is
// pending, the others find nothing to do. A store whose recorded version is
// above this binary's is refused (ErrSchemaTooNew), untouched.
func (d *DB) migrate(ctx context.Context) error { return d.migrateTo(ctx, 0) }

// migrateTo is migrate up to version (0: SchemaVersion).
func (d *DB) migrateTo(ctx context.Context, version int64) error {
	if d.dialect == postgres {
		conn, err := d.db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("migrating store schema: %w", err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(hashtext($1 || current_schema()))`, migrateLockKey); err != nil {
			return fmt.Errorf("migrating store schema: taking the migration lock: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1 || current_schema()))`, migrateLockKey)
	}
	dialect := goose.DialectSQLite3
	if d.dialect == postgres {
		dialect = goose.DialectPostgres
	}
	p, err := goose.NewProvider(dialect, d.db, nil, goose.WithDisableGlobalRegistry(true), goose.WithGoMigrations(d.migrations()...))
	if err != nil {
		return fmt.Errorf("migrating store schema: %w", err)
	}
	if err := d.checkSchemaVersion(ctx, p); err != nil {
		return err
	}
	up := p.Up
	if version > 0 {
		up = func(ctx context.Context) ([]*goose.MigrationResult, error) { return p.UpTo(ctx, version) }
	}
	if _, err := up(ctx); err != nil {
		return fmt.Errorf("migrating store schema: %w", err)
	}
	// Up under another binary's lock can only happen on SQLite; check again.
	return d.checkSchemaVersion(ctx, p)
}

func (d *DB) checkSchemaVersion(ctx context.Context, p *goose.Provider) error {
	current, err := p.GetDBVersion(ctx)
	if err != nil {
		return fmt.Errorf("reading store schema version: %w", err)
	}
	src := p.ListSources()
	known := src[len(src)-1].Version
	if current > known {
		return fmt.Errorf("%w: the store is at schema version %d, this fosterd knows versions up to %d; run the fosterd release that migrated it (or a newer one)", ErrSchemaTooNew, current, known)
	}
	return nil
}

// StoredSchemaVersion is the highest schema version recorded in the store.
func (d *DB) StoredSchemaVersion(ctx context.Context) (int64, error) {
	var v sql.NullInt64
	err := d.db.QueryRowContext(ctx, `SELECT MAX(version_id) FROM goose_db_version WHERE is_applied`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("reading store schema version: %w", err)
	}
	return v.Int64, nil
}
