package tlog

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	"github.com/transparency-dev/merkle/compact"
)

// nodeCache remembers perfect-subtree hashes this process committed or
// read. Nodes never change once committed (the tree is append-only), so
// the cache needs no invalidation; it only spares the database the reads
// of the proofs every fresh attestation needs (the leaves and subtrees on
// the right edge of the tree, which the last batches just wrote). It is
// filled only after a commit succeeds, never with a rolled-back batch's
// nodes. Two generations bound it: when the young one fills, the old one
// is dropped. Safe for concurrent use.
type nodeCache struct {
	mu         sync.Mutex
	young, old map[compact.NodeID][]byte
}

const nodeCacheGeneration = 1 << 16 // nodes per generation (~6 MiB each)

func (c *nodeCache) get(id compact.NodeID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.young[id]; ok {
		return h, true
	}
	if h, ok := c.old[id]; ok {
		c.putLocked(id, h)
		return h, true
	}
	return nil, false
}

func (c *nodeCache) put(rows []nodeRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rows {
		c.putLocked(r.id, r.hash)
	}
}

func (c *nodeCache) putLocked(id compact.NodeID, h []byte) {
	if c.young == nil || len(c.young) >= nodeCacheGeneration {
		c.old, c.young = c.young, make(map[compact.NodeID][]byte, 1024)
	}
	c.young[id] = h
}

// exec runs a parameterless statement in tx, through a statement prepared
// once when the log opened (see prepareStatements); unprepared otherwise.
func (l *Log) exec(ctx context.Context, tx *sql.Tx, query string) error {
	if st, ok := l.stmts.Load(query); ok {
		_, err := tx.StmtContext(ctx, st.(*sql.Stmt)).ExecContext(ctx)
		return err
	}
	_, err := tx.ExecContext(ctx, query)
	return err
}

// savepointStatements are what every AppendWith Prepare runs.
var savepointStatements = []string{`SAVEPOINT tlog_prepare`, `RELEASE SAVEPOINT tlog_prepare`, `ROLLBACK TO SAVEPOINT tlog_prepare`}

// prepareStatements prepares the savepoint statements on the pool. It runs
// in Open, outside any transaction: preparing on the pool from inside one
// could wait for a connection held by a transaction waiting for ours. A
// statement that does not prepare fails Open.
func (l *Log) prepareStatements(ctx context.Context) error {
	for _, q := range savepointStatements {
		st, err := l.db.SQL().PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("tlog: preparing %s: %w", q, err)
		}
		l.stmts.Store(q, st)
	}
	return nil
}
