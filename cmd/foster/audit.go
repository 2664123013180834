package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	attbundle "github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// Exit codes of `foster audit verify` and `foster audit monitor`, one per
// failure class (docs/ATTESTATIONS.md). 1 is any other error (unreadable
// file, network), 2 a usage error.
const (
	exitBadSignature   = 3
	exitUnknownCA      = 4
	exitNotInLog       = 5
	exitCheckpointSig  = 6
	exitTargetUnsigned = 7
	exitMalformed      = 8
	exitInconsistent   = 9
)

const exitCodesHelp = `Exit codes:
  0  everything verified
  1  other error (unreadable file, bad trust anchor, network)
  2  usage error
  3  bad signature: the envelope is not signed by the certified device key, or names another device
  4  unknown CA: the certificate chain does not verify to --ca-root at the logged time, or is not a device's
  5  not in log: the inclusion proof does not put the entry in the checkpointed tree
  6  checkpoint signature: the checkpoint is not signed by --log-key (forged checkpoint)
  7  target not signed: the installed image is not a target signed (from --tuf-root) for the device's model
  8  malformed bundle
  9  inconsistent: the log rewrote its history or showed a split view (audit monitor, report --from-log)
  10 replay: the log holds a device's attestation twice or out of order (report --from-log)
`

// exitError carries a specific exit code to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// classCode maps a bundle verification error to its exit code.
func classCode(err error) int {
	switch {
	case errors.Is(err, attbundle.ErrMalformed):
		return exitMalformed
	case errors.Is(err, attbundle.ErrBadSignature):
		return exitBadSignature
	case errors.Is(err, attbundle.ErrUnknownCA):
		return exitUnknownCA
	case errors.Is(err, attbundle.ErrNotInLog):
		return exitNotInLog
	case errors.Is(err, attbundle.ErrCheckpointSignature):
		return exitCheckpointSig
	case errors.Is(err, attbundle.ErrTargetNotSigned):
		return exitTargetUnsigned
	case errors.Is(err, tlogverify.ErrInconsistent):
		return exitInconsistent
	}
	return 1
}

const auditUsage = `Usage:
  foster audit verify BUNDLE|DIR... --ca-root ca.pem --tuf-root root.json --log-key log.pub [--json]
  foster [connection] audit report [--model M] [--format table|json|csv] [--stale-days N]
  foster [connection] audit report --from-log [--log-dir DIR] --ca-root ca.pem --tuf-root root.json --log-key log.pub [--state FILE] [--devices FILE]
  foster [connection] audit export-log --out DIR --tuf-root root.json --log-key log.pub
  foster [connection] audit monitor --state FILE [--log-key log.pub]
`

// runAudit dispatches `foster audit ...`. verify is offline; monitor needs
// only the server URL and CA (the checkpoint and consistency proofs are
// public); report needs an admin or auditor credential.
func runAudit(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, auditUsage)
		return errUsage
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "verify":
		return cmdAuditVerify(c, rest, stdout, stderr)
	case "monitor":
		return cmdAuditMonitor(ctx, c, rest, stdout, stderr)
	case "report":
		return cmdAuditReport(ctx, c, rest, stdout, stderr)
	case "export-log":
		return cmdAuditExportLog(ctx, c, rest, stdout, stderr)
	}
	fmt.Fprintf(stderr, "foster: unknown command %q\n\n%s", "audit "+sub, auditUsage)
	return errUsage
}

// anchors are the auditor's trust anchors, by file.
type anchors struct{ caRoot, tufRoot, logKey string }

// withInstance fills unset anchors from an instance directory.
func (a *anchors) withInstance(dir string) {
	if dir == "" {
		return
	}
	p := instance.PathsOf(dir)
	if a.caRoot == "" {
		a.caRoot = p.CARoot
	}
	if a.tufRoot == "" {
		a.tufRoot = p.TUFRoot
	}
	if a.logKey == "" {
		a.logKey = instance.LogPubPath(dir)
	}
}

func readLogKey(path string) (note.Verifier, error) {
	raw, err := readSmall(path, 4<<10)
	if err != nil {
		return nil, err
	}
	return attbundle.ParseLogKey(raw)
}

func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

func cmdAuditVerify(c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit verify", "audit verify BUNDLE|DIR... --ca-root ca.pem --tuf-root root.json --log-key log.pub [--json]", stderr)
	var a anchors
	fs.StringVar(&a.caRoot, "ca-root", "", "Foster root CA certificate (PEM), e.g. DIR/ca.pem")
	fs.StringVar(&a.tufRoot, "tuf-root", "", "trusted TUF root metadata, e.g. DIR/root.json")
	fs.StringVar(&a.logKey, "log-key", "", "transparency log public key (signed-note verifier key), e.g. DIR/log.pub")
	asJSON := fs.Bool("json", false, "print one JSON result per bundle")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: foster audit verify BUNDLE|DIR... --ca-root ca.pem --tuf-root root.json --log-key log.pub [--json]

Verifies install-attestation bundles fully offline, with only the three trust
anchors: the device's certificate chain to the CA root at the time the log
accepted the attestation, the device's signature on the attestation and that
it names that device, that the installed image is a target signed (from the
TUF root) for the device's model, the checkpoint's signature by the log key,
and the entry's inclusion proof in that checkpoint. A DIR argument verifies
every *.json in it (say, a device's attestations/bundles directory). With
--instance DIR, missing anchors default to DIR's ca.pem, root.json, log.pub.

Flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+exitCodesHelp)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	a.withInstance(c.instance)
	if len(pos) == 0 || a.caRoot == "" || a.tufRoot == "" || a.logKey == "" {
		return usageError(fs, "want BUNDLE and --ca-root, --tuf-root and --log-key")
	}
	v, err := newBundleVerifier(a)
	if err != nil {
		return err
	}
	files, err := bundleFiles(pos)
	if err != nil {
		return err
	}
	var first error
	for _, f := range files {
		res, err := verifyFile(v, f)
		if *asJSON {
			printJSON(stdout, verifyJSON(f, res, err))
		} else {
			printVerify(stdout, f, res, err)
		}
		if err != nil && first == nil {
			first = &exitError{code: classCode(err), err: fmt.Errorf("%s: %w", f, err)}
		}
	}
	return first
}

func newBundleVerifier(a anchors) (*attbundle.Verifier, error) {
	caPEM, err := readSmall(a.caRoot, 1<<20)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", a.caRoot)
	}
	root, err := readSmall(a.tufRoot, attbundle.MaxRootSize)
	if err != nil {
		return nil, err
	}
	key, err := readLogKey(a.logKey)
	if err != nil {
		return nil, err
	}
	return attbundle.NewVerifier(attbundle.TrustRoots{CARoots: pool, TUFRoot: root, LogKey: key})
}

// bundleFiles expands directories into their *.json files (sorted).
func bundleFiles(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			out = append(out, a)
			continue
		}
		m, err := filepath.Glob(filepath.Join(a, "*.json"))
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			return nil, fmt.Errorf("%s holds no *.json bundles", a)
		}
		sort.Slice(m, func(i, j int) bool { return naturalLess(filepath.Base(m[i]), filepath.Base(m[j])) })
		out = append(out, m...)
	}
	return out, nil
}

// naturalLess orders "2.json" before "10.json".
func naturalLess(a, b string) bool {
	na, ea := strconv.Atoi(strings.TrimSuffix(a, ".json"))
	nb, eb := strconv.Atoi(strings.TrimSuffix(b, ".json"))
	if ea == nil && eb == nil {
		return na < nb
	}
	return a < b
}

func verifyFile(v *attbundle.Verifier, path string) (*attbundle.Result, error) {
	raw, err := readSmall(path, attbundle.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", attbundle.ErrMalformed, err)
	}
	return v.VerifyBytes(raw)
}

func printVerify(w io.Writer, path string, res *attbundle.Result, err error) {
	if err != nil {
		fmt.Fprintf(w, "FAIL %s: %v (exit %d)\n", path, err, classCode(err))
		return
	}
	st := res.Statement
	fmt.Fprintf(w, "OK   %s\n", path)
	fmt.Fprintf(w, "     device    %s (certificate %s, chain verified at %s)\n", res.Device.URI(), res.Certificate.SerialNumber.Text(16), res.IntegratedTime.Format(time.RFC3339))
	fmt.Fprintf(w, "     install   %s %s version %s counter %d sha256 %s (sequence %d, boot %d)\n", st.Outcome, st.New.Name, orDash(st.New.Version), st.New.ReleaseCounter, st.New.SHA256, st.Sequence, st.BootCounter)
	if st.Reason != "" {
		fmt.Fprintf(w, "     reason    %s\n", st.Reason)
	}
	if st.Previous != nil {
		fmt.Fprintf(w, "     previous  %s version %s counter %d\n", st.Previous.Name, orDash(st.Previous.Version), st.Previous.ReleaseCounter)
	}
	fmt.Fprintf(w, "     firmware  signed by %s v%d (targets v%d, root v%d)\n", res.TargetsRole, res.RoleVersion, res.TargetsVersion, res.RootVersion)
	fmt.Fprintf(w, "     log       entry %d of %d in %s, root %s\n", res.LeafIndex, res.Checkpoint.Size, res.Checkpoint.Origin, hex.EncodeToString(res.Checkpoint.Root)[:16])
}

type verifyResult struct {
	File           string    `json:"file"`
	OK             bool      `json:"ok"`
	Error          string    `json:"error,omitempty"`
	ExitCode       int       `json:"exit_code"`
	Device         string    `json:"device,omitempty"`
	Outcome        string    `json:"outcome,omitempty"`
	Target         string    `json:"target,omitempty"`
	Version        string    `json:"version,omitempty"`
	ReleaseCounter int64     `json:"release_counter,omitempty"`
	SHA256         string    `json:"sha256,omitempty"`
	Sequence       int64     `json:"sequence,omitempty"`
	IntegratedTime time.Time `json:"integrated_time,omitzero"`
	LeafIndex      int64     `json:"leaf_index,omitempty"`
	TreeSize       int64     `json:"tree_size,omitempty"`
	LogOrigin      string    `json:"log_origin,omitempty"`
}

func verifyJSON(path string, res *attbundle.Result, err error) verifyResult {
	if err != nil {
		return verifyResult{File: path, Error: err.Error(), ExitCode: classCode(err)}
	}
	st := res.Statement
	return verifyResult{
		File: path, OK: true, Device: res.Device.URI(), Outcome: st.Outcome, Target: st.New.Name, Version: st.New.Version,
		ReleaseCounter: st.New.ReleaseCounter, SHA256: st.New.SHA256, Sequence: st.Sequence, IntegratedTime: res.IntegratedTime,
		LeafIndex: res.LeafIndex, TreeSize: res.Checkpoint.Size, LogOrigin: res.Checkpoint.Origin,
	}
}

// --- report

func cmdAuditReport(ctx context.Context, cn conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit report", "audit report [--model M] [--json | --format table|json|csv] [--stale-days N]", stderr)
	model := fs.String("model", "", "only this model")
	format := fs.String("format", "table", "table, json or csv")
	asJSON := fs.Bool("json", false, "print JSON (the same as --format json)")
	stale := fs.Int("stale-days", 30, "devices with no attestation for this many days are orphan candidates")
	var fl fromLogFlags
	fl.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: foster [connection] audit report [--model M] [--json | --format table|json|csv] [--stale-days N]
       foster [connection] audit report --from-log [--log-dir DIR] --ca-root ca.pem --tuf-root root.json --log-key log.pub
              [--state FILE] [--devices FILE] [--tuf-at TIME] [--model M] [--json | --format ...] [--stale-days N]

The fleet's patch status: devices per release, time to patch, devices
behind the latest release, and orphan candidates (no attestation for
--stale-days). Without --from-log it is fosterd's database's answer (admin or
auditor credential).
`+fromLogHelp+`
Flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+exitCodesHelp)
	}
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if !fl.on && (fl.dir != "" || fl.state != "" || fl.devices != "" || fl.tufAt != "" || fl.a != (anchors{})) {
		return usageError(fs, "--log-dir, --state, --devices, --tuf-at and the anchors go with --from-log")
	}
	if *format != "table" && *format != "json" && *format != "csv" {
		return usageError(fs, "--format must be table, json or csv")
	}
	if *asJSON {
		*format = "json"
	}
	if *stale < 0 {
		return fmt.Errorf("%w: --stale-days must not be negative", errUsage)
	}
	if fl.on {
		return cmdAuditReportFromLog(ctx, cn, &fl, *model, *stale, *format, stdout, stderr)
	}
	c, err := cn.client()
	if err != nil {
		return err
	}
	q := url.Values{"stale_days": {strconv.Itoa(*stale)}}
	if *model != "" {
		q.Set("model", *model)
	}
	var rep store.FleetReport
	if err := c.do(ctx, "GET", "/v1/reports/fleet?"+q.Encode(), nil, 0, "", &rep); err != nil {
		return err
	}
	switch *format {
	case "json":
		return printJSON(stdout, rep)
	case "csv":
		return reportCSV(stdout, &rep)
	}
	reportTable(stdout, &rep)
	return nil
}

func dur(p *store.Percentiles, f func(*store.Percentiles) float64) string {
	if p == nil {
		return "-"
	}
	return (time.Duration(f(p)) * time.Second).Round(time.Second).String()
}

func reportTable(w io.Writer, rep *store.FleetReport) {
	fmt.Fprintf(w, "RELEASES (generated %s)\n", fmtTime(rep.GeneratedAt))
	var rows [][]string
	for _, r := range rep.Releases {
		latest := "-"
		if r.Latest {
			latest = "latest"
		}
		rows = append(rows, []string{r.Model, r.Version, strconv.FormatInt(r.Counter, 10), latest, fmtTime(r.PublishedAt),
			strconv.Itoa(r.Installed), strconv.Itoa(r.Committed),
			dur(r.TimeToPatch, func(p *store.Percentiles) float64 { return p.P50 }),
			dur(r.TimeToPatch, func(p *store.Percentiles) float64 { return p.P90 }),
			dur(r.TimeToPatch, func(p *store.Percentiles) float64 { return p.P99 })})
	}
	table(w, "MODEL\tVERSION\tCOUNTER\tSTATUS\tPUBLISHED\tDEVICES ON IT\tEVER INSTALLED\tTTP P50\tTTP P90\tTTP P99", rows)
	for _, r := range rep.Releases {
		if len(r.Devices) > 0 {
			fmt.Fprintf(w, "  %s %s: %s\n", r.Model, r.Version, strings.Join(r.Devices, ", "))
		}
	}
	fmt.Fprintf(w, "\nBEHIND THE LATEST RELEASE (%d)\n", len(rep.Behind))
	table(w, "DEVICE\tINSTALLED\tLATEST\tRELEASES BEHIND\tLAST ATTESTATION", deviceRows(rep.Behind, true))
	fmt.Fprintf(w, "\nNO ATTESTATION FOR %d DAYS: ORPHAN CANDIDATES (%d)\n", rep.StaleDays, len(rep.Stale))
	table(w, "DEVICE\tINSTALLED\tENROLLED\tLAST ATTESTATION", deviceRows(rep.Stale, false))
	if rep.Truncated {
		fmt.Fprintf(w, "\n(lists truncated at %d devices; counts are exact)\n", store.MaxReportDevices)
	}
}

func deviceRows(ds []store.DeviceStatus, behind bool) [][]string {
	var rows [][]string
	for _, d := range ds {
		if behind {
			rows = append(rows, []string{d.ID, orDash(d.InstalledVersion), d.LatestVersion, strconv.Itoa(d.ReleasesBehind), fmtTime(d.LastAttestationAt)})
		} else {
			rows = append(rows, []string{d.ID, orDash(d.InstalledVersion), fmtTime(d.EnrolledAt), fmtTime(d.LastAttestationAt)})
		}
	}
	return rows
}

// reportCSV writes one row per release, per device behind and per stale
// device, told apart by the first column.
func reportCSV(w io.Writer, rep *store.FleetReport) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"kind", "model", "version", "release_counter", "published_at", "latest", "devices_on_it", "ever_installed",
		"ttp_p50_seconds", "ttp_p90_seconds", "ttp_p99_seconds", "ttp_max_seconds",
		"device", "serial", "installed_version", "installed_release_counter", "latest_version", "releases_behind", "enrolled_at", "last_attestation_at"})
	sec := func(p *store.Percentiles, f func(*store.Percentiles) float64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatFloat(f(p), 'f', 0, 64)
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, r := range rep.Releases {
		p := r.TimeToPatch
		cw.Write([]string{"release", r.Model, r.Version, strconv.FormatInt(r.Counter, 10), ts(r.PublishedAt), strconv.FormatBool(r.Latest),
			strconv.Itoa(r.Installed), strconv.Itoa(r.Committed),
			sec(p, func(p *store.Percentiles) float64 { return p.P50 }), sec(p, func(p *store.Percentiles) float64 { return p.P90 }),
			sec(p, func(p *store.Percentiles) float64 { return p.P99 }), sec(p, func(p *store.Percentiles) float64 { return p.Max }),
			"", "", "", "", "", "", "", ""})
	}
	for _, l := range []struct {
		kind string
		ds   []store.DeviceStatus
	}{{"behind", rep.Behind}, {"stale", rep.Stale}} {
		for _, d := range l.ds {
			cw.Write([]string{l.kind, d.Model, "", "", "", "", "", "", "", "", "", "",
				d.ID, d.Serial, d.InstalledVersion, strconv.FormatInt(d.InstalledCounter, 10), d.LatestVersion, strconv.Itoa(d.ReleasesBehind), ts(d.EnrolledAt), ts(d.LastAttestationAt)})
		}
	}
	cw.Flush()
	return cw.Error()
}

// --- monitor

// monitorState is the monitor's memory between runs (--state FILE).
type monitorState struct {
	Origin     string    `json:"origin"`
	Checkpoint string    `json:"checkpoint"`
	Size       int64     `json:"size"`
	CheckedAt  time.Time `json:"checked_at"`
}

func cmdAuditMonitor(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit monitor", "audit monitor --state FILE [--log-key log.pub]", stderr)
	state := fs.String("state", "", "file remembering the last verified checkpoint (created on first run)")
	logKey := fs.String("log-key", "", "transparency log public key (default with --instance: DIR/log.pub)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: foster [connection] audit monitor --state FILE [--log-key log.pub]

Fetches the log's latest checkpoint, verifies its signature with the log key,
and checks that it extends the checkpoint recorded in FILE (a consistency
proof from the server, verified locally), then records it. A log that
rewrote its history, or showed this monitor a different tree than before,
fails with "inconsistent" (exit 9) and FILE keeps the old checkpoint; both
signed checkpoints are saved in FILE.inconsistent-<time> as evidence. The
first run trusts and records the current checkpoint. Run it from cron.
The checkpoint and consistency proofs are public: --server URL --ca ca.pem
is enough (no client certificate).

Flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+exitCodesHelp)
	}
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *logKey == "" && c.instance != "" {
		*logKey = instance.LogPubPath(c.instance)
	}
	if *state == "" || *logKey == "" {
		return usageError(fs, "--state and --log-key are required")
	}
	v, err := readLogKey(*logKey)
	if err != nil {
		return err
	}
	cl, err := c.publicClient()
	if err != nil {
		return err
	}

	raw, err := cl.getRaw(ctx, "/v1/log/checkpoint", tlogverify.MaxCheckpointSize)
	if err != nil {
		return err
	}
	cur, err := tlogverify.ParseCheckpoint(raw, v)
	if err != nil {
		return &exitError{code: classCode(err), err: fmt.Errorf("checkpoint from %s: %w", cl.base.Host, err)}
	}

	var old monitorState
	prevRaw, err := readSmall(*state, 1<<20)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := saveMonitorState(*state, cur, raw); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "first checkpoint of %s: %d entries (recorded; later runs check consistency with it)\n", cur.Origin, cur.Size)
		return nil
	case err != nil:
		return err
	}
	if err := json.Unmarshal(prevRaw, &old); err != nil {
		return fmt.Errorf("state file %s: %w", *state, err)
	}
	prev, err := tlogverify.ParseCheckpoint([]byte(old.Checkpoint), v)
	if err != nil {
		return fmt.Errorf("state file %s holds no checkpoint signed by this log key: %w", *state, err)
	}

	var proof [][]byte
	if cur.Size > prev.Size {
		var resp struct {
			TreeSize int64    `json:"tree_size"`
			Hashes   [][]byte `json:"hashes"`
		}
		if err := cl.do(ctx, "GET", fmt.Sprintf("/v1/log/consistency?from=%d&to=%d", prev.Size, cur.Size), nil, 0, "", &resp); err != nil {
			return fmt.Errorf("fetching consistency proof: %w", err)
		}
		proof = resp.Hashes
	}
	if err := tlogverify.VerifyConsistency(prev, cur, proof); err != nil {
		evidence := fmt.Sprintf("%s.inconsistent-%d", *state, time.Now().UnixNano())
		ev, _ := json.MarshalIndent(map[string]string{"recorded": old.Checkpoint, "served": string(raw), "error": err.Error()}, "", "  ")
		if werr := atomicfile.WriteFile(evidence, append(ev, '\n'), 0o644); werr != nil {
			fmt.Fprintf(stderr, "foster: saving evidence: %v\n", werr)
		}
		code := exitInconsistent
		if !errors.Is(err, tlogverify.ErrInconsistent) {
			code = 1 // a malformed proof proves nothing either way
		}
		return &exitError{code: code, err: fmt.Errorf("inconsistent: %s at %d entries does not extend the checkpoint recorded at %d entries (%w); evidence in %s", cur.Origin, cur.Size, prev.Size, err, evidence)}
	}
	if err := saveMonitorState(*state, cur, raw); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "consistent: %s grew from %d to %d entries\n", cur.Origin, prev.Size, cur.Size)
	return nil
}

func saveMonitorState(path string, cp tlogverify.Checkpoint, raw []byte) error {
	b, _ := json.MarshalIndent(monitorState{Origin: cp.Origin, Checkpoint: string(raw), Size: cp.Size, CheckedAt: time.Now().UTC()}, "", "  ")
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// publicClient connects like client() but without requiring a client
// certificate (it presents one if given): for the log's public endpoints.
func (c conn) publicClient() (*client, error) {
	if c.instance != "" || c.cred != "" || c.cert != "" {
		return c.client()
	}
	if c.server == "" || c.ca == "" {
		return nil, fmt.Errorf("%w: give --server URL and --ca FILE (or --instance DIR)", errUsage)
	}
	u, err := url.Parse(c.server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want an https:// URL", c.server)
	}
	caPEM, err := readSmall(c.ca, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("reading CA root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.ca)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, Time: env.Now},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &client{base: u, http: &http.Client{Transport: tr, Timeout: time.Minute}, caPEM: caPEM}, nil
}

// getRaw GETs path and returns at most limit bytes of a 200 body.
func (c *client) getRaw(ctx context.Context, path string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.JoinPath(path).String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("contacting %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, apierr.FromResponse(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: response larger than %d bytes", path, limit)
	}
	return b, nil
}
