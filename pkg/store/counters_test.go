package store_test

import (
	"errors"
	"math"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
)

// TestReleaseCounterNeverWrapsNegative: a model whose latest counter is the
// highest there is gets no automatic next one (the old store signed
// latest+1, which wrapped negative at max int64), and a counter above
// 2^53-1 is never recorded.
func TestReleaseCounterNeverWrapsNegative(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		rel := func(v string, c int64) store.Release {
			return store.Release{Model: "edge-gw", Version: v, Counter: c, TargetPath: "edge-gw/" + v + "/fw.bin", SHA256: "aa", Length: 2}
		}
		for _, c := range []int64{math.MaxInt64, 1 << 53, -1} {
			if _, err := d.AddRelease(ctx, rel("1.0.0", c), nil); !errors.Is(err, store.ErrCounterRange) {
				t.Fatalf("counter %d: %v, want ErrCounterRange", c, err)
			}
		}
		if r, err := d.AddRelease(ctx, rel("1.0.0", store.MaxReleaseCounter), nil); err != nil || r.Counter != store.MaxReleaseCounter {
			t.Fatalf("counter 2^53-1: %+v %v", r, err)
		}
		if r, err := d.AddRelease(ctx, rel("2.0.0", 0), nil); !errors.Is(err, store.ErrCounterRange) {
			t.Fatalf("automatic counter after 2^53-1: %+v %v, want ErrCounterRange", r, err)
		}
		if latest, err := d.LatestRelease(ctx, "edge-gw"); err != nil || latest.Version != "1.0.0" {
			t.Fatalf("latest = %+v %v", latest, err)
		}
	})
}

func TestCheckReleaseCounterBounds(t *testing.T) {
	tests := []struct {
		name            string
		counter, latest int64
		want            error
	}{
		{"first release", 1, 0, nil},
		{"one step above nothing", store.MaxReleaseCounterStep, 0, nil},
		{"more than a step above nothing", store.MaxReleaseCounterStep + 1, 0, store.ErrCounterRange},
		{"one step above the latest", 7 + store.MaxReleaseCounterStep, 7, nil},
		{"more than a step above the latest", 8 + store.MaxReleaseCounterStep, 7, store.ErrCounterRange},
		{"not above the latest", 7, 7, store.ErrStale},
		{"2^53-1", store.MaxReleaseCounter, store.MaxReleaseCounter - 1, nil},
		{"2^53", 1 << 53, store.MaxReleaseCounter - 1, store.ErrCounterRange},
		{"max int64", math.MaxInt64, math.MaxInt64 - 1, store.ErrCounterRange},
		{"zero", 0, 0, store.ErrCounterRange},
		{"after the highest", 1, store.MaxReleaseCounter, store.ErrCounterRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := store.CheckReleaseCounter(tt.counter, tt.latest); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("CheckReleaseCounter(%d, %d) = %v, want %v", tt.counter, tt.latest, err, tt.want)
			}
		})
	}
}
