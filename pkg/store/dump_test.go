package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// dsns returns a fresh store DSN of each back end.
func dsns(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"sqlite":   func(t *testing.T) string { return filepath.Join(t.TempDir(), "foster.db") },
		"postgres": func(t *testing.T) string { return storetest.PostgresDSN(t) },
	}
}

// fill puts rows in most tables through the store's own API.
func fill(t *testing.T, d *store.DB) {
	t.Helper()
	ctx := context.Background()
	if _, err := d.CreateModel(ctx, store.Model{Name: "edge-gw", HardwareIDs: []string{"rev-a"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		serial := fmt.Sprintf("SN-%04d", i)
		hash := "tok-" + serial
		if err := d.CreateToken(ctx, store.Token{Hash: hash, Serial: serial, Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour), CreatedBy: "admin"}); err != nil {
			t.Fatal(err)
		}
		if _, err := enrollToken(ctx, d, hash, serial, "edge-gw"); err != nil {
			t.Fatal(err)
		}
	}
	rel, err := d.AddRelease(ctx, store.Release{Model: "edge-gw", Version: "1.0.0", TargetPath: "edge-gw/1.0.0/fw.bin", SHA256: "aa", Length: 3, CreatedBy: "admin"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := "urn:foster:device:edge-gw:SN-0001"
	env := []byte(`{"payload":"<&>","quote":"\"","unicode":"é"}`)
	if _, err := d.AddAttestation(ctx, store.Attestation{DeviceID: id, Sequence: 1, Outcome: "success", TargetPath: rel.TargetPath, SHA256: rel.SHA256, Version: rel.Version, Counter: rel.Counter, Envelope: env}); err != nil {
		t.Fatal(err)
	}
	if err := d.Audit(ctx, "admin", "release.add", "edge-gw 1.0.0\nsecond line\ttab"); err != nil {
		t.Fatal(err)
	}
	if err := d.TagDevice(ctx, id, []string{"lab"}); err != nil {
		t.Fatal(err)
	}
}

// dump returns every table's rows, each as a JSON object keyed by column
// (so stores whose columns are in another order compare equal).
func dump(t *testing.T, dsn string) (int64, map[string][]string) {
	t.Helper()
	ctx := context.Background()
	s, err := store.OpenSnapshot(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := map[string][]string{}
	for _, ti := range s.Tables() {
		rows := []string{}
		_, err := s.Rows(ctx, ti.Name, func(row []byte) error {
			var vals []json.RawMessage
			if err := json.Unmarshal(row, &vals); err != nil {
				return err
			}
			obj := map[string]json.RawMessage{}
			for i, c := range ti.Columns {
				obj[c] = vals[i]
			}
			b, _ := json.Marshal(obj)
			rows = append(rows, string(b))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(rows)
		out[ti.Name] = rows
	}
	return s.SchemaVersion(), out
}

// load copies the store at from into the (empty) store at to.
func load(ctx context.Context, from, to string) error {
	s, err := store.OpenSnapshot(ctx, from, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	l, err := store.OpenLoader(ctx, to, s.SchemaVersion(), nil)
	if err != nil {
		return err
	}
	defer l.Close()
	for _, ti := range s.Tables() {
		tl, err := l.Table(ctx, ti.Name, ti.Columns)
		if err != nil {
			return err
		}
		if _, err := s.Rows(ctx, ti.Name, func(row []byte) error { return tl.Add(ctx, row) }); err != nil {
			return err
		}
		if err := tl.Flush(ctx); err != nil {
			return err
		}
	}
	return l.Commit(ctx)
}

// TestDumpRestoresIntoEitherDialectUnchanged: a store dumped and loaded into
// an empty store of each back end (SQLite to PostgreSQL and back included)
// holds the same rows, and the restored store keeps working: new rows get
// ids past the restored ones (PostgreSQL sequences moved).
func TestDumpRestoresIntoEitherDialectUnchanged(t *testing.T) {
	ctx := context.Background()
	for fromName, from := range dsns(t) {
		for toName, to := range dsns(t) {
			t.Run(fromName+"-to-"+toName, func(t *testing.T) {
				src, dst := from(t), to(t)
				d, err := store.Open(ctx, src)
				if err != nil {
					t.Fatal(err)
				}
				fill(t, d)
				d.Close()
				v, want := dump(t, src)
				if len(want["devices"]) != 3 || len(want["attestations"]) != 1 || len(want["tuf_state"]) != 1 {
					t.Fatalf("the dump misses rows: %d devices, %d attestations", len(want["devices"]), len(want["attestations"]))
				}
				if err := load(ctx, src, dst); err != nil {
					t.Fatal(err)
				}
				gotV, got := dump(t, dst)
				if gotV != v {
					t.Fatalf("restored schema version %d, want %d", gotV, v)
				}
				for table := range maps.Keys(want) {
					if !slices.Equal(got[table], want[table]) {
						t.Errorf("table %s differs after the round trip:\n got %v\nwant %v", table, got[table], want[table])
					}
				}
				r, err := store.Open(ctx, dst)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if err := r.Audit(ctx, "admin", "after.restore", ""); err != nil {
					t.Fatalf("a new row after the restore: %v", err)
				}
				ev, err := r.ListAudit(ctx)
				if err != nil || len(ev) != 2 || ev[1].ID <= ev[0].ID {
					t.Fatalf("audit ids after the restore: %+v %v", ev, err)
				}
				if dv, err := r.GetDevice(ctx, "urn:foster:device:edge-gw:SN-0001"); err != nil || dv.LastSequence != 1 {
					t.Fatalf("restored device: %+v %v", dv, err)
				}
			})
		}
	}
}

// TestSnapshotSeesNoHalfOfATransaction: writers commit pairs of rows while
// a dump reads; the dump holds both rows of every pair or neither, and none
// committed after it began.
func TestSnapshotSeesNoHalfOfATransaction(t *testing.T) {
	ctx := context.Background()
	for name, mk := range dsns(t) {
		t.Run(name, func(t *testing.T) {
			dsn := mk(t)
			d, err := store.Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			var pairs atomic.Int64
			stop := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						done <- nil
						return
					default:
					}
					tx, err := d.SQL().BeginTx(ctx, nil)
					if err != nil {
						done <- err
						return
					}
					for _, half := range []string{"a", "b"} {
						if _, err := tx.ExecContext(ctx, d.Rebind(`INSERT INTO audit_events (actor, action, detail, at) VALUES ('t', 'pair', ?, 0)`), fmt.Sprintf("%d-%s", i, half)); err != nil {
							tx.Rollback()
							done <- err
							return
						}
					}
					if err := tx.Commit(); err != nil {
						done <- err
						return
					}
					pairs.Add(1)
				}
			}()
			await := func(n int64) {
				deadline := time.Now().Add(60 * time.Second)
				for pairs.Load() < n {
					if time.Now().After(deadline) {
						t.Fatalf("the writer committed only %d pairs", pairs.Load())
					}
					time.Sleep(time.Millisecond)
				}
			}
			await(20)
			before := pairs.Load()
			s, err := store.OpenSnapshot(ctx, dsn, nil)
			if err != nil {
				t.Fatal(err)
			}
			after := pairs.Load()
			await(after + 20) // the writer keeps committing while the dump reads
			seen := map[string]int{}
			if _, err := s.Rows(ctx, "audit_events", func(row []byte) error {
				var vals []any
				json.Unmarshal(row, &vals)
				detail := vals[3].(string)
				n, _, _ := strings.Cut(detail, "-")
				seen[n]++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			close(stop)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for n, c := range seen {
				if c != 2 {
					t.Fatalf("pair %s: the dump holds %d of its 2 rows", n, c)
				}
			}
			if n := int64(len(seen)); n < before || n > after+1 {
				t.Fatalf("the dump holds %d pairs; %d to %d were committed when it began (reads after it see later commits?)", n, before, after)
			}
		})
	}
}

// TestSnapshotWaitsForPublishInProgress: the snapshot begins holding the
// TUF publish lock, so a publish cannot record a new timestamp between the
// snapshot and what quiet reads; the publish proceeds once quiet returns.
func TestSnapshotWaitsForPublishInProgress(t *testing.T) {
	ctx := context.Background()
	for name, mk := range dsns(t) {
		t.Run(name, func(t *testing.T) {
			dsn := mk(t)
			d, err := store.Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			published := make(chan error, 1)
			s, err := store.OpenSnapshot(ctx, dsn, func(ctx context.Context) error {
				go func() {
					published <- d.PublishTUF(ctx, func(l *store.TUFLock) error { return l.Record(ctx, 7, "e7") })
				}()
				select {
				case err := <-published:
					return fmt.Errorf("a publish recorded while the snapshot began (err %v)", err)
				case <-time.After(2 * time.Second):
					return nil // still waiting for the lock, as it should
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := <-published; err != nil {
				t.Fatalf("the publish failed after the snapshot released the lock: %v", err)
			}
			_, rows := dump(t, dsn)
			if !strings.Contains(rows["tuf_state"][0], `"timestamp_version":7`) {
				t.Fatalf("the publish was not recorded: %v", rows["tuf_state"])
			}
			var v int64
			s.Rows(ctx, "tuf_state", func(row []byte) error {
				var vals []any
				json.Unmarshal(row, &vals)
				v = int64(vals[1].(float64))
				return nil
			})
			if v != 0 {
				t.Fatalf("the snapshot sees timestamp version %d, recorded after it began", v)
			}
		})
	}
}

// TestRestoreRefusesAStoreThatHoldsData: loading into a store with rows is
// refused before anything is written; an empty schema at another version
// is refused too; a store that only ran the migrations is accepted.
func TestRestoreRefusesAStoreThatHoldsData(t *testing.T) {
	ctx := context.Background()
	for name, mk := range dsns(t) {
		t.Run(name, func(t *testing.T) {
			src, dst := mk(t), mk(t)
			d, err := store.Open(ctx, src)
			if err != nil {
				t.Fatal(err)
			}
			fill(t, d)
			d.Close()
			_, before := dump(t, src)
			if err := load(ctx, src, src); !errors.Is(err, store.ErrNotEmpty) {
				t.Fatalf("loading into a store with data: %v, want ErrNotEmpty", err)
			}
			if _, after := dump(t, src); !maps.EqualFunc(before, after, slices.Equal) {
				t.Fatal("a refused load changed the store")
			}
			empty, err := store.Open(ctx, dst) // migrated, no data
			if err != nil {
				t.Fatal(err)
			}
			empty.Close()
			if _, err := store.OpenLoader(ctx, dst, store.SchemaVersion()+1, nil); !errors.Is(err, store.ErrSchemaTooNew) {
				t.Fatalf("a dump newer than this build: %v", err)
			}
			if err := load(ctx, src, dst); err != nil {
				t.Fatalf("loading into a migrated, empty store: %v", err)
			}
		})
	}
}

// TestLoadRefusesUnknownTablesAndColumns: a dump naming a table or column
// the schema lacks (or one crafted to inject SQL) is refused.
func TestLoadRefusesUnknownTablesAndColumns(t *testing.T) {
	ctx := context.Background()
	l, err := store.OpenLoader(ctx, filepath.Join(t.TempDir(), "foster.db"), store.SchemaVersion(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct {
		table string
		cols  []string
	}{
		{"nope", []string{"a"}},
		{`models"; DROP TABLE devices; --`, []string{"name"}},
		{"models", []string{"name", `x") VALUES (1); --`}},
		{"models", []string{"name", "name"}},
		{"models", nil},
		{"goose_db_version", []string{"id"}},
	} {
		if _, err := l.Table(ctx, tc.table, tc.cols); !errors.Is(err, store.ErrDump) {
			t.Errorf("Table(%q, %q): %v, want ErrDump", tc.table, tc.cols, err)
		}
	}
	tl, err := l.Table(ctx, "models", []string{"name", "hardware_ids", "created_at"})
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{`["a","[]"]`, `{"name":"a"}`, `["a","[]",{"evil":"x"}]`, `["a","[]",1.5]`, `not json`} {
		if err := tl.Add(ctx, []byte(row)); !errors.Is(err, store.ErrDump) {
			t.Errorf("row %s: %v, want ErrDump", row, err)
		}
	}
}
