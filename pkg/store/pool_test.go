package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
)

// TestConnectionsAreReusedNotReopened: under concurrent load the pool keeps
// its connections. database/sql keeps only 2 idle by default and closes
// the others after each use, so every request to a busy fosterd opened a
// new connection (a PostgreSQL backend forked, the hot statements prepared
// again): 9,524 backends for 10,000 simulated devices.
func TestConnectionsAreReusedNotReopened(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := range 16 {
			wg.Go(func() {
				for i := range 25 {
					if _, err := d.GetDevice(ctx, fmt.Sprintf("urn:foster:device:edge-gw:SN-%d-%d", g, i)); !errors.Is(err, store.ErrNotFound) {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if st := store.PoolStats(d); st.MaxIdleClosed != 0 {
			t.Fatalf("%d connections closed for want of idle room after use (pool %+v): each was reopened for the next request", st.MaxIdleClosed, st)
		}
	})
}
