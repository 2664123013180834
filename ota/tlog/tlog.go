// Package tlog is fosterd's transparency log for install attestations: an
// append-only RFC 6962 Merkle tree kept in Foster's store (SQLite or
// PostgreSQL), with C2SP signed-note checkpoints.
//
// Threat model: the log lets auditors check that the operator shows everyone
// the same, append-only history of attestations. The log key (an Ed25519
// note key, see GenerateKey) signs checkpoints; its public half is the only
// thing an auditor needs, together with pkg/tlogverify. The log never edits
// or deletes a leaf: leaves, perfect-subtree node hashes and checkpoints are
// written once, in the same transaction, so a crash leaves either the whole
// batch and its checkpoint or none of it. On open and whenever another
// writer moved the tree, the log recomputes the root of the stored tree and
// refuses to go on (ErrCorrupt) unless it matches the latest checkpoint, so
// it never signs a checkpoint over a tree edited behind its back.
//
// Hashing, compact ranges and proof shapes come from
// github.com/transparency-dev/merkle; this package only stores and fetches
// node hashes. The log deduplicates nothing: the ingest path decides what is
// worth logging (replay defence lives in the store). AppendWith lets that
// path write its own rows (the accepted attestation and its leaf index) in
// the append's transaction, so the store and the log never disagree.
package tlog

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/store"
)

// Limits. Every input is bounded.
const (
	MaxLeafSize     = 128 << 10 // bytes per leaf (an attestation envelope is <= 64 KiB)
	MaxAppendLeaves = 1000      // leaves per Append call
	MaxAppendBytes  = 16 << 20  // bytes of leaf data per Append call
	MaxEntries      = 1000      // leaves per Entries call
	MaxEntriesBytes = 8 << 20   // bytes of leaf data per Entries call (at least one leaf is returned)
	MaxOriginLength = 256       // bytes

	maxBatchLeaves = 4096             // leaves per transaction when concurrent Appends are merged
	maxBatchBytes  = 16 << 20         // bytes of leaf data per transaction
	batchTimeout   = 30 * time.Second // per transaction, independent of any one caller's context
	insertRows     = 500              // rows per multi-row INSERT (3 placeholders each)
)

// Errors callers branch on with errors.Is.
var (
	// ErrInvalid: the arguments are malformed (empty or oversized batch,
	// negative index, from > to, wrong hash length).
	ErrInvalid = errors.New("tlog: invalid request")
	// ErrOutOfRange: the request names an index or size beyond the tree.
	ErrOutOfRange = errors.New("tlog: beyond the end of the log")
	// ErrNotFound: no leaf has this hash. It also matches store.ErrNotFound.
	ErrNotFound = fmt.Errorf("tlog: leaf %w", store.ErrNotFound)
	// ErrCorrupt: the stored tree does not match its own signed checkpoint
	// (edited or damaged database). The log refuses to append.
	ErrCorrupt = errors.New("tlog: stored tree does not match its checkpoint")
)

var hasher = rfc6962.DefaultHasher

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// Log is an append-only Merkle log stored in a store.DB. It is safe for
// concurrent use. Appends are serialized: concurrent Append calls are merged
// into one transaction and one checkpoint signature (group commit: while one
// batch commits, the next one collects). Several Logs, in one process or in
// several fosterd replicas, may share a database; they take turns through
// the database's write lock.
type Log struct {
	db     *store.DB
	origin string
	signer note.Signer

	mu      sync.Mutex
	queue   []*request // pending appends, in arrival order
	writing bool       // a writer goroutine is draining queue

	cache nodeCache // committed node hashes
	stmts sync.Map  // savepoint statements, prepared once (see exec)

	// rng is the compact range of the tree as this Log last committed or
	// loaded it. Only the (single) writer goroutine and Open touch it; the
	// writing flag under mu hands it from one writer to the next.
	rng *compact.Range
}

type request struct {
	leaves  [][]byte
	bytes   int
	prepare Prepare     // nil for plain Append
	done    chan result // buffered: the writer never blocks on it
	// Guarded by Log.mu.
	canceled bool // the caller gave up before the batch was taken
	taken    bool
}

type result struct {
	first int64
	cp    []byte
	err   error
}

// GenerateKey creates a log key named origin: skey is the private signer key
// (keep it like a CA key), vkey the public verifier key auditors pin.
func GenerateKey(origin string) (skey, vkey string, err error) {
	if err := checkOrigin(origin); err != nil {
		return "", "", err
	}
	return note.GenerateKey(rand.Reader, origin)
}

// Open opens (creating on first use) the log named origin in db. signer is
// the log key; its name must be origin, so checkpoints verify with the
// matching vkey and name this log. A database holds one log: opening it with
// another origin fails.
func Open(ctx context.Context, db *store.DB, origin string, signer note.Signer) (*Log, error) {
	if db == nil || signer == nil {
		return nil, fmt.Errorf("%w: tlog.Open needs a store and a signer", ErrInvalid)
	}
	if err := checkOrigin(origin); err != nil {
		return nil, err
	}
	if signer.Name() != origin {
		return nil, fmt.Errorf("%w: log key is named %q, the log's origin is %q", ErrInvalid, signer.Name(), origin)
	}
	if err := migrate(ctx, db); err != nil {
		return nil, err
	}
	l := &Log{db: db, origin: origin, signer: signer}
	if err := l.init(ctx); err != nil {
		return nil, err
	}
	if err := l.prepareStatements(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func checkOrigin(origin string) error {
	ok := origin != "" && len(origin) <= MaxOriginLength && utf8.ValidString(origin)
	for _, r := range origin {
		if !ok {
			break
		}
		ok = unicode.IsPrint(r) && !unicode.IsSpace(r) && r != '+'
	}
	if !ok {
		return fmt.Errorf("%w: log origin %q must be 1-%d printable bytes without spaces or '+'", ErrInvalid, origin, MaxOriginLength)
	}
	return nil
}

// init creates the log on first use (size 0 and its signed checkpoint, in
// one transaction; concurrent Opens race harmlessly) and loads the tree.
func (l *Log) init(ctx context.Context) error {
	err := l.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, l.db.Rebind(
			`INSERT INTO tlog_meta (id, origin, size) VALUES (1, ?, 0) ON CONFLICT (id) DO NOTHING`), l.origin)
		if err != nil {
			return fmt.Errorf("creating log: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // already exists
		}
		cp, err := l.sign(0, hasher.EmptyRoot())
		if err != nil {
			return err
		}
		return l.insertCheckpoint(ctx, tx, 0, hasher.EmptyRoot(), cp)
	})
	if err != nil {
		return err
	}
	var origin string
	var size int64
	err = l.db.SQL().QueryRowContext(ctx, `SELECT origin, size FROM tlog_meta WHERE id = 1`).Scan(&origin, &size)
	if err != nil {
		return fmt.Errorf("reading log state: %w", err)
	}
	if origin != l.origin {
		return fmt.Errorf("%w: this database holds log %q, not %q", ErrInvalid, origin, l.origin)
	}
	l.rng, err = l.loadRange(ctx, l.db.SQL(), size)
	return err
}

// beginner starts transactions: the pool (*sql.DB) or one connection (*sql.Conn).
type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

func (l *Log) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	return inTxOn(ctx, l.db.SQL(), fn)
}

func inTxOn(ctx context.Context, b beginner, fn func(*sql.Tx) error) error {
	tx, err := b.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("tlog: beginning transaction: %w", err)
	}
	defer tx.Rollback() // no-op after Commit; releases the write lock on error or panic
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("tlog: committing: %w", err)
	}
	return nil
}

// querier is what reads need from *sql.DB and *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Append adds leaves to the log atomically, contiguously and in order, and
// returns the index of the first one and a signed checkpoint that covers
// them all (it may cover later leaves too). Concurrent calls are batched
// into one transaction.
//
// If ctx ends before the batch holding the leaves was started, nothing is
// appended. If it ends while that batch commits, Append returns an error
// wrapping ctx.Err() and the leaves may or may not be in the log (LeafIndex
// tells).
func (l *Log) Append(ctx context.Context, leaves [][]byte) (first int64, cp []byte, err error) {
	return l.AppendWith(ctx, leaves, nil)
}

// Prepare writes the caller's own rows for an append, in the transaction
// that appends the leaves. first is the index the first leaf will get.
// Returning an error drops this append alone: its writes are rolled back (to
// a savepoint), its leaves are not appended, other appends in the batch go
// on, and AppendWith returns that error. Prepare must use only tx, must not
// keep it, and must be quick: the whole batch waits for it.
type Prepare func(ctx context.Context, tx *sql.Tx, first int64) error

// AppendWith is Append with prepare run inside the append's transaction, so
// that a row recording the entry (say, an accepted attestation and its leaf
// index) commits if and only if the leaves do. prepare may be nil.
func (l *Log) AppendWith(ctx context.Context, leaves [][]byte, prepare Prepare) (first int64, cp []byte, err error) {
	if len(leaves) == 0 || len(leaves) > MaxAppendLeaves {
		return 0, nil, fmt.Errorf("%w: append takes 1-%d leaves, got %d", ErrInvalid, MaxAppendLeaves, len(leaves))
	}
	r := &request{leaves: make([][]byte, len(leaves)), prepare: prepare, done: make(chan result, 1)}
	for i, leaf := range leaves {
		if len(leaf) > MaxLeafSize {
			return 0, nil, fmt.Errorf("%w: leaf %d is %d bytes, limit %d", ErrInvalid, i, len(leaf), MaxLeafSize)
		}
		if r.bytes += len(leaf); r.bytes > MaxAppendBytes {
			return 0, nil, fmt.Errorf("%w: append exceeds %d bytes", ErrInvalid, MaxAppendBytes)
		}
		// Own a copy: a caller that gives up may reuse its buffers.
		r.leaves[i] = append([]byte(nil), leaf...)
	}
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}

	l.mu.Lock()
	l.queue = append(l.queue, r)
	start := !l.writing
	l.writing = true
	l.mu.Unlock()
	if start {
		go l.write()
	}

	select {
	case res := <-r.done:
		return res.first, res.cp, res.err
	case <-ctx.Done():
	}
	l.mu.Lock()
	taken := r.taken
	r.canceled = !taken
	l.mu.Unlock()
	if !taken {
		return 0, nil, ctx.Err()
	}
	select {
	case res := <-r.done: // finished meanwhile: report the real outcome
		return res.first, res.cp, res.err
	default:
		return 0, nil, fmt.Errorf("tlog: gave up waiting, the append may still complete: %w", ctx.Err())
	}
}

// write drains the queue one batch (one transaction) at a time and exits
// when it is empty. Exactly one write runs at a time (Log.writing).
//
// While batches keep coming, the writer keeps one connection, so under load
// it never queues for the pool behind readers; it returns it when idle.
func (l *Log) write() {
	var conn *sql.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		batch := l.take()
		if batch == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		var b beginner = l.db.SQL()
		if conn == nil {
			conn, _ = l.db.SQL().Conn(ctx) // on error, use the pool
		}
		if conn != nil {
			b = conn
		}
		firsts, errs, cp, err := l.commit(ctx, b, batch)
		cancel()
		if err != nil && conn != nil {
			conn.Close() // it may be broken: take a fresh one next time
			conn = nil
		}
		for i, r := range batch {
			switch {
			case err != nil:
				r.done <- result{err: err}
			case errs[i] != nil:
				r.done <- result{err: errs[i]}
			default:
				r.done <- result{first: firsts[i], cp: cp}
			}
		}
	}
}

// take removes the next batch from the queue, or returns nil and clears
// l.writing when there is nothing left.
func (l *Log) take() []*request {
	l.mu.Lock()
	defer l.mu.Unlock()
	var batch []*request
	leaves, bytes := 0, 0
	for len(l.queue) > 0 {
		r := l.queue[0]
		if r.canceled {
			l.queue[0], l.queue = nil, l.queue[1:]
			continue
		}
		if len(batch) > 0 && (leaves+len(r.leaves) > maxBatchLeaves || bytes+r.bytes > maxBatchBytes) {
			break
		}
		r.taken = true
		batch = append(batch, r)
		leaves += len(r.leaves)
		bytes += r.bytes
		l.queue[0], l.queue = nil, l.queue[1:]
	}
	if len(batch) == 0 {
		l.writing = false
		l.queue = nil
	}
	return batch
}

type nodeRow struct {
	id   compact.NodeID
	hash []byte
}

// commit appends the batch in one transaction and signs one checkpoint for
// it. It returns each request's first index, or its Prepare error (that
// request appended nothing).
func (l *Log) commit(ctx context.Context, b beginner, batch []*request) (firsts []int64, errs []error, cp []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tlog: append failed: panic: %v", p)
		}
	}()
	var next *compact.Range
	var fresh []nodeRow // leaf hashes, for the cache once committed
	err = inTxOn(ctx, b, func(tx *sql.Tx) error {
		fresh = fresh[:0]
		lock := ""
		if l.db.IsPostgres() {
			lock = " FOR UPDATE" // SQLite transactions are BEGIN IMMEDIATE: already exclusive
		}
		var size int64
		if err := tx.QueryRowContext(ctx, `SELECT size FROM tlog_meta WHERE id = 1`+lock).Scan(&size); err != nil {
			return fmt.Errorf("tlog: reading log size: %w", err)
		}
		cur := l.rng
		if cur == nil || int64(cur.End()) != size {
			// Another writer (replica) appended, or our last commit's outcome
			// was unknown: start again from what the database holds.
			var err error
			if cur, err = l.loadRange(ctx, tx, size); err != nil {
				return err
			}
			l.rng = cur
		}
		next, err = rangeFactory.NewRange(0, cur.End(), append([][]byte(nil), cur.Hashes()...))
		if err != nil {
			return fmt.Errorf("tlog: %w", err)
		}

		var leafArgs []any
		var nodes []nodeRow
		visit := func(id compact.NodeID, h []byte) {
			if id.Level > 0 { // level 0 is the leaf hash, stored with the leaf
				nodes = append(nodes, nodeRow{id, h})
			}
		}
		firsts = make([]int64, len(batch))
		errs = make([]error, len(batch))
		for i, r := range batch {
			firsts[i] = int64(next.End())
			if r.prepare != nil {
				if errs[i] = l.prepare(ctx, tx, r.prepare, firsts[i]); errs[i] != nil {
					if errors.Is(errs[i], errTx) {
						return errs[i]
					}
					continue
				}
			}
			for _, leaf := range r.leaves {
				h := hasher.HashLeaf(leaf)
				leafArgs = append(leafArgs, int64(next.End()), h, leaf)
				fresh = append(fresh, nodeRow{compact.NewNodeID(0, next.End()), h})
				if err := next.Append(h, visit); err != nil {
					return fmt.Errorf("tlog: %w", err)
				}
			}
		}
		if err := l.insertRows(ctx, tx, "tlog_leaves (idx, leaf_hash, data)", leafArgs); err != nil {
			return err
		}
		fresh = append(fresh, nodes...)
		nodeArgs := make([]any, 0, 3*len(nodes))
		for _, n := range nodes {
			nodeArgs = append(nodeArgs, int64(n.id.Level), int64(n.id.Index), n.hash)
		}
		if err := l.insertRows(ctx, tx, "tlog_nodes (level, idx, hash)", nodeArgs); err != nil {
			return err
		}

		newSize := int64(next.End())
		if newSize == size {
			return nil // every Prepare refused: nothing to append or sign
		}
		root, err := rootOf(next)
		if err != nil {
			return err
		}
		if cp, err = l.sign(newSize, root); err != nil {
			return err
		}
		if err := l.insertCheckpoint(ctx, tx, newSize, root, cp); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, l.db.Rebind(`UPDATE tlog_meta SET size = ? WHERE id = 1 AND size = ?`), newSize, size)
		if err != nil {
			return fmt.Errorf("tlog: updating log size: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fmt.Errorf("tlog: log size moved under the write lock (%d rows, %v)", n, err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	l.rng = next
	l.cache.put(fresh)
	return firsts, errs, cp, nil
}

// errTx marks a failure of the transaction itself (not of a Prepare's own
// statements), which dooms the whole batch.
var errTx = errors.New("tlog: transaction failed")

// prepare runs fn after a savepoint, and releases it or, if fn fails,
// rolls back to it.
func (l *Log) prepare(ctx context.Context, tx *sql.Tx, fn Prepare, first int64) (err error) {
	if err := l.exec(ctx, tx, `SAVEPOINT tlog_prepare`); err != nil {
		return fmt.Errorf("%w: savepoint: %v", errTx, err)
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("tlog: prepare panicked: %v", p)
			}
		}()
		err = fn(ctx, tx, first)
	}()
	stmts := []string{`RELEASE SAVEPOINT tlog_prepare`}
	if err != nil {
		stmts = []string{`ROLLBACK TO SAVEPOINT tlog_prepare`, `RELEASE SAVEPOINT tlog_prepare`}
	}
	for _, stmt := range stmts {
		if serr := l.exec(ctx, tx, stmt); serr != nil {
			return fmt.Errorf("%w: %s: %v (prepare: %v)", errTx, stmt, serr, err)
		}
	}
	return err
}

// insertRows inserts rows of three columns with multi-row INSERTs.
func (l *Log) insertRows(ctx context.Context, tx *sql.Tx, into string, args []any) error {
	for len(args) > 0 {
		n := min(len(args)/3, insertRows)
		q := "INSERT INTO " + into + " VALUES " + strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", n), ", ")
		if _, err := tx.ExecContext(ctx, l.db.Rebind(q), args[:3*n]...); err != nil {
			return fmt.Errorf("tlog: inserting into %s: %w", into, err)
		}
		args = args[3*n:]
	}
	return nil
}

func (l *Log) insertCheckpoint(ctx context.Context, tx *sql.Tx, size int64, root, cp []byte) error {
	_, err := tx.ExecContext(ctx, l.db.Rebind(
		`INSERT INTO tlog_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)`),
		size, root, cp, time.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("tlog: storing checkpoint %d: %w", size, err)
	}
	return nil
}

// sign makes the C2SP checkpoint note for a tree.
func (l *Log) sign(size int64, root []byte) ([]byte, error) {
	text := fmt.Sprintf("%s\n%d\n%s\n", l.origin, size, base64.StdEncoding.EncodeToString(root))
	cp, err := note.Sign(&note.Note{Text: text}, l.signer)
	if err != nil {
		return nil, fmt.Errorf("tlog: signing checkpoint: %w", err)
	}
	return cp, nil
}

func rootOf(r *compact.Range) ([]byte, error) {
	if r.End() == 0 {
		return hasher.EmptyRoot(), nil
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("tlog: %w", err)
	}
	return root, nil
}

// loadRange rebuilds the compact range of the stored tree of the given size
// (O(log n) reads) and checks its root against that size's checkpoint.
func (l *Log) loadRange(ctx context.Context, q querier, size int64) (*compact.Range, error) {
	hashes, err := l.hashes(ctx, q, compact.RangeNodes(0, uint64(size), nil))
	if err != nil {
		return nil, err
	}
	r, err := rangeFactory.NewRange(0, uint64(size), hashes)
	if err != nil {
		return nil, fmt.Errorf("tlog: %w", err)
	}
	root, err := rootOf(r)
	if err != nil {
		return nil, err
	}
	var signed []byte
	err = q.QueryRowContext(ctx, l.db.Rebind(`SELECT root FROM tlog_checkpoints WHERE size = ?`), size).Scan(&signed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no checkpoint for the current size %d", ErrCorrupt, size)
	}
	if err != nil {
		return nil, fmt.Errorf("tlog: reading checkpoint %d: %w", size, err)
	}
	if string(root) != string(signed) {
		return nil, fmt.Errorf("%w: stored tree of %d leaves hashes to %x, its checkpoint says %x", ErrCorrupt, size, root, signed)
	}
	return r, nil
}

// hashes fetches the stored hashes of perfect-subtree nodes, in ids order.
func (l *Log) hashes(ctx context.Context, q querier, ids []compact.NodeID) ([][]byte, error) {
	if len(ids) == 0 {
		return [][]byte{}, nil
	}
	got := make(map[compact.NodeID][]byte, len(ids))
	var leafIdx, nodeArgs []any
	var nodeConds []string
	for _, id := range ids {
		if h, ok := l.cache.get(id); ok {
			got[id] = h
			continue
		}
		if id.Level == 0 {
			leafIdx = append(leafIdx, int64(id.Index))
		} else {
			nodeConds = append(nodeConds, "(level = ? AND idx = ?)")
			nodeArgs = append(nodeArgs, int64(id.Level), int64(id.Index))
		}
	}
	read := func(query string, args []any, leaf bool) error {
		rows, err := q.QueryContext(ctx, l.db.Rebind(query), args...)
		if err != nil {
			return fmt.Errorf("tlog: reading tree nodes: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var level, idx int64
			var h []byte
			if leaf {
				err = rows.Scan(&idx, &h)
			} else {
				err = rows.Scan(&level, &idx, &h)
			}
			if err != nil {
				return fmt.Errorf("tlog: reading tree nodes: %w", err)
			}
			got[compact.NewNodeID(uint(level), uint64(idx))] = h
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("tlog: reading tree nodes: %w", err)
		}
		return nil
	}
	if len(leafIdx) > 0 {
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(leafIdx)), ", ")
		if err := read(`SELECT idx, leaf_hash FROM tlog_leaves WHERE idx IN (`+marks+`)`, leafIdx, true); err != nil {
			return nil, err
		}
	}
	if len(nodeConds) > 0 {
		if err := read(`SELECT level, idx, hash FROM tlog_nodes WHERE `+strings.Join(nodeConds, " OR "), nodeArgs, false); err != nil {
			return nil, err
		}
	}
	out := make([][]byte, len(ids))
	var seen []nodeRow
	for i, id := range ids {
		h, ok := got[id]
		if !ok || len(h) != hasher.Size() {
			return nil, fmt.Errorf("%w: node (level %d, index %d) is missing", ErrCorrupt, id.Level, id.Index)
		}
		out[i] = h
		seen = append(seen, nodeRow{id, h})
	}
	l.cache.put(seen)
	return out, nil
}
