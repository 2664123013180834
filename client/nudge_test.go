package client

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// A flood of (forged) nudges makes the run loop check at most once per
// MQTT.MinInterval; a nudge that comes too soon is deferred, not lost.
func TestNudgeFloodIsDebounced(t *testing.T) {
	a := &Agent{cfg: Config{MQTT: MQTTConfig{MinInterval: 300 * time.Millisecond}}, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nudges := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the flood: as fast as the channel takes them
		defer wg.Done()
		for ctx.Err() == nil {
			select {
			case nudges <- struct{}{}:
			case <-ctx.Done():
			}
		}
	}()
	var last time.Time
	start := time.Now()
	checks := 0
	for time.Since(start) < 1500*time.Millisecond {
		nudged, ok := a.sleep(ctx, time.Hour, nudges, &last)
		if !ok || !nudged {
			t.Fatalf("sleep = %v, %v; want a nudged wake", nudged, ok)
		}
		checks++
	}
	elapsed := time.Since(start)
	cancel()
	wg.Wait()
	if max := int(elapsed/(300*time.Millisecond)) + 1; checks > max {
		t.Fatalf("%d nudged checks in %v, at most %d allowed", checks, elapsed, max)
	}
	if checks < 2 {
		t.Fatalf("%d nudged checks in %v: deferred nudges were lost", checks, elapsed)
	}
}

// Without nudges the wait is the poll interval, and ctx ends it.
func TestSleepWithoutNudges(t *testing.T) {
	a := &Agent{cfg: Config{MQTT: MQTTConfig{MinInterval: time.Minute}}, log: slog.New(slog.DiscardHandler)}
	var last time.Time
	if nudged, ok := a.sleep(context.Background(), 10*time.Millisecond, nil, &last); nudged || !ok {
		t.Fatalf("sleep = %v, %v", nudged, ok)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := a.sleep(ctx, time.Hour, nil, &last); ok {
		t.Fatal("sleep did not end with ctx")
	}
}
