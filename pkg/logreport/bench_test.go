package logreport_test

import (
	"context"
	"flag"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/logreport"
	"github.com/foster-ota/foster/pkg/logreport/loggen"
)

var (
	benchEntries = flag.Int("logreport.entries", 20000, "entries of BenchmarkBuild's generated log")
	benchDevices = flag.Int("logreport.devices", 2000, "devices of BenchmarkBuild's generated log")
)

// BenchmarkBuild measures the report from a generated log export, as
// `foster audit report --from-log --log-dir` builds it: every entry read,
// hashed into the tree, parsed, its device chain (remembered per
// certificate) and signature verified, and folded into the report. The
// generation is not measured. The 1,000,000-entry figure in
// docs/BENCHMARKS.md is the CLI run over loggen's output; this is the same
// path at a size `go test` can afford:
//
//	go test -run '^$' -bench BenchmarkBuild -benchtime 3x -cpu 2 ./pkg/logreport
func BenchmarkBuild(b *testing.B) {
	dir := b.TempDir()
	res, err := loggen.Generate(loggen.Config{Out: dir, Entries: *benchEntries, Devices: *benchDevices, Releases: 10})
	if err != nil {
		b.Fatal(err)
	}
	f := &fixture{Result: res, dir: dir}
	opt := f.opts(b)
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		rep, err := logreport.Build(context.Background(), &logreport.DirSource{Dir: res.Export}, opt)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Evidence.EntriesVerified != int64(*benchEntries) {
			b.Fatalf("verified %d entries", rep.Evidence.EntriesVerified)
		}
	}
	b.StopTimer()
	n := float64(b.N) * float64(*benchEntries)
	b.ReportMetric(n/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/n, "cpu-µs/entry")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
