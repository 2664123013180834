package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The TUF repository's publish record: one row in tuf_state naming the
// timestamp.json last published (its version and ETag, the hash of its
// bytes). Replicas of fosterd that share a PostgreSQL database and a bucket
// take turns publishing by locking this row (SELECT ... FOR UPDATE) for the
// whole publish and update it in the same transaction; a replica that finds
// a record other than its in-memory repository reloads the repository from
// the bucket first, and polls the record to notice what others published.
//
// SQLite serves one fosterd: its write transactions (BEGIN IMMEDIATE) are
// already exclusive, and the repository does not use the record there.

// ErrPublishBusy: another writer held the TUF publish lock for longer than
// PublishLockTimeout.
var ErrPublishBusy = errors.New("another fosterd is publishing the TUF repository")

// PublishLockTimeout bounds how long a publish waits for another replica's
// publish to finish (PostgreSQL lock_timeout).
const PublishLockTimeout = 60 * time.Second

const tufStateSchema = `
CREATE TABLE IF NOT EXISTS tuf_state (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	timestamp_version BIGINT NOT NULL,
	timestamp_etag TEXT NOT NULL
);
INSERT INTO tuf_state (id, timestamp_version, timestamp_etag) VALUES (1, 0, '') ON CONFLICT DO NOTHING
`

func (d *DB) migrateTUFState(ctx context.Context) error {
	return d.execSchema(ctx, "store schema (tuf_state)", tufStateSchema)
}

// TUFLock is a held TUF publish lock: a store transaction that has locked
// the publish record. It is valid only inside the function it was passed to.
type TUFLock struct {
	d        *DB
	tx       *sql.Tx
	read     bool // version and etag loaded
	version  int64
	etag     string
	recorded bool
}

// Published returns the timestamp version and ETag recorded by the last
// publish (0 and "" if none was recorded).
func (l *TUFLock) Published(ctx context.Context) (version int64, etag string, err error) {
	if !l.read {
		err := l.tx.QueryRowContext(ctx, `SELECT timestamp_version, timestamp_etag FROM tuf_state WHERE id = 1`+l.d.forUpdate()).Scan(&l.version, &l.etag)
		if err != nil {
			return 0, "", lockError(err)
		}
		l.read = true
	}
	return l.version, l.etag, nil
}

// Record records a published timestamp; it takes effect when the
// transaction commits.
func (l *TUFLock) Record(ctx context.Context, version int64, etag string) error {
	if _, err := l.tx.ExecContext(ctx, l.d.q(`UPDATE tuf_state SET timestamp_version = ?, timestamp_etag = ? WHERE id = 1`), version, etag); err != nil {
		return fmt.Errorf("recording published TUF timestamp %d: %w", version, err)
	}
	l.version, l.etag, l.read, l.recorded = version, etag, true, true
	return nil
}

// lock takes the publish lock in tx (PostgreSQL: waits at most
// PublishLockTimeout for another replica's publish).
func (d *DB) lockTUF(ctx context.Context, tx *sql.Tx) (*TUFLock, error) {
	l := &TUFLock{d: d, tx: tx}
	if d.dialect != postgres {
		return l, nil // BEGIN IMMEDIATE already excludes other writers; read lazily
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d`, PublishLockTimeout.Milliseconds())); err != nil {
		return nil, fmt.Errorf("taking the TUF publish lock: %w", err)
	}
	if _, _, err := l.Published(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func lockError(err error) error {
	if strings.Contains(err.Error(), "SQLSTATE 55P03") {
		return fmt.Errorf("%w: waited %v for the TUF publish lock: %v", ErrPublishBusy, PublishLockTimeout, err)
	}
	return fmt.Errorf("taking the TUF publish lock: %w", err)
}

// PublishTUF runs fn holding the TUF publish lock, in a transaction that
// commits what fn recorded if fn returns nil (and rolls back otherwise).
func (d *DB) PublishTUF(ctx context.Context, fn func(*TUFLock) error) error {
	return d.tx(ctx, func(tx *sql.Tx) error {
		l, err := d.lockTUF(ctx, tx)
		if err != nil {
			return err
		}
		return fn(l)
	})
}

// PublishedTUF returns the recorded timestamp version and ETag without
// locking: one point read, for replicas that poll for other replicas'
// publishes.
func (d *DB) PublishedTUF(ctx context.Context) (version int64, etag string, err error) {
	err = cached{d, nil}.QueryRowContext(ctx, d.q(sqlPublishedTUF)).Scan(&version, &etag)
	if err != nil {
		return 0, "", fmt.Errorf("reading published TUF timestamp: %w", err)
	}
	return version, etag, nil
}
