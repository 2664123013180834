package tlog_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

var errRefused = errors.New("refused by prepare")

// sideTable is the caller's own table, written by Prepare.
func sideTable(t *testing.T, d *store.DB) {
	t.Helper()
	if _, err := d.SQL().Exec(`CREATE TABLE side (name TEXT PRIMARY KEY, leaf_index BIGINT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
}

func recordSide(d *store.DB, name string) tlog.Prepare {
	return func(ctx context.Context, tx *sql.Tx, first int64) error {
		_, err := tx.ExecContext(ctx, d.Rebind(`INSERT INTO side (name, leaf_index) VALUES (?, ?)`), name, first)
		return err
	}
}

func sideRows(t *testing.T, d *store.DB) map[string]int64 {
	t.Helper()
	rows, err := d.SQL().Query(`SELECT name, leaf_index FROM side`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var n string
		var i int64
		rows.Scan(&n, &i)
		out[n] = i
	}
	return out
}

// TestAppendWithCommitsRowsAndLeavesTogether: the caller's rows and the
// leaves commit together; a refused Prepare (here: a duplicate key, as a
// replayed attestation would be) drops its own rows and leaves and nothing
// else, even within one group-committed batch.
func TestAppendWithCommitsRowsAndLeavesTogether(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		sideTable(t, d)
		k := newKeys(t, origin)
		l := open(t, d, k)
		ctx := context.Background()

		const n = 64
		var wg sync.WaitGroup
		errs := make([]error, n)
		firsts := make([]int64, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("att-%d", i/2) // every name twice: one of each pair must be refused
				var prep tlog.Prepare = recordSide(d, name)
				if i%7 == 0 {
					prep = func(context.Context, *sql.Tx, int64) error { return errRefused }
				}
				if i%11 == 0 {
					prep = func(context.Context, *sql.Tx, int64) error { panic("boom") }
				}
				firsts[i], _, errs[i] = l.AppendWith(ctx, [][]byte{[]byte(fmt.Sprintf("leaf-%d", i))}, prep)
			}()
		}
		wg.Wait()

		side := sideRows(t, d)
		var ok []int64
		for i, err := range errs {
			switch {
			case i%11 == 0:
				if err == nil || errors.Is(err, errRefused) {
					t.Fatalf("append %d: panicking prepare returned %v", i, err)
				}
			case i%7 == 0:
				if !errors.Is(err, errRefused) {
					t.Fatalf("append %d: %v, want the prepare's error", i, err)
				}
			case err == nil:
				ok = append(ok, firsts[i])
				if got, found := side[fmt.Sprintf("att-%d", i/2)]; !found || got != firsts[i] {
					t.Fatalf("append %d at %d: side row says %d (found %v)", i, firsts[i], got, found)
				}
			}
		}
		// The accepted leaves are exactly indexes 0..len(ok)-1, and each
		// holds the data its caller appended.
		sort.Slice(ok, func(i, j int) bool { return ok[i] < ok[j] })
		for i, idx := range ok {
			if idx != int64(i) {
				t.Fatalf("accepted leaf indexes %v are not contiguous", ok)
			}
		}
		if len(ok) != len(side) {
			t.Fatalf("%d leaves accepted, %d side rows", len(ok), len(side))
		}
		cp := parse(t, k, mustCheckpoint(t, l))
		if cp.Size != int64(len(ok)) {
			t.Fatalf("log has %d leaves, %d appends succeeded", cp.Size, len(ok))
		}
		entries, err := l.Entries(ctx, 0, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range errs {
			if err == nil && string(entries[firsts[i]]) != fmt.Sprintf("leaf-%d", i) {
				t.Fatalf("leaf %d holds %q, want leaf-%d", firsts[i], entries[firsts[i]], i)
			}
		}
	})
}

// TestAppendWithAllRefused: a batch whose every Prepare refuses changes
// nothing, not even the checkpoint.
func TestAppendWithAllRefused(t *testing.T) {
	storetest.Each(t, func(t *testing.T, d *store.DB) {
		k := newKeys(t, origin)
		l := open(t, d, k)
		ctx := context.Background()
		appendN(t, l, 0, 3)
		before := mustCheckpoint(t, l)
		if _, _, err := l.AppendWith(ctx, [][]byte{[]byte("x")}, func(context.Context, *sql.Tx, int64) error { return errRefused }); !errors.Is(err, errRefused) {
			t.Fatalf("got %v", err)
		}
		if after := mustCheckpoint(t, l); string(after) != string(before) {
			t.Fatalf("refused append changed the checkpoint:\n%s\n%s", before, after)
		}
		appendN(t, l, 3, 4) // the log goes on
	})
}

func mustCheckpoint(t *testing.T, l *tlog.Log) []byte {
	t.Helper()
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cp
}
