// Command loggen writes a generated transparency log export and the
// auditor's anchors for it (pkg/logreport/loggen): the input of the
// `foster audit report --from-log` benchmark in docs/BENCHMARKS.md.
//
//	go run ./pkg/logreport/loggen/cmd/loggen --out /tmp/log1m --entries 1000000 --devices 100000
//
// It prints the report command to run on it.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/foster-ota/foster/pkg/logreport/loggen"
)

func main() {
	var cfg loggen.Config
	flag.StringVar(&cfg.Out, "out", "", "output directory (created)")
	flag.IntVar(&cfg.Entries, "entries", 1000, "log entries")
	flag.IntVar(&cfg.Devices, "devices", 100, "devices attesting (entry k is device k mod devices's)")
	flag.IntVar(&cfg.Models, "models", 1, "device models")
	flag.IntVar(&cfg.Releases, "releases", 10, "releases per model")
	flag.IntVar(&cfg.Silent, "silent", 0, "devices in devices.txt that never attested")
	flag.Parse()
	if cfg.Out == "" || cfg.Entries < 1 || cfg.Devices < 1 {
		fmt.Fprintln(os.Stderr, "usage: loggen --out DIR [--entries N] [--devices N] [--models N] [--releases N] [--silent N]")
		os.Exit(2)
	}
	start := time.Now()
	last := start
	cfg.Progress = func(done, total int64) {
		if time.Since(last) > 5*time.Second || done == total {
			last = time.Now()
			fmt.Fprintf(os.Stderr, "loggen: %d of %d entries (%s)\n", done, total, time.Since(start).Round(time.Second))
		}
	}
	res, err := loggen.Generate(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loggen:", err)
		os.Exit(1)
	}
	fmt.Printf("generated %d entries in %s\n", cfg.Entries, time.Since(start).Round(time.Second))
	fmt.Printf("foster audit report --from-log --log-dir %s --ca-root %s --tuf-root %s --log-key %s --devices %s\n",
		res.Export, res.CARoot, res.TUFRoot, res.LogPub, res.Roster)
}
