// Package storetest opens throwaway stores for tests: SQLite in a temp dir
// and a fresh schema in the real PostgreSQL (FOSTER_TEST_POSTGRES, default
// 127.0.0.1:5432/test). PostgreSQL is required when CI is set.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

// SQLite opens a fresh SQLite store.
func SQLite(t testing.TB) *store.DB { return SQLiteFrom(t, "") }

// SQLiteFrom runs legacy (SQL statements separated by ";", e.g. the schema
// and rows of an older Foster) on a fresh database, then opens it as a store,
// which migrates it.
func SQLiteFrom(t testing.TB, legacy string) *store.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "foster.db")
	if legacy != "" {
		raw, err := sql.Open("sqlite", "file:"+path)
		if err != nil {
			t.Fatal(err)
		}
		execAll(t, raw, legacy)
		raw.Close()
	}
	d, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func execAll(t testing.TB, db *sql.DB, stmts string) {
	t.Helper()
	for _, s := range strings.Split(stmts, ";") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("legacy schema: %v\n%s", err, s)
		}
	}
}

// Postgres opens a store in a fresh schema of the test PostgreSQL, skipping
// (or failing under CI) when it is unreachable.
func Postgres(t testing.TB) *store.DB { return PostgresFrom(t, "") }

// PostgresFrom is SQLiteFrom for PostgreSQL (legacy runs in the fresh schema).
func PostgresFrom(t testing.TB, legacy string) *store.DB {
	t.Helper()
	dsn := PostgresDSN(t)
	if legacy != "" {
		raw, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		execAll(t, raw, legacy)
		raw.Close()
	}
	d, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// PostgresEnv names the test suite's PostgreSQL (a test knob, not a
// variable of Foster's binaries, so not in pkg/env).
const PostgresEnv = "FOSTER_TEST_POSTGRES"

// PostgresBase is the test PostgreSQL's URL: $FOSTER_TEST_POSTGRES, default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable.
func PostgresBase() string {
	if v := os.Getenv(PostgresEnv); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// PostgresDSN creates a fresh schema in the test PostgreSQL, dropped when the
// test ends, and returns a store DSN that uses it (for tests that open the
// store through a whole fosterd instance). Unreachable: as Postgres.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	base := PostgresBase()
	admin, err := sql.Open("pgx", base)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = admin.PingContext(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL at %s unreachable: %v", base, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (set CI=1 to make this fatal): %v", base, err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	schema := "foster_test_" + hex.EncodeToString(b)
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP SCHEMA " + schema + " CASCADE")
		admin.Close()
	})
	return base + "&search_path=" + schema
}

// Each runs fn against a fresh store of every back end.
func Each(t *testing.T, fn func(t *testing.T, d *store.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, Postgres(t)) })
}

// EachFrom runs fn against every back end after legacy set it up (see SQLiteFrom).
func EachFrom(t *testing.T, legacy string, fn func(t *testing.T, d *store.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLiteFrom(t, legacy)) })
	t.Run("postgres", func(t *testing.T) { fn(t, PostgresFrom(t, legacy)) })
}

// PostgresDatabase returns the DSN of database name on the test PostgreSQL,
// creating it if it does not exist (dropping it first when reset): a
// database that outlives the test, for benchmarks that cache a large seeded
// store across runs. Unreachable: as Postgres. name must be a plain
// lower-case identifier.
func PostgresDatabase(t testing.TB, name string, reset bool) string {
	t.Helper()
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			t.Fatalf("database name %q: want [a-z0-9_]", name)
		}
	}
	base := PostgresBase()
	admin, err := sql.Open("pgx", base)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = admin.PingContext(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("PostgreSQL at %s unreachable: %v", base, err)
		}
		t.Skipf("PostgreSQL at %s unreachable (set CI=1 to make this fatal): %v", base, err)
	}
	defer admin.Close()
	if reset {
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name); err != nil {
			t.Fatal(err)
		}
	}
	var exists bool
	if err := admin.QueryRow("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}
