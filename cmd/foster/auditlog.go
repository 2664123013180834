package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/logreport"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// `foster audit report --from-log` and `foster audit export-log`: the fleet
// report from evidence alone (pkg/logreport, docs/ATTESTATIONS.md).

const exitReplay = 10

// fromLogFlags are the report's flags for --from-log.
type fromLogFlags struct {
	on      bool
	dir     string
	state   string
	devices string
	tufAt   string
	a       anchors
}

func (f *fromLogFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.on, "from-log", false, "rebuild the report from the transparency log and signed TUF metadata alone (no database): from fosterd's log API, or from --log-dir")
	fs.StringVar(&f.dir, "log-dir", "", "with --from-log: a log export (foster audit export-log) instead of the server")
	fs.StringVar(&f.state, "state", "", "with --from-log: a checkpoint kept from before (audit monitor's state file); the log must extend it, and it is updated")
	fs.StringVar(&f.devices, "devices", "", "with --from-log: file of the device URNs you expect, one a line; those with no log entry are listed as unknown")
	fs.StringVar(&f.tufAt, "tuf-at", "", "with --from-log: judge TUF metadata expiry at this RFC 3339 time (an older export) instead of now")
	fs.StringVar(&f.a.caRoot, "ca-root", "", "with --from-log: Foster root CA certificate, e.g. DIR/ca.pem")
	fs.StringVar(&f.a.tufRoot, "tuf-root", "", "with --from-log: trusted TUF root metadata, e.g. DIR/root.json")
	fs.StringVar(&f.a.logKey, "log-key", "", "with --from-log: transparency log public key, e.g. DIR/log.pub")
}

const fromLogHelp = `
With --from-log the report trusts nothing fosterd says beyond what it signed:
it reads every entry of the transparency log (from fosterd's log API with an
admin or auditor credential, or from --log-dir, an export that needs no
access to the operator), recomputes the tree and compares its root with a
checkpoint signed by --log-key, verifies each entry's device certificate
chain to --ca-root and its signature, and learns the releases, their counters
and signed publication times from TUF metadata verified from --tuf-root.
With --state it also proves the log extends the checkpoint kept there. Where
it must differ from the database report (devices that never attested are
unknown, revocations and enrollment are not logged) the report says so.
Progress goes to stderr. With --instance DIR, missing anchors default to
DIR's ca.pem, root.json and log.pub.
`

// cmdAuditReportFromLog builds the report from the log.
func cmdAuditReportFromLog(ctx context.Context, c conn, f *fromLogFlags, model string, staleDays int, format string, stdout, stderr io.Writer) error {
	f.a.withInstance(c.instance)
	if f.a.caRoot == "" || f.a.tufRoot == "" || f.a.logKey == "" {
		return fmt.Errorf("%w: --from-log needs --ca-root, --tuf-root and --log-key (or --instance DIR)", errUsage)
	}
	opt := logreport.Options{Model: model, StaleDays: staleDays}
	var err error
	if opt.CARoots, opt.TUFRoot, opt.LogKey, err = readAnchors(f.a); err != nil {
		return err
	}
	if f.tufAt != "" {
		if opt.TUFTime, err = time.Parse(time.RFC3339, f.tufAt); err != nil {
			return fmt.Errorf("%w: --tuf-at: want an RFC 3339 time: %v", errUsage, err)
		}
	}
	if f.devices != "" {
		if opt.Expected, err = readDeviceList(f.devices); err != nil {
			return err
		}
	}
	if f.state != "" {
		kept, err := readKept(f.state)
		if err != nil {
			return err
		}
		opt.Kept = kept
	}
	src, err := logSource(c, f.dir)
	if err != nil {
		return err
	}
	opt.Progress = progressPrinter(stderr, "verified")
	rep, err := logreport.Build(ctx, src, opt)
	if err != nil {
		return &exitError{code: fromLogCode(err), err: err}
	}
	if f.state != "" {
		cp, err := tlogverify.ParseCheckpoint([]byte(rep.Evidence.Checkpoint), opt.LogKey)
		if err != nil {
			return err
		}
		if err := saveMonitorState(f.state, cp, []byte(rep.Evidence.Checkpoint)); err != nil {
			return err
		}
	}
	switch format {
	case "json":
		return printJSON(stdout, rep)
	case "csv":
		return fromLogCSV(stdout, rep)
	}
	fromLogTable(stdout, rep)
	return nil
}

// fromLogCode maps a report failure to the exit codes of audit verify.
func fromLogCode(err error) int {
	switch {
	case errors.Is(err, logreport.ErrReplay):
		return exitReplay
	case errors.Is(err, logreport.ErrTUF):
		return exitTargetUnsigned
	case errors.Is(err, logreport.ErrExtraEntries):
		return exitNotInLog
	}
	return classCode(err)
}

func readAnchors(a anchors) (*x509.CertPool, []byte, note.Verifier, error) {
	caPEM, err := readSmall(a.caRoot, 1<<20)
	if err != nil {
		return nil, nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, nil, fmt.Errorf("%s holds no PEM certificate", a.caRoot)
	}
	root, err := readSmall(a.tufRoot, 512000)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := readLogKey(a.logKey)
	if err != nil {
		return nil, nil, nil, err
	}
	return pool, root, key, nil
}

// readKept reads the checkpoint kept in an audit monitor state file
// (nil when the file does not exist yet: the first run records one).
func readKept(path string) ([]byte, error) {
	raw, err := readSmall(path, 1<<20)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st monitorState
	if err := json.Unmarshal(raw, &st); err != nil || st.Checkpoint == "" {
		return nil, fmt.Errorf("state file %s holds no kept checkpoint (want audit monitor's format)", path)
	}
	return []byte(st.Checkpoint), nil
}

// maxDeviceList bounds --devices.
const maxDeviceList = 10_000_000

func readDeviceList(path string) ([]string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "urn:foster:device:") || strings.Count(line, ":") != 4 {
			return nil, fmt.Errorf("%s:%d: %q is not a device URN (urn:foster:device:<model>:<serial>)", path, n, truncateString(line, 80))
		}
		if len(out) >= maxDeviceList {
			return nil, fmt.Errorf("%s lists more than %d devices", path, maxDeviceList)
		}
		out = append(out, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// logSource is the export in dir, or fosterd's API with the connection's
// credential.
func logSource(c conn, dir string) (logreport.Source, error) {
	if dir != "" {
		return &logreport.DirSource{Dir: dir}, nil
	}
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	return &logreport.HTTPSource{Base: cl.base, Client: cl.http}, nil
}

// progressPrinter reports progress on stderr at most every two seconds,
// once a run has lasted two seconds.
func progressPrinter(w io.Writer, verb string) func(done, total int64) {
	start := time.Now()
	last := start
	return func(done, total int64) {
		now := time.Now()
		if now.Sub(last) < 2*time.Second && done < total {
			return
		}
		if now.Sub(start) < 2*time.Second {
			return
		}
		last = now
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		rate := float64(done) / now.Sub(start).Seconds()
		fmt.Fprintf(w, "foster: %s %d of %d entries (%.0f%%), %.0f/s\n", verb, done, total, pct, rate)
	}
}

func fromLogTable(w io.Writer, rep *logreport.Report) {
	ev := rep.Evidence
	fmt.Fprintf(w, "FROM THE LOG %s (%s): %d entries verified, checkpoint root %s\n", ev.LogOrigin, ev.Source, ev.EntriesVerified, shortHex(ev.RootHash))
	if ev.Extends != nil {
		fmt.Fprintf(w, "  extends the kept checkpoint of %d entries (root %s)\n", ev.Extends.Size, shortHex(ev.Extends.RootHash))
	}
	fmt.Fprintf(w, "  releases from TUF metadata: root v%d, targets v%d, snapshot v%d, timestamp v%d (expiry judged at %s)\n",
		ev.TUF.Root, ev.TUF.Targets, ev.TUF.Snapshot, ev.TUF.Timestamp, fmtTime(ev.TUF.CheckedAt))
	fmt.Fprintf(w, "  devices seen in the log: %d\n\n", rep.Active)
	reportTable(w, &rep.FleetReport)
	if len(rep.UnsignedReleases) > 0 {
		fmt.Fprintf(w, "\nATTESTED RELEASES NO LONGER SIGNED (%d)\n", len(rep.UnsignedReleases))
		var rows [][]string
		for _, r := range rep.UnsignedReleases {
			rows = append(rows, []string{r.Model, orDash(r.Version), strconv.FormatInt(r.Counter, 10), strconv.Itoa(r.Installed), strconv.Itoa(r.Committed), r.Reason})
		}
		table(w, "MODEL\tVERSION\tCOUNTER\tDEVICES ON IT\tEVER INSTALLED\tWHY", rows)
	}
	fmt.Fprintf(w, "\nEXPECTED DEVICES WITH NO LOG ENTRY: UNKNOWN (%d)\n", rep.UnknownCount)
	for _, u := range rep.Unknown {
		fmt.Fprintf(w, "  %s\n", u)
	}
	fmt.Fprintf(w, "\nHOW THIS REPORT DIFFERS FROM THE DATABASE'S\n")
	for _, d := range rep.Differences {
		fmt.Fprintf(w, "  - %s\n", d)
	}
}

func shortHex(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

// fromLogCSV is reportCSV plus rows for unsigned releases and unknown devices.
func fromLogCSV(w io.Writer, rep *logreport.Report) error {
	if err := reportCSV(w, &rep.FleetReport); err != nil {
		return err
	}
	cw := csv.NewWriter(w)
	for _, r := range rep.UnsignedReleases {
		cw.Write([]string{"unsigned-release", r.Model, r.Version, strconv.FormatInt(r.Counter, 10), "", "false",
			strconv.Itoa(r.Installed), strconv.Itoa(r.Committed), "", "", "", "", "", "", "", "", "", "", "", ""})
	}
	for _, u := range rep.Unknown {
		model, serial := "", ""
		if parts := strings.Split(u, ":"); len(parts) == 5 {
			model, serial = parts[3], parts[4]
		}
		cw.Write([]string{"unknown", model, "", "", "", "", "", "", "", "", "", "", u, serial, "", "", "", "", "", ""})
	}
	cw.Flush()
	return cw.Error()
}

// --- export-log

func cmdAuditExportLog(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit export-log", "audit export-log --out DIR [--tuf-root root.json] [--log-key log.pub] [--tuf-at TIME] [--json]", stderr)
	out := fs.String("out", "", "new directory to write the export to")
	var a anchors
	fs.StringVar(&a.tufRoot, "tuf-root", "", "trusted TUF root metadata, e.g. DIR/root.json")
	fs.StringVar(&a.logKey, "log-key", "", "transparency log public key, e.g. DIR/log.pub")
	tufAt := fs.String("tuf-at", "", "judge TUF metadata expiry at this RFC 3339 time instead of now")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: foster [connection] audit export-log --out DIR [--tuf-root root.json] [--log-key log.pub] [--json]

Copies the evidence for 'foster audit report --from-log' out of fosterd, so
an auditor can build the report with no access to the operator's systems:
DIR/checkpoint (the latest signed checkpoint, verified with --log-key),
DIR/entries.jsonl (every entry it covers, one a line; their tree root is
checked against the checkpoint while writing) and DIR/tuf/ (the TUF
metadata, verified by go-tuf from --tuf-root, with every root version). It
needs an admin or auditor credential. Nothing in DIR is trusted by being
there: the report verifies all of it again.

Flags:
`)
		fs.PrintDefaults()
	}
	if _, err := parse(fs, args); err != nil {
		return err
	}
	a.withInstance(c.instance)
	if *out == "" || a.tufRoot == "" || a.logKey == "" {
		return usageError(fs, "--out, --tuf-root and --log-key are required (or --instance DIR for the keys)")
	}
	var refTime time.Time
	if *tufAt != "" {
		var err error
		if refTime, err = time.Parse(time.RFC3339, *tufAt); err != nil {
			return fmt.Errorf("%w: --tuf-at: want an RFC 3339 time: %v", errUsage, err)
		}
	}
	root, err := readSmall(a.tufRoot, 512000)
	if err != nil {
		return err
	}
	key, err := readLogKey(a.logKey)
	if err != nil {
		return err
	}
	src, err := logSource(c, "")
	if err != nil {
		return err
	}
	res, err := logreport.Export(ctx, src, *out, key, root, refTime, progressPrinter(stderr, "exported"))
	if err != nil {
		return &exitError{code: fromLogCode(err), err: err}
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "exported %d entries of %s (%d bytes, checkpoint root %s) and %d TUF metadata files to %s\n",
		res.TreeSize, res.LogOrigin, res.EntriesBytes, shortHex(res.RootHash), res.TUFFiles, res.Dir)
	return nil
}
