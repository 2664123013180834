package rollout_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// BenchmarkRolloutGet: what `foster rollout show ID` (and each row of
// `foster rollout list`) costs with a large fleet: Controller.Get of a
// running rollout (wave 2 of 10/50/100 %) over a model of 100,000 active
// devices, 2,000 of which attested the release (1,900 committed, 100
// rolled back). Devices are seeded with bulk SQL inserts (enrolling
// 100,000 through the CA would take the benchmark's whole budget).
//
//	go test -run '^$' -bench BenchmarkRolloutGet -benchtime 5x -timeout 30m ./ota/rollout/
func BenchmarkRolloutGet(b *testing.B) {
	for _, db := range []struct {
		name string
		open func(testing.TB) *store.DB
	}{{"sqlite", storetest.SQLite}, {"postgres", storetest.Postgres}} {
		b.Run(db.name+"/devices=100000", func(b *testing.B) {
			benchGet(b, db.open(b), 100_000, 2_000)
		})
	}
}

func benchGet(b *testing.B, db *store.DB, devices, attested int) {
	ctx := context.Background()
	if _, err := db.CreateModel(ctx, store.Model{Name: model}); err != nil {
		b.Fatal(err)
	}
	ids := seedDevices(b, db, devices)
	rel, err := db.AddRelease(ctx, store.Release{Model: model, Version: "1.0.0", TargetPath: model + "/1.0.0/fw.bin", SHA256: "aa", Length: 1}, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctl, err := rollout.New(rollout.Config{Store: db, Publisher: newFakePublisher()})
	if err != nil {
		b.Fatal(err)
	}
	s, err := ctl.Create(ctx, "urn:foster:admin:alice", rollout.CreateRequest{Model: model, Version: rel.Version, Waves: []int{10, 50, 100}, MaxFailureRate: 0.5})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ctl.Promote(ctx, "urn:foster:admin:alice", s.ID); err != nil {
		b.Fatal(err)
	}
	tx, err := db.SQL().BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := range attested {
		outcome := "committed"
		if i%20 == 0 {
			outcome = "rolled-back"
		}
		if _, err := db.AddAttestationTx(ctx, tx, store.Attestation{DeviceID: ids[i*(devices/attested)], Sequence: 1, Outcome: outcome, TargetPath: rel.TargetPath,
			SHA256: "aa", Version: rel.Version, Counter: rel.Counter, Envelope: []byte("{}"), LeafIndex: int64(i)}); err != nil {
			tx.Rollback()
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	// Table statistics, as autovacuum (PostgreSQL) keeps them for a fleet
	// this size; without them PostgreSQL plans each fleet page as a scan.
	// NOANALYZE=1 measures without them.
	if os.Getenv("NOANALYZE") == "" {
		if _, err := db.SQL().ExecContext(ctx, `ANALYZE`); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	var h rollout.Health
	for range b.N {
		st, err := ctl.Get(ctx, s.ID)
		if err != nil {
			b.Fatal(err)
		}
		h = st.Health
	}
	b.StopTimer()
	if h.Eligible != devices || h.Succeeded+h.Failed != attested || h.Offered < devices/3 {
		b.Fatalf("health %+v: want %d eligible, %d outcomes, about half offered", h, devices, attested)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/get")
}

// seedDevices inserts n active devices of model in bulk and returns their
// ids.
func seedDevices(b *testing.B, db *store.DB, n int) []string {
	b.Helper()
	ctx := context.Background()
	tx, err := db.SQL().BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Rollback()
	const batch = 500
	ids := make([]string, 0, n)
	now := time.Now().UnixNano()
	for start := 0; start < n; start += batch {
		var q strings.Builder
		q.WriteString(`INSERT INTO devices (id, serial, model, status, cert_serial, cert_not_after, cert_pem, enrolled_at) VALUES `)
		for i := start; i < min(start+batch, n); i++ {
			serial := fmt.Sprintf("SN-%06d", i)
			id := identity.Device(model, serial).URI()
			ids = append(ids, id)
			if i > start {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "('%s', '%s', '%s', 'active', '%x', %d, 'pem', %d)", id, serial, model, 0x10000+i, now+int64(365*24*time.Hour), now)
		}
		if _, err := tx.ExecContext(ctx, q.String()); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return ids
}
