package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// TestPublishRecordIsAtomicWithRelease: the published TUF timestamp is
// recorded in the transaction that records the release, and neither is
// recorded if publishing fails.
func TestPublishRecordIsAtomicWithRelease(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if v, etag, err := d.PublishedTUF(ctx); err != nil || v != 0 || etag != "" {
			t.Fatalf("fresh record: %d %q %v", v, etag, err)
		}
		rel := store.Release{Model: "edge-gw", Version: "1.0.0", Counter: 1, TargetPath: "edge-gw/1.0.0/fw", SHA256: "ab", Length: 1}
		failed := errors.New("publish failed")
		if _, err := d.PublishRelease(ctx, rel, func(l *store.TUFLock, _ store.Release, _ *store.Release) error {
			if err := l.Record(ctx, 7, `"e7"`); err != nil {
				return err
			}
			return failed
		}); !errors.Is(err, failed) {
			t.Fatalf("failed publish: %v", err)
		}
		if v, _, _ := d.PublishedTUF(ctx); v != 0 {
			t.Fatalf("a failed publish recorded timestamp %d", v)
		}
		if _, err := d.GetRelease(ctx, "edge-gw", "1.0.0"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a failed publish recorded the release: %v", err)
		}
		if _, err := d.PublishRelease(ctx, rel, func(l *store.TUFLock, _ store.Release, _ *store.Release) error { return l.Record(ctx, 7, `"e7"`) }); err != nil {
			t.Fatal(err)
		}
		if v, etag, err := d.PublishedTUF(ctx); err != nil || v != 7 || etag != `"e7"` {
			t.Fatalf("record: %d %q %v", v, etag, err)
		}
		if err := d.PublishTUF(ctx, func(l *store.TUFLock) error {
			if v, _, err := l.Published(ctx); err != nil || v != 7 {
				t.Errorf("under the lock: %d %v", v, err)
			}
			return l.Record(ctx, 8, `"e8"`)
		}); err != nil {
			t.Fatal(err)
		}
		if v, _, _ := d.PublishedTUF(ctx); v != 8 {
			t.Fatalf("record %d, want 8", v)
		}
	})
}

// TestPublishLockExcludesOtherReplicas: two fosterd replicas (two pools on
// one PostgreSQL database) never publish at once, and the second sees the
// first's record when it gets the lock.
func TestPublishLockExcludesOtherReplicas(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx := t.Context()
	var dbs [2]*store.DB
	for i := range dbs {
		d, err := store.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		dbs[i] = d
	}
	holding, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- dbs[0].PublishTUF(ctx, func(l *store.TUFLock) error {
			close(holding)
			<-release
			return l.Record(ctx, 2, `"two"`)
		})
	}()
	<-holding
	second := make(chan error, 1)
	entered := make(chan struct{})
	go func() {
		second <- dbs[1].PublishTUF(ctx, func(l *store.TUFLock) error {
			close(entered)
			v, _, err := l.Published(ctx)
			if err == nil && v != 2 {
				err = errors.New("second writer did not see the first's record")
			}
			return err
		})
	}()
	select {
	case <-entered:
		t.Fatal("second replica took the publish lock while the first held it")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}

	// A canceled wait ends with the caller's context, not the lock timeout.
	holding2, release2 := make(chan struct{}), make(chan struct{})
	go func() {
		dbs[0].PublishTUF(ctx, func(*store.TUFLock) error { close(holding2); <-release2; return nil })
	}()
	<-holding2
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := dbs[1].PublishTUF(wctx, func(*store.TUFLock) error { return nil }); err == nil {
		t.Fatal("took the lock while another replica held it")
	}
	close(release2)
}
