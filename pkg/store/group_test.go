package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// groupDB is a fresh SQLite store with a scratch table for group commits.
func groupDB(t *testing.T) *DB {
	t.Helper()
	ctx := context.Background()
	d, err := Open(ctx, "sqlite:"+filepath.Join(t.TempDir(), "foster.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	for _, q := range []string{
		`CREATE TABLE g (x INTEGER PRIMARY KEY)`,
		// Checked at COMMIT: a violation fails the whole batch's commit.
		`CREATE TABLE g_child (p INTEGER REFERENCES g(x) DEFERRABLE INITIALLY DEFERRED)`,
	} {
		if _, err := d.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func insertG(x int) txFunc {
	return func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO g (x) VALUES (?)`, x)
		return err
	}
}

// inOneBatch runs fns through groupTx so that all of them land in one batch:
// a first write holds the writer until every fn is queued behind it, in
// order.
func inOneBatch(t *testing.T, d *DB, fns []txFunc) []error {
	t.Helper()
	ctx := context.Background()
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- d.groupTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
			<-release
			return nil
		})
	}()
	for !d.writingAlone() {
		time.Sleep(time.Millisecond)
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.groupTx(ctx, fn)
		}()
		for d.queued() < i+1 { // queued in the order given
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	return errs
}

// writingAlone: a batch is being written and nothing waits behind it.
func (d *DB) writingAlone() bool {
	d.group.mu.Lock()
	defer d.group.mu.Unlock()
	return d.group.writing && len(d.group.queue) == 0
}

func (d *DB) queued() int {
	d.group.mu.Lock()
	defer d.group.mu.Unlock()
	return len(d.group.queue)
}

func rowsOf(t *testing.T, d *DB, table string) []int {
	t.Helper()
	rows, err := d.db.Query(`SELECT x FROM ` + table + ` ORDER BY x`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int
	for rows.Next() {
		var x int
		rows.Scan(&x)
		out = append(out, x)
	}
	return out
}

func TestGroupCommitIsolatesAFailingOrPanickingWrite(t *testing.T) {
	d := groupDB(t)
	boom := errors.New("refused")
	errs := inOneBatch(t, d, []txFunc{
		insertG(1),
		func(ctx context.Context, tx *sql.Tx) error { // writes, then refuses
			if _, err := tx.ExecContext(ctx, `INSERT INTO g (x) VALUES (2)`); err != nil {
				return err
			}
			return boom
		},
		func(ctx context.Context, tx *sql.Tx) error { // writes, then panics
			tx.ExecContext(ctx, `INSERT INTO g (x) VALUES (3)`)
			panic("a bug in a batched write")
		},
		insertG(4),
		insertG(1), // conflicts with the first write of its own batch
	})
	if errs[0] != nil || errs[3] != nil {
		t.Fatalf("good writes failed: %v", errs)
	}
	if !errors.Is(errs[1], boom) {
		t.Fatalf("refusing write: %v", errs[1])
	}
	if errs[2] == nil || !strings.Contains(errs[2].Error(), "panic") {
		t.Fatalf("panicking write: %v", errs[2])
	}
	if errs[4] == nil {
		t.Fatal("duplicate key in the same batch was accepted")
	}
	if got := fmt.Sprint(rowsOf(t, d, "g")); got != "[1 4]" {
		t.Fatalf("rows %s, want [1 4]: a refused write left something behind", got)
	}
}

func TestGroupCommitFailedCommitRetriesEachWriteAlone(t *testing.T) {
	d := groupDB(t)
	dangling := func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO g_child (p) VALUES (99)`)
		return err // passes here; fails the batch's COMMIT
	}
	errs := inOneBatch(t, d, []txFunc{insertG(1), dangling, insertG(2), insertG(3)})
	for _, i := range []int{0, 2, 3} {
		if errs[i] != nil {
			t.Fatalf("write %d lost with its batch: %v", i, errs[i])
		}
	}
	if errs[1] == nil {
		t.Fatal("the write that broke the commit was reported committed")
	}
	if got := fmt.Sprint(rowsOf(t, d, "g")); got != "[1 2 3]" {
		t.Fatalf("rows %s, want [1 2 3]", got)
	}
	var n int
	d.db.QueryRow(`SELECT COUNT(*) FROM g_child`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d dangling rows committed", n)
	}
}

func TestGroupCommitCallerGoneBeforeItsBatchWritesNothing(t *testing.T) {
	d := groupDB(t)
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- d.groupTx(context.Background(), func(ctx context.Context, tx *sql.Tx) error {
			<-release
			return nil
		})
	}()
	for !d.writingAlone() {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	res := make(chan error, 1)
	go func() {
		res <- d.groupTx(ctx, func(ctx context.Context, tx *sql.Tx) error {
			ran = true
			return insertG(7)(ctx, tx)
		})
	}()
	for d.queued() < 1 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled write: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The next write starts a fresh writer that skips the canceled one.
	if err := d.groupTx(context.Background(), insertG(8)); err != nil {
		t.Fatal(err)
	}
	if ran {
		t.Fatal("the canceled write ran")
	}
	if got := fmt.Sprint(rowsOf(t, d, "g")); got != "[8]" {
		t.Fatalf("rows %s, want [8]", got)
	}
}

// TestGroupCommitSavepointsArePreparedAtOpen: a batch of several writes
// runs its savepoints through statements Open prepared.
func TestGroupCommitSavepointsArePreparedAtOpen(t *testing.T) {
	d := groupDB(t)
	var missed []string
	var mu sync.Mutex
	d.unprepared = func(q string) { mu.Lock(); missed = append(missed, q); mu.Unlock() }
	for i, err := range inOneBatch(t, d, []txFunc{insertG(1), insertG(2)}) {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(missed) != 0 {
		t.Fatalf("savepoints run unprepared: %q", missed)
	}
}

// TestPrepareFailureNamesTheStatement: a statement that does not prepare
// (Open: a store whose schema is not what the hot paths read) is an error
// naming it, not a slower path found later.
func TestPrepareFailureNamesTheStatement(t *testing.T) {
	d := groupDB(t)
	_, err := prepareAll(context.Background(), d.db, []string{`SELECT x FROM g`, `SELECT nope FROM g`})
	if err == nil || !strings.Contains(err.Error(), "SELECT nope FROM g") {
		t.Fatalf("got %v, want an error naming the statement", err)
	}
}
