package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

// progressThreshold: uploads at least this large show progress.
const progressThreshold = 8 << 20 // bytes

// progress reports upload progress on w: a redrawn bar on a terminal
// (at most 5 times a second), a line every 10% otherwise (logs, CI).
type progress struct {
	r           io.Reader
	w           io.Writer
	tty         bool
	label       string
	total, done int64
	start, last time.Time
	nextPct     int64
}

func newProgress(r io.Reader, w io.Writer, label string, total int64) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{r: r, w: w, tty: tty, label: label, total: total, start: time.Now()}
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	now := time.Now()
	pct := p.done * 100 / max(p.total, 1)
	switch {
	case p.tty && (now.Sub(p.last) >= 200*time.Millisecond || p.done == p.total):
		p.last = now
		const width = 30
		fill := int(pct * width / 100)
		fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s/%s %s", p.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct, size(p.done), size(p.total), p.rate(now))
		if p.done == p.total {
			fmt.Fprintln(p.w)
		}
	case !p.tty && pct >= p.nextPct:
		fmt.Fprintf(p.w, "%s: %3d%% (%d/%d bytes) %s\n", p.label, pct, p.done, p.total, p.rate(now))
		p.nextPct = pct - pct%10 + 10
	}
	return n, err
}

func (p *progress) rate(now time.Time) string {
	el := now.Sub(p.start).Seconds()
	if el < 0.2 || p.done == 0 {
		return ""
	}
	bps := float64(p.done) / el
	eta := time.Duration(float64(p.total-p.done)/bps) * time.Second
	return fmt.Sprintf("%s/s eta %s", size(int64(bps)), eta.Round(time.Second))
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func cmdReleaseAdd(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release add", "release add --model M --version V [--hold] [--counter N] [--hardware-id ID ...] [--min-from-version V] [--sha256 HEX] [--length BYTES] FILE", stderr)
	hold := fs.Bool("hold", false, "publish and sign the release, but offer it to no device until a rollout starts (foster rollout create); default: offered to every device of the model at once")
	model := fs.String("model", "", "device model (required)")
	version := fs.String("version", "", "semantic version above the model's latest, e.g. 1.0.1 (required)")
	counter := fs.Int64("counter", 0, "monotonic release counter, at most 1000000 above the model's latest and at most 2^53-1 (default: latest + 1)")
	minFrom := fs.String("min-from-version", "", "oldest installed version this image may be applied over (signed; devices below it skip it)")
	sum := fs.String("sha256", "", "expected SHA-256 (hex) of FILE: fosterd refuses the upload if it differs (default: computed from FILE before the upload, so corruption in transit is refused)")
	length := fs.Int64("length", -1, "expected size of FILE in bytes: fosterd refuses the upload if it differs")
	var hw multi
	fs.Var(&hw, "hardware-id", "hardware id the image is for (repeatable; default: all of the model's)")
	asJSON := fs.Bool("json", false, "print the release as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *version == "" || len(pos) != 1 {
		return usageError(fs, "--model, --version and one FILE are required")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", pos[0])
	}
	if st.Size() == 0 {
		return fmt.Errorf("%s is empty: refusing to publish an empty firmware image", pos[0])
	}
	q := url.Values{"model": {*model}, "version": {*version}, "name": {baseName(pos[0])}}
	if *counter != 0 {
		q.Set("counter", strconv.FormatInt(*counter, 10))
	}
	if *minFrom != "" {
		q.Set("min_from_version", *minFrom)
	}
	if *hold {
		q.Set("hold", "true")
	}
	for _, h := range hw {
		q.Add("hardware_id", h)
	}
	if *length >= 0 {
		q.Set("length", strconv.FormatInt(*length, 10))
	}
	if *sum == "" {
		h := sha256.New()
		var r io.Reader = f
		if st.Size() >= progressThreshold {
			r = newProgress(f, stderr, "hashing  ", st.Size())
		}
		if _, err := io.Copy(h, r); err != nil {
			return fmt.Errorf("hashing %s: %w", pos[0], err)
		}
		*sum = hex.EncodeToString(h.Sum(nil))
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	q.Set("sha256", strings.ToLower(*sum))
	var body io.Reader = f
	if st.Size() >= progressThreshold {
		body = newProgress(f, stderr, "uploading", st.Size())
	}
	var rel server.Release
	if err := c.do(ctx, "POST", "/v1/releases?"+q.Encode(), body, st.Size(), "application/octet-stream", &rel); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rel)
	}
	fmt.Fprintf(stdout, "published %s (model %s, version %s, counter %d, %d bytes, sha256 %s, role %s)\n", rel.TargetPath, rel.Model, rel.Version, rel.Counter, rel.Length, rel.SHA256, rel.Role)
	if rel.Rollout != nil && rel.Rollout.State == rollout.StateHeld {
		fmt.Fprintf(stdout, "held: offered to no device until a rollout starts (foster rollout create --model %s --version %s)\n", rel.Model, rel.Version)
	}
	return nil
}

func baseName(p string) string {
	p = strings.TrimRight(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

func cmdReleaseList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("release list", "release list [--model M] [--json]", stderr)
	model := fs.String("model", "", "only this model")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	rs, err := listReleases(ctx, c, *model)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rs)
	}
	var rows [][]string
	for _, r := range rs {
		rows = append(rows, []string{r.Model, r.Version, strconv.FormatInt(r.Counter, 10), r.Status, offeredTo(r), strconv.FormatInt(r.Length, 10), r.SHA256[:min(16, len(r.SHA256))], fmtTime(r.CreatedAt)})
	}
	table(stdout, "MODEL\tVERSION\tCOUNTER\tSTATUS\tOFFERED\tBYTES\tSHA256\tPUBLISHED", rows)
	return nil
}

// listReleases fetches every page of GET /v1/releases (at most
// store.MaxReleasePage per response), in the server's order.
func listReleases(ctx context.Context, c *client, model string) ([]server.Release, error) {
	rs := []server.Release{}
	after := int64(0)
	for {
		q := url.Values{"model": {model}, "limit": {strconv.Itoa(store.MaxReleasePage)}}
		if after != 0 {
			q.Set("after", strconv.FormatInt(after, 10))
		}
		var page []server.Release
		if err := c.do(ctx, "GET", "/v1/releases?"+q.Encode(), nil, 0, "", &page); err != nil {
			return nil, err
		}
		rs = append(rs, page...)
		if len(page) < store.MaxReleasePage {
			return rs, nil
		}
		next := page[len(page)-1].ID
		if next == after {
			return nil, fmt.Errorf("listing releases: the server repeated page after release %d", after)
		}
		after = next
	}
}

// releaseArgs reads MODEL VERSION from positional arguments or --model/--version.
func releaseArgs(name string, args []string, stderr io.Writer) (model, version string, asJSON bool, err error) {
	fs := newFlags(name, name+" --model M --version V [--json]", stderr)
	m := fs.String("model", "", "device model")
	v := fs.String("version", "", "release version")
	j := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return "", "", false, err
	}
	if len(pos) == 2 && *m == "" && *v == "" {
		*m, *v = pos[0], pos[1]
	} else if len(pos) != 0 || *m == "" || *v == "" {
		fs.Usage()
		return "", "", false, fmt.Errorf("%w: give --model M --version V", errUsage)
	}
	return *m, *v, *j, nil
}

func cmdReleaseShow(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	model, version, asJSON, err := releaseArgs("release show", args, stderr)
	if err != nil {
		return err
	}
	var r server.Release
	if err := c.do(ctx, "GET", "/v1/releases/"+url.PathEscape(model)+"/"+url.PathEscape(version), nil, 0, "", &r); err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, r)
	}
	printRelease(stdout, r)
	return nil
}

func printRelease(w io.Writer, r server.Release) {
	fmt.Fprintf(w, "model:            %s\nversion:          %s\nrelease counter:  %d\nstatus:           %s\ntarget:           %s\nlength:           %d bytes\nsha256:           %s\n",
		r.Model, r.Version, r.Counter, r.Status, r.TargetPath, r.Length, r.SHA256)
	fmt.Fprintf(w, "hardware ids:     %s\n", orDash(strings.Join(r.HardwareIDs, ", ")))
	fmt.Fprintf(w, "min from version: %s\nsigned by role:   %s\npublished:        %s by %s\n", orDash(r.MinFromVersion), orDash(r.Role), fmtTime(r.CreatedAt), r.CreatedBy)
	fmt.Fprintf(w, "offered to:       %s\n", offeredTo(r))
}

// offeredTo says whom the signed rollout terms offer a release.
func offeredTo(r server.Release) string {
	t := r.Rollout
	switch {
	case r.Status != "published":
		return "-"
	case t == nil:
		return "all devices"
	case t.State == rollout.StateHeld:
		return "none (held)"
	}
	s := fmt.Sprintf("%s%% (rollout %s, %s)", strconv.FormatFloat(float64(t.Share)*100/rollout.Scale, 'f', -1, 64), t.ID, t.State)
	if len(t.Groups) > 0 {
		s += " of groups " + strings.Join(t.Groups, ",")
	}
	return s
}

func cmdReleaseRevoke(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	model, version, asJSON, err := releaseArgs("release revoke", args, stderr)
	if err != nil {
		return err
	}
	var r server.Release
	if err := c.do(ctx, "POST", "/v1/releases/"+url.PathEscape(model)+"/"+url.PathEscape(version)+"/revoke", nil, 0, "", &r); err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, r)
	}
	fmt.Fprintf(stdout, "revoked %s: devices are no longer offered it (its counter %d stays used)\n", r.TargetPath, r.Counter)
	return nil
}
