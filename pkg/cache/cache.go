// Package cache is a small bounded map with a fill function and single
// flight: concurrent misses of one key run the fill once and share its
// result. It is for immutable values (consistent-snapshot TUF metadata,
// verified certificates, checkpoints): an entry is never stale, only evicted
// when the cache is full. Errors are not cached.
package cache

import (
	"context"
	"sync"
)

// Cache maps K to V, holding at most Max entries. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	max int

	mu      sync.Mutex
	entries map[K]V
	flights map[K]*flight[V]
}

type flight[V any] struct {
	done chan struct{}
	v    V
	err  error
}

// New returns a cache holding at most max entries (at least 1).
func New[K comparable, V any](max int) *Cache[K, V] {
	if max < 1 {
		max = 1
	}
	return &Cache[K, V]{max: max, entries: map[K]V{}, flights: map[K]*flight[V]{}}
}

// Get returns the value of k, running fill on a miss. While one fill of k
// runs, other callers of Get(k) wait for it (or for their ctx) instead of
// filling again; fill runs with the first caller's ctx, and when it fails
// every waiter gets its error (nothing is cached, the next Get fills again).
// A full cache evicts one arbitrary entry to make room.
func (c *Cache[K, V]) Get(ctx context.Context, k K, fill func(context.Context) (V, error)) (V, error) {
	c.mu.Lock()
	if v, ok := c.entries[k]; ok {
		c.mu.Unlock()
		return v, nil
	}
	if f, ok := c.flights[k]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.v, f.err
		case <-ctx.Done():
			var zero V
			return zero, ctx.Err()
		}
	}
	f := &flight[V]{done: make(chan struct{})}
	c.flights[k] = f
	c.mu.Unlock()

	// A panicking fill must not leave waiters blocked for ever.
	defer func() {
		c.mu.Lock()
		delete(c.flights, k)
		if f.err == nil {
			if len(c.entries) >= c.max {
				for old := range c.entries {
					delete(c.entries, old)
					break
				}
			}
			c.entries[k] = f.v
		}
		c.mu.Unlock()
		close(f.done)
	}()
	f.err = errPanicked
	f.v, f.err = fill(ctx)
	return f.v, f.err
}

// Len returns the number of cached entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

type panicError struct{}

func (panicError) Error() string { return "cache: fill panicked" }

var errPanicked error = panicError{}
