package bundle_test

import (
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/bundle"
)

// BenchmarkVerify measures offline bundle verification as an auditor runs
// it over a fleet: 256 bundles of 256 devices (P-256 keys, certificates
// from one intermediate), one TUF targets version and one checkpoint, each
// bundle parsed from its JSON file bytes and fully verified (chain,
// signature, target, checkpoint, inclusion). One Verifier is shared, so
// TUF metadata and checkpoints are verified once; device signatures and
// chains are verified for every bundle.
//
//	go test -run '^$' -bench 'BenchmarkVerify' -benchtime 20000x -cpu 2 ./pkg/bundle
func BenchmarkVerify(b *testing.B) {
	w := newWorld(b)
	raws := fleet(b, w, 256)
	v := w.verifier(b)
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := v.VerifyBytes(raws[i%len(raws)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
	// Load-independent: 2 idle cores verify at most 2s / this per second.
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/verification")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkVerifyCold is one bundle per fresh Verifier: what a single
// `foster audit verify BUNDLE` pays (TUF and checkpoint included), minus
// process start-up.
func BenchmarkVerifyCold(b *testing.B) {
	w := newWorld(b)
	raws := fleet(b, w, 16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := w.verifier(b).VerifyBytes(raws[i%len(raws)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

// fleet logs one attestation for each of n devices and returns their
// bundles, all proven against the final checkpoint.
func fleet(b *testing.B, w *world, n int) [][]byte {
	var entries []bundle.Entry
	var idx []uint64
	for i := range n {
		serial := fmt.Sprintf("SN-%04d", i)
		key, chain := w.device(b, model, serial)
		e := bundle.NewEntry(w.envelope(b, key, w.install("urn:foster:device:"+model+":"+serial, 1)), chain, time.Now())
		leaf, err := e.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		idx = append(idx, w.tree.Size())
		w.tree.AppendData(leaf)
		entries = append(entries, e)
	}
	var raws [][]byte
	for i, e := range entries {
		raw, err := json.Marshal(w.prove(b, e, idx[i]))
		if err != nil {
			b.Fatal(err)
		}
		raws = append(raws, raw)
	}
	return raws
}
