package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Group commit for the write hot paths (enrollment).
//
// Every enrollment is a small write transaction, and committing one costs a
// WAL fsync (SQLite, synchronous=FULL) or a round trip and a WAL flush
// (PostgreSQL). Under load, concurrent writes queue for the single writer
// anyway, so groupTx runs everything that queued while the previous batch
// committed as one database transaction, each write in its own savepoint: a
// write that fails is rolled back to its savepoint and reported to its own
// caller alone, the others commit together. A caller is answered only after
// its batch committed (or failed), so "returned nil" still means "durable".
//
// SQLite only. PostgreSQL runs each write in its own transaction on its own
// connection: it groups concurrent commits' WAL flushes itself, and funnelling
// the writes through one connection made them wait on each other's round
// trips (BenchmarkEnrollHTTP/postgres: 664/s one transaction each, 373/s
// grouped; docs/BENCHMARKS.md). Past 64 savepoints a PostgreSQL transaction
// also overflows its subtransaction cache, which slows every other session.

const (
	// groupDelay is how long the writer lets a batch fill while writes keep
	// coming (PostgreSQL's commit_delay, for SQLite). Without it batches held
	// 2-4 enrollments at 2,000/s and each commit's WAL write and fsync cost
	// ~0.08 CPU ms per enrollment; with 5 ms they hold ~20 and a station
	// enrollment costs 0.78 instead of 0.9 CPU ms (BenchmarkEnrollHTTP). A
	// lone write (the last batch had one) never waits; under load an
	// enrollment waits up to 5 ms more.
	groupDelay   = 5 * time.Millisecond
	maxGroup     = 128              // writes per batch transaction
	groupTimeout = 30 * time.Second // per batch, independent of any one caller's context
)

// A txFunc writes through tx with ctx (the batch's context: a caller's
// cancellation must not interrupt a statement of a transaction it shares).
type txFunc func(ctx context.Context, tx *sql.Tx) error

type groupReq struct {
	fn   txFunc
	done chan error // buffered: the writer never blocks on it
	// Guarded by group.mu.
	taken, canceled bool
}

type group struct {
	mu      sync.Mutex
	queue   []*groupReq
	writing bool // a writer goroutine is draining queue
}

// groupTx runs fn in a transaction shared with other concurrent groupTx
// calls and returns once that transaction committed: nil means fn's writes
// are durable, an error that none of them are (fn's own error, or the
// batch's commit error). fn may run more than once if the batch it was in
// failed (see runGroup), and must not keep tx.
//
// If ctx ends before fn's batch started, fn never runs. If it ends while the
// batch runs, groupTx waits for the outcome up to groupTimeout.
func (d *DB) groupTx(ctx context.Context, fn txFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.dialect == postgres {
		return d.tx(ctx, func(tx *sql.Tx) error { return callTx(ctx, tx, fn) })
	}
	r := &groupReq{fn: fn, done: make(chan error, 1)}
	g := &d.group
	g.mu.Lock()
	g.queue = append(g.queue, r)
	start := !g.writing
	g.writing = true
	g.mu.Unlock()
	if start {
		go d.writeGroups()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
	}
	g.mu.Lock()
	taken := r.taken
	r.canceled = !taken
	g.mu.Unlock()
	if !taken {
		return ctx.Err()
	}
	// Already running: its outcome is decided by the database, not by the
	// caller having left, so report it.
	return <-r.done
}

// writeGroups drains the queue one batch at a time and exits when it is
// empty. Exactly one runs at a time per DB (group.writing).
func (d *DB) writeGroups() {
	last := 0
	for {
		if last > 1 {
			// Under concurrent load (the last batch had company), let the
			// next batch fill up for groupDelay before committing it.
			time.Sleep(groupDelay)
		}
		batch := d.takeGroup()
		last = len(batch)
		if batch == nil {
			return
		}
		errs := d.runGroup(batch)
		for i, r := range batch {
			r.done <- errs[i]
		}
	}
}

func (d *DB) takeGroup() []*groupReq {
	g := &d.group
	g.mu.Lock()
	defer g.mu.Unlock()
	var batch []*groupReq
	for len(g.queue) > 0 && len(batch) < maxGroup {
		r := g.queue[0]
		g.queue[0], g.queue = nil, g.queue[1:]
		if r.canceled {
			continue
		}
		r.taken = true
		batch = append(batch, r)
	}
	if len(batch) == 0 {
		g.writing = false
		g.queue = nil
	}
	return batch
}

// runGroup runs batch in one transaction and returns each write's outcome.
// If the transaction itself fails (begin, a savepoint statement, commit), no
// write of the batch is durable: the writes that had succeeded are run again
// one transaction each, so one bad batch (say, a constraint checked at commit
// or an I/O error) costs time, not enrollments. A write refused because of
// an earlier write of the same failed batch (say, the same token used twice)
// keeps its refusal: the safe direction, though its reason may then be moot.
func (d *DB) runGroup(batch []*groupReq) []error {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	errs := make([]error, len(batch))
	if len(batch) == 1 {
		errs[0] = d.tx(ctx, func(tx *sql.Tx) error { return callTx(ctx, tx, batch[0].fn) })
		return errs
	}
	err := d.tx(ctx, func(sqltx *sql.Tx) error {
		tx := cached{d, sqltx} // the savepoint statements, prepared at Open
		for i, r := range batch {
			if _, err := tx.ExecContext(ctx, sqlSavepoint); err != nil {
				return fmt.Errorf("savepoint: %w", err)
			}
			if errs[i] = callTx(ctx, sqltx, r.fn); errs[i] != nil {
				if _, err := tx.ExecContext(ctx, sqlRollbackToSavepoint); err != nil {
					return fmt.Errorf("rolling back to savepoint: %w", err)
				}
			}
			if _, err := tx.ExecContext(ctx, sqlReleaseSavepoint); err != nil {
				return fmt.Errorf("releasing savepoint: %w", err)
			}
		}
		return nil
	})
	if err == nil {
		return errs
	}
	for i, r := range batch {
		if errs[i] == nil {
			errs[i] = d.tx(ctx, func(tx *sql.Tx) error { return callTx(ctx, tx, r.fn) })
		}
	}
	return errs
}

// callTx runs fn, turning a panic into its error: one write's bug must not
// take the batch (and its writer goroutine) down.
func callTx(ctx context.Context, tx *sql.Tx, fn txFunc) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = errors.New(fmt.Sprint("store: write failed: panic: ", p))
		}
	}()
	return fn(ctx, tx)
}
