package tlog

// Reading the log: its size and checkpoint, inclusion and consistency
// proofs, entries and leaf lookups. Appending is in tlog.go.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
)

// size is the committed tree size.
func (l *Log) size(ctx context.Context) (int64, error) {
	var n int64
	if err := l.db.SQL().QueryRowContext(ctx, `SELECT size FROM tlog_meta WHERE id = 1`).Scan(&n); err != nil {
		return 0, fmt.Errorf("tlog: reading log size: %w", err)
	}
	return n, nil
}

// Checkpoint returns the latest signed checkpoint.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) {
	var cp []byte
	err := l.db.SQL().QueryRowContext(ctx,
		`SELECT c.note FROM tlog_checkpoints c JOIN tlog_meta m ON c.size = m.size WHERE m.id = 1`).Scan(&cp)
	if err != nil {
		return nil, fmt.Errorf("tlog: reading latest checkpoint: %w", err)
	}
	return cp, nil
}

// InclusionProof returns the RFC 6962 proof that leaf index is in the tree
// of the given size (0 <= index < size <= the log's size).
func (l *Log) InclusionProof(ctx context.Context, index, size int64) ([][]byte, error) {
	if index < 0 || index >= size {
		return nil, fmt.Errorf("%w: inclusion of leaf %d in a tree of %d", ErrInvalid, index, size)
	}
	if err := l.within(ctx, size); err != nil {
		return nil, err
	}
	nodes, err := proof.Inclusion(uint64(index), uint64(size))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return l.rehash(ctx, nodes)
}

// ConsistencyProof returns the RFC 6962 proof that the tree of size from is
// a prefix of the tree of size to (0 <= from <= to <= the log's size).
func (l *Log) ConsistencyProof(ctx context.Context, from, to int64) ([][]byte, error) {
	if from < 0 || from > to {
		return nil, fmt.Errorf("%w: consistency from %d to %d", ErrInvalid, from, to)
	}
	if err := l.within(ctx, to); err != nil {
		return nil, err
	}
	nodes, err := proof.Consistency(uint64(from), uint64(to))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return l.rehash(ctx, nodes)
}

func (l *Log) within(ctx context.Context, size int64) error {
	n, err := l.size(ctx)
	if err != nil {
		return err
	}
	if size > n {
		return fmt.Errorf("%w: tree size %d requested, the log has %d leaves", ErrOutOfRange, size, n)
	}
	return nil
}

func (l *Log) rehash(ctx context.Context, nodes proof.Nodes) ([][]byte, error) {
	hashes, err := l.hashes(ctx, l.db.SQL(), nodes.IDs)
	if err != nil {
		return nil, err
	}
	p, err := nodes.Rehash(hashes, hasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("tlog: %w", err)
	}
	return p, nil
}

// Entries returns the data of leaves start, start+1, ... up to end
// (exclusive), but at most MaxEntries leaves and MaxEntriesBytes bytes (and
// at least one leaf), and not beyond the end of the log: callers page on
// len(result). start must be below the log's size. Each leaf is checked
// against the leaf hash the tree commits to (ErrCorrupt otherwise).
func (l *Log) Entries(ctx context.Context, start, end int64) ([][]byte, error) {
	if start < 0 || end <= start {
		return nil, fmt.Errorf("%w: entries [%d, %d)", ErrInvalid, start, end)
	}
	n, err := l.size(ctx)
	if err != nil {
		return nil, err
	}
	if start >= n {
		return nil, fmt.Errorf("%w: entry %d requested, the log has %d leaves", ErrOutOfRange, start, n)
	}
	end = min(end, n, start+MaxEntries)
	rows, err := l.db.SQL().QueryContext(ctx, l.db.Rebind(
		`SELECT idx, leaf_hash, data FROM tlog_leaves WHERE idx >= ? AND idx < ? ORDER BY idx`), start, end)
	if err != nil {
		return nil, fmt.Errorf("tlog: reading entries: %w", err)
	}
	defer rows.Close()
	out := make([][]byte, 0, end-start)
	total := 0
	for rows.Next() {
		var idx int64
		var h, data []byte
		if err := rows.Scan(&idx, &h, &data); err != nil {
			return nil, fmt.Errorf("tlog: reading entries: %w", err)
		}
		if idx != start+int64(len(out)) {
			return nil, fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, start+int64(len(out)))
		}
		// The tree commits to leaf_hash; never serve data it does not commit to.
		if string(hasher.HashLeaf(data)) != string(h) {
			return nil, fmt.Errorf("%w: leaf %d does not match its hash", ErrCorrupt, idx)
		}
		if total += len(data); total > MaxEntriesBytes && len(out) > 0 {
			return out, nil
		}
		out = append(out, data)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("tlog: reading entries: %w", err)
	}
	if int64(len(out)) != end-start {
		return nil, fmt.Errorf("%w: leaf %d is missing", ErrCorrupt, start+int64(len(out)))
	}
	return out, nil
}

// LeafIndex returns the index of the first leaf whose RFC 6962 leaf hash is
// leafHash (SHA-256(0x00 || data)), or ErrNotFound.
func (l *Log) LeafIndex(ctx context.Context, leafHash []byte) (int64, error) {
	if len(leafHash) != hasher.Size() {
		return 0, fmt.Errorf("%w: leaf hash is %d bytes, want %d", ErrInvalid, len(leafHash), hasher.Size())
	}
	var idx int64
	err := l.db.SQL().QueryRowContext(ctx, l.db.Rebind(
		`SELECT idx FROM tlog_leaves WHERE leaf_hash = ? ORDER BY idx LIMIT 1`), leafHash).Scan(&idx)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: %x", ErrNotFound, leafHash)
	}
	if err != nil {
		return 0, fmt.Errorf("tlog: looking up leaf: %w", err)
	}
	return idx, nil
}
