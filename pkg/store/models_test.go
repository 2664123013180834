package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

func TestModelCertValidityRoundTrips(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		if _, err := d.CreateModel(ctx, store.Model{Name: "short", CertValiditySeconds: int64((720 * time.Hour).Seconds())}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateModel(ctx, store.Model{Name: "plain"}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateModel(ctx, store.Model{Name: "bad", CertValiditySeconds: -1}); err == nil {
			t.Fatal("negative validity accepted")
		}
		m, err := d.GetModel(ctx, "short")
		if err != nil || m.CertValidity() != 720*time.Hour {
			t.Fatalf("GetModel(short) = %+v, %v", m, err)
		}
		ms, err := d.ListModels(ctx)
		if err != nil || len(ms) != 2 || ms[0].CertValidity() != 0 || ms[1].CertValidity() != 720*time.Hour {
			t.Fatalf("ListModels = %+v, %v", ms, err)
		}
	})
}

// TestModelsTableMigratesFromOlderStores: a store created before per-model
// certificate validity opens, keeps its models (at the instance default) and
// accepts models with a validity.
func TestModelsTableMigratesFromOlderStores(t *testing.T) {
	const legacy = `CREATE TABLE models (
	name TEXT PRIMARY KEY,
	hardware_ids TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
INSERT INTO models (name, hardware_ids, created_at) VALUES ('old-gw', '["rev-a"]', 1700000000000000000)`
	storetest.EachFrom(t, legacy, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		m, err := d.GetModel(ctx, "old-gw")
		if err != nil || m.CertValidity() != 0 || len(m.HardwareIDs) != 1 {
			t.Fatalf("legacy model after migration: %+v, %v", m, err)
		}
		if _, err := d.CreateModel(ctx, store.Model{Name: "new-gw", CertValiditySeconds: 3600}); err != nil {
			t.Fatal(err)
		}
		if m, err := d.GetModel(ctx, "new-gw"); err != nil || m.CertValidity() != time.Hour {
			t.Fatalf("new model: %+v, %v", m, err)
		}
	})
}
