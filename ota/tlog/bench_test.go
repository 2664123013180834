package tlog_test

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// BenchmarkAppend measures ingest: many concurrent callers (as HTTP handlers
// accepting attestations would be) each appending one attestation-sized leaf
// to a durable SQLite log (WAL, synchronous=FULL: every commit is fsynced).
// Concurrent appends are group-committed, one transaction and one checkpoint
// signature per batch; leaves/commit reports the batching achieved.
//
//	go test -run '^$' -bench 'BenchmarkAppend$' -benchtime 20000x -cpu 2 ./ota/tlog
func BenchmarkAppend(b *testing.B) { benchmarkAppend(b, storetest.SQLite(b)) }

// BenchmarkAppendPostgres is the same against the test PostgreSQL.
func BenchmarkAppendPostgres(b *testing.B) { benchmarkAppend(b, storetest.Postgres(b)) }

func benchmarkAppend(b *testing.B, d *store.DB) {
	l := open(b, d, newKeys(b, origin))
	ctx := context.Background()
	b.SetParallelism(32) // 32 callers per GOMAXPROCS
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		leaf := make([]byte, 2048) // about a DSSE envelope with its statement
		for pb.Next() {
			rand.Read(leaf)
			if _, _, err := l.Append(ctx, [][]byte{leaf}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
	var commits int64
	if err := d.SQL().QueryRowContext(ctx, `SELECT COUNT(*) - 1 FROM tlog_checkpoints`).Scan(&commits); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/float64(max(commits, 1)), "leaves/commit")
}
