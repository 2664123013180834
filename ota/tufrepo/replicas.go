package tufrepo

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Arbiter lets several Repos (fosterd replicas) publish to one blob store:
// it is a lock that excludes every other Repo's publish, plus a record of the
// timestamp.json last published (its version and ETag). fosterd implements
// it on its PostgreSQL store (a row lock on one row, pkg/store tufstate.go).
//
// Under the lock, a Repo first compares the store's timestamp.json with its
// own: if another Repo published since, it reloads the repository from the
// store (and refuses to publish, ErrInconsistent, if the store went back
// behind its own state or the recorded one: rollback); it then publishes
// versions above the newest, and records its timestamp before the lock is
// released. Sync polls the record, so a Repo that does not publish still
// serves what the others published.
type Arbiter interface {
	// Publish calls fn holding the lock, and makes what fn recorded
	// durable (and releases the lock) when fn returns nil; if fn fails,
	// nothing is recorded.
	Publish(ctx context.Context, fn func(Lease) error) error
	// Published returns the recorded version and ETag of timestamp.json
	// (0 and "" if none), without taking the lock. Sync calls it often:
	// it must be cheap.
	Published(ctx context.Context) (version int64, etag string, err error)
}

// Lease is a held Arbiter lock. It is valid only inside the function it was
// passed to.
type Lease interface {
	// Published: as Arbiter.Published, as of the lock.
	Published(ctx context.Context) (version int64, etag string, err error)
	// Record records a published timestamp.json.
	Record(ctx context.Context, version int64, etag string) error
}

// locked runs fn, which publishes, holding the publish lock: mu, and with an
// Arbiter its lock too (lease if the caller holds it, else one taken here),
// after catching up with whatever other Repos published; what fn published
// is recorded under that lock. fn's error is returned; a publish that fn
// made is recorded even if fn also reports an error (Refresh renews what it
// can, then reports missing keys).
func (r *Repo) locked(ctx context.Context, lease Lease, fn func() error) error {
	arb := r.opts.Arbiter
	if arb == nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		return fn()
	}
	var fnErr error
	published := false
	run := func(l Lease) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := r.catchUp(ctx, l); err != nil {
			return err
		}
		before := r.cur.Load()
		fnErr = fn()
		st := r.cur.Load()
		if st == before {
			if fnErr == nil {
				fnErr = errNothingPublished // commit nothing, but succeed
			}
			return fnErr
		}
		published = true
		if err := l.Record(ctx, st.timestamp.Signed.Version, st.timestampETag); err != nil {
			return err
		}
		return nil
	}
	var err error
	if lease != nil {
		err = run(lease)
	} else {
		r.lockMu.Lock()
		err = arb.Publish(ctx, run)
		r.lockMu.Unlock()
	}
	if errors.Is(fnErr, errNothingPublished) {
		return nil
	}
	if published && err != nil {
		st := r.cur.Load()
		return errors.Join(fnErr, fmt.Errorf("timestamp %d is published, but recording it for other fosterd replicas failed (they see it at their next publish): %w", st.timestamp.Signed.Version, err))
	}
	if err != nil && !errors.Is(err, fnErr) {
		return err
	}
	return fnErr
}

var errNothingPublished = errors.New("nothing published")

// catchUp makes r's state the one in the store, under the Arbiter's lock.
// It reads timestamp.json itself rather than trusting the record alone: a
// Repo that wrote timestamp.json and then failed to record it must not be
// overwritten at the same version.
func (r *Repo) catchUp(ctx context.Context, l Lease) error {
	recorded, _, err := l.Published(ctx)
	if err != nil {
		return err
	}
	st := r.cur.Load()
	raw, err := readBounded(ctx, r.store, timestampKey, MaxTimestampSize)
	if err != nil {
		return fmt.Errorf("checking the published timestamp: %w", err)
	}
	if etagOf(raw) != st.timestampETag {
		next, err := load(ctx, r.store, st)
		if err != nil {
			return fmt.Errorf("reloading the repository another writer published: %w", err)
		}
		if next.timestamp.Signed.Version < st.timestamp.Signed.Version {
			return fmt.Errorf("%w: rollback: the store's timestamp.json is version %d, below the %d this process published; refusing to publish over it",
				ErrInconsistent, next.timestamp.Signed.Version, st.timestamp.Signed.Version)
		}
		st = next
	}
	if v := st.timestamp.Signed.Version; recorded > v {
		return fmt.Errorf("%w: rollback: the database records timestamp version %d but the store holds %d (was the bucket restored from a backup?); refusing to publish",
			ErrInconsistent, recorded, v)
	}
	r.cur.Store(st)
	return nil
}

// Sync reloads the repository if the Arbiter records a newer timestamp than
// r serves (another Repo published): one cheap read when nothing changed.
// The new state replaces the old one whole, so readers see one or the
// other, never a mix. Without an Arbiter it does nothing.
func (r *Repo) Sync(ctx context.Context) error {
	arb := r.opts.Arbiter
	if arb == nil {
		return nil
	}
	recorded, etag, err := arb.Published(ctx)
	if err != nil {
		return fmt.Errorf("checking for a newer tuf repository: %w", err)
	}
	st := r.cur.Load()
	if etag == st.timestampETag || recorded <= st.timestamp.Signed.Version {
		return nil // current, or our own publish not recorded yet
	}
	next, err := load(ctx, r.store, st)
	if err != nil {
		return fmt.Errorf("reloading the tuf repository (timestamp %d published by another writer): %w", recorded, err)
	}
	if v := next.timestamp.Signed.Version; v < recorded {
		return fmt.Errorf("%w: the database records timestamp version %d but the store holds %d", ErrInconsistent, recorded, v)
	}
	// A publish of r's own that swapped in meanwhile is at least as new
	// (it caught up under the lock): keep it.
	r.cur.CompareAndSwap(st, next)
	return nil
}

// Follow calls Sync every interval until ctx ends, passing its errors to
// onErr (if not nil). With an Arbiter, r then never serves metadata older
// than what another Repo recorded more than about interval ago.
func (r *Repo) Follow(ctx context.Context, interval time.Duration, onErr func(error)) {
	if r.opts.Arbiter == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.Sync(ctx); err != nil && ctx.Err() == nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
