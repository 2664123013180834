package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// TestKeyRecordLostUpdate: replicas changing the key record at the same
// time each see the other's change (no lost update: every change lands as
// its own version), a failed change writes nothing, and an unchanged one
// does not bump the version.
func TestKeyRecordLostUpdate(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		if k, err := d.KeySet(ctx); err != nil || k.Version != 0 || len(k.Body) != 0 {
			t.Fatalf("fresh record: %+v %v", k, err)
		}
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				_, errs[i] = d.UpdateKeySet(ctx, "admin", func(cur store.KeySet) ([]byte, error) {
					return append(append([]byte(nil), cur.Body...), byte('a'+i)), nil
				})
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		k, err := d.KeySet(ctx)
		if err != nil || k.Version != n || len(k.Body) != n || k.UpdatedBy != "admin" || k.UpdatedAt.IsZero() {
			t.Fatalf("after %d concurrent changes: version %d body %q by %q (%v)", n, k.Version, k.Body, k.UpdatedBy, err)
		}
		boom := errors.New("key does not load")
		if _, err := d.UpdateKeySet(ctx, "admin", func(store.KeySet) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
			t.Fatalf("failed change: %v", err)
		}
		if got, err := d.UpdateKeySet(ctx, "admin", func(store.KeySet) ([]byte, error) { return nil, store.ErrKeySetUnchanged }); err != nil || got.Version != n {
			t.Fatalf("unchanged: %+v %v", got, err)
		}
		if _, err := d.UpdateKeySet(ctx, "admin", func(store.KeySet) ([]byte, error) { return make([]byte, store.MaxKeySetBody+1), nil }); err == nil {
			t.Fatal("an oversized record was accepted")
		}
		if k2, _ := d.KeySet(ctx); k2.Version != n || string(k2.Body) != string(k.Body) {
			t.Fatalf("refused changes changed the record: %+v", k2)
		}
	})
}

// TestKeyRecordReplicasAgeOut: each replica's report replaces its last one;
// replicas not seen since the cutoff (killed without a goodbye) are
// forgotten, so they do not hold up a rotation forever.
func TestKeyRecordReplicasAgeOut(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		now := time.Unix(1_800_000_000, 0).UTC()
		d.SetClock(func() time.Time { return now })
		for i, name := range []string{"host-a 10.0.0.1:8443", "host-b 10.0.0.2:8443"} {
			if err := d.ReportKeySetReplica(ctx, store.KeySetReplica{Name: name, Version: int64(i + 1)}); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(time.Minute)
		if err := d.ReportKeySetReplica(ctx, store.KeySetReplica{Name: "host-a 10.0.0.1:8443", Version: 3, Error: "loading keys/next.key: no such file"}); err != nil {
			t.Fatal(err)
		}
		rs, err := d.KeySetReplicas(ctx, now.Add(-30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 1 || rs[0].Version != 3 || rs[0].Error == "" || !rs[0].SeenAt.Equal(now) {
			t.Fatalf("live replicas: %+v", rs)
		}
		if err := d.RemoveKeySetReplica(ctx, "host-a 10.0.0.1:8443"); err != nil {
			t.Fatal(err)
		}
		if rs, err := d.KeySetReplicas(ctx, time.Time{}); err != nil || len(rs) != 0 {
			t.Fatalf("after removal: %+v %v", rs, err)
		}
	})
}

// TestKeyRecordAcrossReplicaPools: two pools on one PostgreSQL database (two
// fosterd) see each other's changes.
func TestKeyRecordAcrossReplicaPools(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx := context.Background()
	a, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i, d := range []*store.DB{a, b, a} {
		if _, err := d.UpdateKeySet(ctx, "r", func(cur store.KeySet) ([]byte, error) {
			return fmt.Appendf(nil, "%s+%d", cur.Body, i), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := b.KeySet(ctx); err != nil || k.Version != 3 || string(k.Body) != "+0+1+2" {
		t.Fatalf("record seen by b: %d %q %v", k.Version, k.Body, err)
	}
}
