package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http/httptest"
	"os"

	"encoding/json"
	"fmt"
	"github.com/foster-ota/foster/ota/instance"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/foster-ota/foster/pkg/identity"
)

// BenchmarkIngest measures attestation ingest through the real HTTP API:
// a real instance (SQLite with WAL and synchronous=FULL, so every commit is
// fsynced; file blobs; TUF repository with a model role), a real TLS
// listener, 256 enrolled devices each with its own keep-alive mTLS
// connection, posting pre-signed envelopes (devices sign on their own
// hardware) concurrently. Each request is fully verified, appended to the
// transparency log together with its store row (group commit), and
// answered with its bundle (inclusion proof, checkpoint, TUF evidence),
// which the client reads whole (and checks is there; a device parses it on
// its own CPU). Clients and server share the same CPUs.
//
//	go test -run '^$' -bench 'BenchmarkIngest$' -benchtime 20000x -cpu 2 ./ota/server
func BenchmarkIngest(b *testing.B) {
	benchIngest(b, newFixture(b))
}

// BenchmarkIngestPostgres is the same with the store (and so the log) on
// the test PostgreSQL (same machine, same CPUs).
//
//	go test -run '^$' -bench 'BenchmarkIngestPostgres$' -benchtime 20000x -cpu 2 ./ota/server
func BenchmarkIngestPostgres(b *testing.B) {
	benchIngest(b, newFixtureDB(b, benchPostgres(b)))
}

// newFixtureDB is newFixture with the store at dsn.
func newFixtureDB(b *testing.B, dsn string) *fixture {
	ctx := context.Background()
	dir := b.TempDir()
	cfg, err := instance.Init(ctx, dir, instance.InitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	cfg.DB = dsn
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(instance.PathsOf(dir).Config, raw, 0o600); err != nil {
		b.Fatal(err)
	}
	in, err := instance.Open(ctx, dir, instance.Overrides{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close() })
	srv := httptest.NewUnstartedServer(in.API.Handler())
	srv.TLS = in.TLS
	srv.StartTLS()
	b.Cleanup(srv.Close)
	f := &fixture{t: b, in: in, srv: srv, pool: in.CA.RootPool()}
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		b.Fatal(err)
	}
	f.admin, f.anon = f.client(&cert), f.client(nil)
	return f
}

type benchDevice struct {
	mu     sync.Mutex // one request at a time per device: sequences arrive in order
	client *http.Client
	envs   [][]byte
	next   int
}

func benchIngest(b *testing.B, f *fixture) {
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel := f.release("1.0.0", []byte("firmware one"))
	const devices = 256
	per := b.N/devices + 1
	var devs []*benchDevice
	for i := range devices {
		serial := fmt.Sprintf("SN-%04d", i)
		c, key := f.enrolled(serial)
		d := &benchDevice{client: c}
		me := identity.Device("edge-gw", serial).URI()
		for seq := 1; seq <= per; seq++ {
			d.envs = append(d.envs, envelope(f.t, key, me, rel, int64(seq)))
		}
		devs = append(devs, d)
	}
	var turn atomic.Int64
	b.SetParallelism(devices / runtime.GOMAXPROCS(0)) // one caller per device
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf bytes.Buffer
		for pb.Next() {
			d := devs[(turn.Add(1)-1)%devices]
			d.mu.Lock()
			env := d.envs[d.next]
			d.next++
			resp, err := d.client.Post(f.srv.URL+"/v1/attestations", "application/json", bytes.NewReader(env))
			if err != nil {
				d.mu.Unlock()
				b.Error(err)
				return
			}
			// The device keeps the answer (it parses it on its own CPU).
			buf.Reset()
			_, err = buf.ReadFrom(resp.Body)
			resp.Body.Close()
			d.mu.Unlock()
			if resp.StatusCode != 201 || err != nil || !bytes.Contains(buf.Bytes(), []byte(`"bundle":{"media_type"`)) {
				b.Errorf("ingest: %d %v %.200s", resp.StatusCode, err, buf.Bytes())
				return
			}
		}
	})
	b.StopTimer()
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "attestations/s")
	// CPU per attestation, server and clients together: with the machine to
	// itself, 2 cores ingest at most 2s / this (the fsync waits overlap).
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/attestation")
	var commits int64
	if err := f.in.Store.SQL().QueryRow(`SELECT COUNT(*) - 1 FROM tlog_checkpoints`).Scan(&commits); err == nil {
		b.ReportMetric(float64(b.N)/float64(max(commits, 1)), "attestations/commit")
	}
}
