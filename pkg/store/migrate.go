package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
)

// Schema migrations are numbered SQL files embedded in the binary, one set
// per dialect (migrations/sqlite, migrations/postgres), run by goose. The
// versions applied are recorded in the goose_db_version table. To change the
// schema, add the next numbered file to both directories; never edit one
// that a release has applied.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// ErrSchemaTooNew: the store was migrated by a newer fosterd than this one.
var ErrSchemaTooNew = errors.New("store schema is newer than this fosterd")

// migrateLockKey names the PostgreSQL advisory lock that serialises the
// migration of one schema across replicas starting together.
const migrateLockKey = "foster schema migration"

// SchemaVersion is the schema version this binary migrates stores to.
func SchemaVersion() int64 {
	var max int64
	names, _ := fs.Glob(migrationFiles, "migrations/*/*.sql")
	for _, n := range names {
		if v, err := goose.NumericComponent(n); err == nil && v > max {
			max = v
		}
	}
	return max
}

// migrate brings the schema to SchemaVersion. On PostgreSQL it holds an
// advisory lock (per database schema) for the whole of it, so replicas
// starting together migrate one after the other: the first applies what is
// pending, the others find nothing to do. A store whose recorded version is
// above this binary's is refused (ErrSchemaTooNew), untouched.
func (d *DB) migrate(ctx context.Context) error {
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
	dir, dialect := "migrations/sqlite", goose.DialectSQLite3
	if d.dialect == postgres {
		dir, dialect = "migrations/postgres", goose.DialectPostgres
	}
	sub, err := fs.Sub(migrationFiles, dir)
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(dialect, d.db, sub, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrating store schema: %w", err)
	}
	versioned, err := d.tableExists(ctx, "goose_db_version")
	if err != nil {
		return err
	}
	existing, err := d.tableExists(ctx, "")
	if err != nil {
		return err
	}
	if existing && !versioned {
		// A store from before versioned migrations: bring it to the
		// baseline's shape first, which the baseline then records as version 1.
		if err := d.adoptUnversioned(ctx); err != nil {
			return err
		}
	}
	if err := d.checkSchemaVersion(ctx, p); err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
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

// tableExists reports whether the store's schema has the table, or, for "",
// any table of fosterd's (one of an unversioned store).
func (d *DB) tableExists(ctx context.Context, table string) (bool, error) {
	query := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND (name = ?1 OR ?1 = '' AND name NOT LIKE 'sqlite_%' AND name != 'goose_db_version')`
	if d.dialect == postgres {
		query = `SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND (tablename = $1 OR $1 = '' AND tablename != 'goose_db_version')`
	}
	var n int
	if err := d.db.QueryRowContext(ctx, query, table).Scan(&n); err != nil {
		return false, fmt.Errorf("inspecting store schema: %w", err)
	}
	return n > 0, nil
}
