package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGetFillsAMissOnceAndServesHits(t *testing.T) {
	c := New[string, int](8)
	fills := 0
	fill := func(context.Context) (int, error) { fills++; return 42, nil }
	for i := 0; i < 3; i++ {
		v, err := c.Get(context.Background(), "k", fill)
		if err != nil || v != 42 {
			t.Fatalf("Get = %d, %v", v, err)
		}
	}
	if fills != 1 {
		t.Fatalf("fill ran %d times, want 1", fills)
	}
}

// Concurrent misses of one key (a burst of attestations naming the same
// snapshot) must fetch once, not once per request.
func TestConcurrentMissesFillOnce(t *testing.T) {
	c := New[[32]byte, string](8)
	var fills atomic.Int32
	release := make(chan struct{})
	fill := func(context.Context) (string, error) {
		fills.Add(1)
		<-release
		return "v", nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := c.Get(context.Background(), [32]byte{1}, fill)
			if err == nil && v != "v" {
				err = fmt.Errorf("got %q", v)
			}
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // let every goroutine reach Get
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := fills.Load(); n != 1 {
		t.Fatalf("fill ran %d times for 50 concurrent misses, want 1", n)
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	c := New[int, int](8)
	boom := errors.New("boom")
	if _, err := c.Get(context.Background(), 1, func(context.Context) (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	v, err := c.Get(context.Background(), 1, func(context.Context) (int, error) { return 7, nil })
	if err != nil || v != 7 {
		t.Fatalf("after an error, Get = %d, %v; want a fresh fill", v, err)
	}
}

// The cache is bounded: an attacker naming endless distinct keys cannot grow it.
func TestEndlessDistinctKeysStayBounded(t *testing.T) {
	c := New[int, int](16)
	for i := 0; i < 10_000; i++ {
		if _, err := c.Get(context.Background(), i, func(context.Context) (int, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
		if c.Len() > 16 {
			t.Fatalf("after %d keys the cache holds %d entries, bound 16", i+1, c.Len())
		}
	}
	// The newest entry is always kept.
	v, _ := c.Get(context.Background(), 9_999, func(context.Context) (int, error) { return -1, nil })
	if v != 9_999 {
		t.Fatalf("newest entry evicted: got %d", v)
	}
}

func TestAPanickingFillDoesNotStrandWaiters(t *testing.T) {
	c := New[string, int](8)
	started := make(chan struct{})
	waiterDone := make(chan error, 1)
	go func() {
		<-started
		_, err := c.Get(context.Background(), "k", func(context.Context) (int, error) { return 1, nil })
		waiterDone <- err
	}()
	func() {
		defer func() { _ = recover() }()
		_, _ = c.Get(context.Background(), "k", func(context.Context) (int, error) {
			close(started)
			time.Sleep(20 * time.Millisecond)
			panic("fill failed")
		})
	}()
	select {
	case err := <-waiterDone:
		// The waiter either shared the panicked flight's error or filled anew.
		if err != nil && err.Error() != "cache: fill panicked" {
			t.Fatalf("waiter got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiter was stranded by a panicking fill")
	}
	if v, err := c.Get(context.Background(), "k", func(context.Context) (int, error) { return 3, nil }); err != nil || (v != 3 && v != 1) {
		t.Fatalf("after the panic, Get = %d, %v", v, err)
	}
}

func TestAWaiterStopsWhenItsContextEnds(t *testing.T) {
	c := New[string, int](8)
	release := make(chan struct{})
	defer close(release)
	go c.Get(context.Background(), "k", func(context.Context) (int, error) { <-release; return 1, nil })
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Get(ctx, "k", func(context.Context) (int, error) { return 2, nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the waiter's deadline", err)
	}
}
