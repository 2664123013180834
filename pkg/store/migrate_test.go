package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// backend is a fresh, empty database of one dialect: the DSN store.Open
// takes and the driver and DSN to reach it directly.
type backend struct {
	name, dsn, driver, raw string
}

func backends(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "foster.db")
		fn(t, backend{name: "sqlite", dsn: path, driver: "sqlite", raw: "file:" + path})
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := storetest.PostgresDSN(t)
		fn(t, backend{name: "postgres", dsn: dsn, driver: "pgx", raw: dsn})
	})
}

func (b backend) exec(t *testing.T, stmts string) {
	t.Helper()
	db, err := sql.Open(b.driver, b.raw)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, s := range strings.Split(stmts, ";") {
		if strings.TrimSpace(s) == "" || strings.HasPrefix(strings.TrimSpace(s), "--") && !strings.Contains(strings.TrimSpace(s), "\n") {
			continue
		}
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v\n%s", b.name, err, s)
		}
	}
}

// schema describes the tables, columns and indexes of the database, to
// compare an upgraded store with a new one.
func (b backend) schema(t *testing.T) []string {
	t.Helper()
	db, err := sql.Open(b.driver, b.raw)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	query := `SELECT m.name || '.' || p.name || ' ' || p.type || ' notnull=' || p."notnull" || ' default=' || COALESCE(p.dflt_value, '') || ' pk=' || p.pk
		FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'
		UNION ALL SELECT 'index ' || name || ' ' || COALESCE(sql, '') FROM sqlite_master WHERE type = 'index'`
	if b.driver == "pgx" {
		query = `SELECT table_name || '.' || column_name || ' ' || data_type || ' nullable=' || is_nullable || ' default=' || COALESCE(column_default, '')
			FROM information_schema.columns WHERE table_schema = current_schema()
			UNION ALL SELECT 'index ' || indexname || ' ' || replace(indexdef, current_schema() || '.', '') FROM pg_indexes WHERE schemaname = current_schema()`
	}
	rows, err := db.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		// goose's own table is the same in both; autoindex names depend on
		// the order of a table's constraints, which the two differ in.
		if !strings.Contains(s, "goose_db_version") && !strings.Contains(s, "sqlite_autoindex") {
			out = append(out, strings.TrimSpace(s))
		}
	}
	slices.Sort(out)
	return out
}

// previousRelease is a store as the fosterd before versioned migrations left
// it: its schema (testdata) and a row in the tables that matter most.
const previousReleaseRows = `
INSERT INTO tuf_state (id, timestamp_version, timestamp_etag) VALUES (1, 7, 'etag-7');
INSERT INTO models (name, hardware_ids, created_at, cert_validity) VALUES ('gw', '["rev-a"]', 1700000000000000000, 3600);
INSERT INTO devices (id, serial, model, status, cert_serial, cert_not_after, cert_pem, enrolled_at, installed_version, installed_target, installed_counter, last_attestation_at, last_sequence, key_sha256, hardware_id)
	VALUES ('urn:foster:device:gw:SN1', 'SN1', 'gw', 'active', 'abc', 1800000000000000000, 'PEM', 1700000000000000000, '1.0.0', 'gw/1.0.0/fw.bin', 1, 1700000000000000000, 1, 'k1', 'rev-a');
INSERT INTO releases (model, version, counter, target_path, sha256, length, created_by, created_at)
	VALUES ('gw', '1.0.0', 1, 'gw/1.0.0/fw.bin', 'aa', 42, 'alice', 1700000000000000000);
INSERT INTO attestations (device_id, sequence, outcome, target_path, sha256, version, counter, envelope, received_at, leaf_index, cert_serial)
	VALUES ('urn:foster:device:gw:SN1', 1, 'committed', 'gw/1.0.0/fw.bin', 'aa', '1.0.0', 1, 'env', 1700000000000000000, 0, 'abc');
INSERT INTO audit_events (actor, action, detail, at) VALUES ('alice', 'release.create', 'gw 1.0.0', 1700000000000000000);
INSERT INTO used_token_ids (issuer, jti, expires_at, used_at) VALUES ('station-1', 'j1', 1800000000000000000, 1700000000000000000)
`

func TestStoreFromPreviousReleaseUpgrades(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, b backend) {
		old, err := os.ReadFile(filepath.Join("testdata", "schema-v0."+b.name+".sql"))
		if err != nil {
			t.Fatal(err)
		}
		b.exec(t, string(old))
		b.exec(t, previousReleaseRows)

		d, err := store.Open(ctx, b.dsn)
		if err != nil {
			t.Fatalf("opening the previous release's store: %v", err)
		}
		defer d.Close()
		if v, err := d.StoredSchemaVersion(ctx); err != nil || v != store.SchemaVersion() || v < 1 {
			t.Fatalf("recorded schema version %d, %v; want %d", v, err, store.SchemaVersion())
		}
		if m, err := d.GetModel(ctx, "gw"); err != nil || len(m.HardwareIDs) != 1 || m.CertValiditySeconds != 3600 {
			t.Fatalf("model after upgrade: %+v, %v", m, err)
		}
		dev, err := d.GetDevice(ctx, "urn:foster:device:gw:SN1")
		if err != nil || dev.InstalledVersion != "1.0.0" || dev.KeySHA256 != "k1" || dev.HardwareID != "rev-a" {
			t.Fatalf("device after upgrade: %+v, %v", dev, err)
		}
		if r, err := d.GetRelease(ctx, "gw", "1.0.0"); err != nil || r.Length != 42 || r.Counter != 1 {
			t.Fatalf("release after upgrade: %+v, %v", r, err)
		}
		if a, err := d.GetAttestation(ctx, dev.ID, 1); err != nil || a.Outcome != "committed" || a.CertSerial != "abc" {
			t.Fatalf("attestation after upgrade: %+v, %v", a, err)
		}
		// installed_at (migration 3) comes from the attestations: the
		// device is behind a newer release since its commit of 1.0.0.
		if _, err := d.AddRelease(ctx, store.Release{Model: "gw", Version: "2.0.0", Counter: 2, TargetPath: "gw/2.0.0/fw.bin", SHA256: "bb", Length: 1}, nil); err != nil {
			t.Fatal(err)
		}
		if p, err := d.PageFleetList(ctx, store.FleetListQuery{List: store.ListBehind, Limit: 10}); err != nil || len(p.Devices) != 1 ||
			!p.Devices[0].InstalledAt.Equal(time.Unix(0, 1700000000000000000)) {
			t.Fatalf("behind after upgrade: %+v, %v; want installed since its attestation", p, err)
		}
		if ev, err := d.ListAudit(ctx); err != nil || len(ev) != 1 || ev[0].Actor != "alice" {
			t.Fatalf("audit after upgrade: %+v, %v", ev, err)
		}
		// New rows go on from the old ones (sequences kept).
		if err := d.Audit(ctx, "bob", "model.update", "gw"); err != nil {
			t.Fatalf("new audit event after upgrade: %v", err)
		}
		if ev, err := d.ListAudit(ctx); err != nil || len(ev) != 2 || ev[0].ID == ev[1].ID {
			t.Fatalf("audit after a new event: %+v, %v", ev, err)
		}

		// The upgraded schema is the one a new store gets.
		var fresh backend
		if b.name == "sqlite" {
			path := filepath.Join(t.TempDir(), "new.db")
			fresh = backend{name: "sqlite", dsn: path, driver: "sqlite", raw: "file:" + path}
		} else {
			dsn := storetest.PostgresDSN(t)
			fresh = backend{name: "postgres", dsn: dsn, driver: "pgx", raw: dsn}
		}
		nd, err := store.Open(ctx, fresh.dsn)
		if err != nil {
			t.Fatal(err)
		}
		nd.Close()
		got, want := b.schema(t), fresh.schema(t)
		if !slices.Equal(got, want) {
			t.Fatalf("upgraded schema differs from a new store's:\nonly upgraded: %q\nonly new: %q", minus(got, want), minus(want, got))
		}
	})
}

func minus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}

func TestStoreNewerThanBinaryIsRefused(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, b backend) {
		d, err := store.Open(ctx, b.dsn)
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		future := store.SchemaVersion() + 1
		b.exec(t, fmt.Sprintf(`INSERT INTO goose_db_version (version_id, is_applied) VALUES (%d, true)`, future))
		before := b.schema(t)

		_, err = store.Open(ctx, b.dsn)
		if !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("opening a store at schema version %d: %v, want ErrSchemaTooNew", future, err)
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprint(future)) || !strings.Contains(msg, fmt.Sprint(store.SchemaVersion())) {
			t.Fatalf("error does not name both versions: %v", err)
		}
		if after := b.schema(t); !slices.Equal(before, after) {
			t.Fatalf("refused store was changed: %q", minus(after, before))
		}
	})
}

// Replicas starting together on one new PostgreSQL database: every one
// opens the store, and the migration is applied exactly once.
func TestReplicasStartingTogetherMigrateOnce(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	const replicas = 8
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	start := make(chan struct{})
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d, err := store.Open(context.Background(), dsn)
			if err == nil {
				_, err = d.ListModels(context.Background())
				d.Close()
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var applied, zero int
	if err := db.QueryRow(`SELECT COUNT(*) FILTER (WHERE version_id > 0), COUNT(*) FILTER (WHERE version_id = 0) FROM goose_db_version`).Scan(&applied, &zero); err != nil {
		t.Fatal(err)
	}
	if applied != int(store.SchemaVersion()) || zero != 1 {
		t.Fatalf("goose_db_version: %d migrations recorded (want %d), %d version-0 rows (want 1)", applied, store.SchemaVersion(), zero)
	}
}
