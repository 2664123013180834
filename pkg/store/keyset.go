package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The online key record: which online keys every fosterd replica uses (TUF
// timestamp, snapshot and targets keys, keys held during a rotation, the
// issuing CA). `foster tuf rotate` and `foster ca use-intermediate` change
// it through one replica; every replica polls its version and loads the
// keys it names (ota/instance keyset.go). The body is opaque here (JSON
// owned by ota/instance); the store versions it and serialises changes.
//
// Each replica also reports which version it loaded (or why it could not)
// in key_set_replicas, so a rotation can wait until every live replica holds
// a new key before a root that needs it is published.

const keySetSchema = `
CREATE TABLE IF NOT EXISTS key_set (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	version BIGINT NOT NULL,
	body TEXT NOT NULL,
	updated_at BIGINT NOT NULL,
	updated_by TEXT NOT NULL
);
INSERT INTO key_set (id, version, body, updated_at, updated_by) VALUES (1, 0, '', 0, '') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS key_set_replicas (
	name TEXT PRIMARY KEY,
	version BIGINT NOT NULL,
	error TEXT NOT NULL,
	seen_at BIGINT NOT NULL
)
`

// migrateKeySet is schema migration 2.
func (d *DB) migrateKeySet(ctx context.Context) error {
	return d.execSchema(ctx, "store schema (key_set)", keySetSchema)
}

// MaxKeySetBody bounds the key record (a few key references and one
// intermediate certificate chain).
const MaxKeySetBody = 64 << 10 // bytes

// KeySet is a version of the online key record. Version 0 (empty Body):
// never set; config.json alone names the keys.
type KeySet struct {
	Version   int64     `json:"version"`
	Body      []byte    `json:"-"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

// ErrKeySetUnchanged: UpdateKeySet's function made no change; nothing was written.
var ErrKeySetUnchanged = errors.New("key record unchanged")

const sqlKeySet = `SELECT version, body, updated_at, updated_by FROM key_set WHERE id = 1`

// KeySet reads the current key record: one point read, which replicas poll.
func (d *DB) KeySet(ctx context.Context) (KeySet, error) {
	return d.readKeySet(ctx, d.db.QueryRowContext(ctx, sqlKeySet))
}

func (d *DB) readKeySet(_ context.Context, row *sql.Row) (KeySet, error) {
	var k KeySet
	var body string
	var at int64
	if err := row.Scan(&k.Version, &body, &at, &k.UpdatedBy); err != nil {
		return KeySet{}, fmt.Errorf("reading the key record: %w", err)
	}
	k.Body, k.UpdatedAt = []byte(body), fromTS(at)
	return k, nil
}

// UpdateKeySet replaces the key record with what fn returns for the current
// one, as version + 1, under a lock (replicas' changes are serialised: fn
// always sees the latest version). If fn fails, or returns
// ErrKeySetUnchanged, nothing is written; the error is returned (nil for
// ErrKeySetUnchanged, with the current record).
func (d *DB) UpdateKeySet(ctx context.Context, by string, fn func(cur KeySet) ([]byte, error)) (KeySet, error) {
	var out KeySet
	err := d.tx(ctx, func(tx *sql.Tx) error {
		cur, err := d.readKeySet(ctx, tx.QueryRowContext(ctx, sqlKeySet+d.forUpdate()))
		if err != nil {
			return err
		}
		body, err := fn(cur)
		if errors.Is(err, ErrKeySetUnchanged) {
			out = cur
			return nil
		}
		if err != nil {
			return err
		}
		if len(body) == 0 || len(body) > MaxKeySetBody {
			return fmt.Errorf("key record of %d bytes: want 1 to %d", len(body), MaxKeySetBody)
		}
		next := KeySet{Version: cur.Version + 1, Body: body, UpdatedAt: d.now(), UpdatedBy: by}
		if _, err := tx.ExecContext(ctx, d.q(`UPDATE key_set SET version = ?, body = ?, updated_at = ?, updated_by = ? WHERE id = 1 AND version = ?`),
			next.Version, string(body), ts(next.UpdatedAt), by, cur.Version); err != nil {
			return fmt.Errorf("writing the key record: %w", err)
		}
		out = next
		return nil
	})
	return out, err
}

// KeySetReplica is what one fosterd reported about the key record.
type KeySetReplica struct {
	// Name identifies the replica: host name and listen address.
	Name string `json:"name"`
	// Version is the key record version it uses.
	Version int64 `json:"version"`
	// Error says why it could not load a newer version ("" if none).
	Error  string    `json:"error,omitempty"`
	SeenAt time.Time `json:"seen_at"`
}

// ReportKeySetReplica records r (SeenAt is now).
func (d *DB) ReportKeySetReplica(ctx context.Context, r KeySetReplica) error {
	if len(r.Error) > 4096 {
		r.Error = r.Error[:4096]
	}
	_, err := d.db.ExecContext(ctx, d.q(`INSERT INTO key_set_replicas (name, version, error, seen_at) VALUES (?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET version = excluded.version, error = excluded.error, seen_at = excluded.seen_at`),
		r.Name, r.Version, r.Error, ts(d.now()))
	if err != nil {
		return fmt.Errorf("reporting key record version %d: %w", r.Version, err)
	}
	return nil
}

// RemoveKeySetReplica forgets a replica (it shut down).
func (d *DB) RemoveKeySetReplica(ctx context.Context, name string) error {
	if _, err := d.db.ExecContext(ctx, d.q(`DELETE FROM key_set_replicas WHERE name = ?`), name); err != nil {
		return fmt.Errorf("removing replica %s: %w", name, err)
	}
	return nil
}

// KeySetReplicas lists the replicas seen since seenAfter, by name; older
// rows (replicas that stopped or were killed) are deleted.
func (d *DB) KeySetReplicas(ctx context.Context, seenAfter time.Time) ([]KeySetReplica, error) {
	if _, err := d.db.ExecContext(ctx, d.q(`DELETE FROM key_set_replicas WHERE seen_at < ?`), ts(seenAfter)); err != nil {
		return nil, fmt.Errorf("listing replicas: %w", err)
	}
	rows, err := d.db.QueryContext(ctx, `SELECT name, version, error, seen_at FROM key_set_replicas ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing replicas: %w", err)
	}
	defer rows.Close()
	var out []KeySetReplica
	for rows.Next() {
		var r KeySetReplica
		var at int64
		if err := rows.Scan(&r.Name, &r.Version, &r.Error, &at); err != nil {
			return nil, fmt.Errorf("listing replicas: %w", err)
		}
		r.SeenAt = fromTS(at)
		out = append(out, r)
	}
	return out, rows.Err()
}
