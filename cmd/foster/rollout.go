package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/store"
)

// Staged rollouts, device tags and groups (docs/ROLLOUTS.md "Commands").

type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "%")))
		if err != nil {
			return fmt.Errorf("%q is not a percentage", f)
		}
		*l = append(*l, n)
	}
	return nil
}

func cmdRolloutCreate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout create", "rollout create --model M --version V [--group G ...] [--waves 1,10,50,100] [--wave-interval 6h] [--max-failure-rate 0.05] [--min-sample 20] [--silence-deadline 24h] [--supersede] [--json]", stderr)
	model := fs.String("model", "", "device model (required)")
	version := fs.String("version", "", "published release to roll out (required)")
	var groups multi
	fs.Var(&groups, "group", "only devices in this group (repeatable; default: every device of the model; \"default\": devices in no group)")
	var waves intList
	fs.Var(&waves, "waves", "strictly increasing percentages of the eligible devices, the last 100 (default 1,10,50,100)")
	interval := fs.Duration("wave-interval", 0, "how long a healthy wave runs before the next starts (default 6h)")
	maxRate := fs.Float64("max-failure-rate", 0, "halt when (failed + silent) / outcomes is above this, in (0, 1] (default 0.05)")
	minSample := fs.Int("min-sample", 0, "outcomes needed before the rollout can halt (default 20)")
	silence := fs.Duration("silence-deadline", 0, "an offered device silent this long counts as failed (default 24h)")
	supersede := fs.Bool("supersede", false, "abort the active rollout of an older release over the same model and groups instead of refusing")
	asJSON := fs.Bool("json", false, "print the rollout as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *model == "" || *version == "" || len(pos) != 0 {
		return usageError(fs, "--model and --version are required")
	}
	if *interval < 0 || *silence < 0 || *maxRate < 0 || *minSample < 0 {
		return usageError(fs, "--wave-interval, --silence-deadline, --max-failure-rate and --min-sample must be positive")
	}
	req := server.CreateRolloutRequest{Model: *model, Version: *version, Groups: groups, Waves: waves,
		MaxFailureRate: *maxRate, MinSample: *minSample, Supersede: *supersede}
	if *interval > 0 {
		req.WaveInterval = interval.String()
	}
	if *silence > 0 {
		req.SilenceDeadline = silence.String()
	}
	var r server.RolloutView
	if err := c.postJSON(ctx, "/v1/rollouts", req, &r); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, r)
	}
	fmt.Fprintln(stdout, r.ID)
	fmt.Fprintf(stderr, "rollout %s of %s %s: wave 1 of %d (%d%%) signed\n", r.ID, r.Model, r.Version, len(r.Waves), r.Percent)
	return nil
}

func cmdRolloutList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout list", "rollout list [--model M] [--active] [--json]", stderr)
	model := fs.String("model", "", "only this model")
	active := fs.Bool("active", false, "only running and paused rollouts")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	q := url.Values{}
	if *model != "" {
		q.Set("model", *model)
	}
	if *active {
		q.Set("active", "true")
	}
	var rs []server.RolloutView
	if err := c.do(ctx, "GET", "/v1/rollouts?"+q.Encode(), nil, 0, "", &rs); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rs)
	}
	var rows [][]string
	for _, r := range rs {
		h := r.Health
		rows = append(rows, []string{r.ID, r.Model, r.Version, r.State, fmt.Sprintf("%d/%d (%d%%)", r.Wave+1, len(r.Waves), r.Percent),
			strconv.Itoa(h.Eligible), strconv.Itoa(h.Offered), strconv.Itoa(h.Succeeded), strconv.Itoa(h.Failed), strconv.Itoa(h.Silent),
			fmt.Sprintf("%.1f%% / %.1f%%", h.FailureRate*100, r.MaxFailureRate*100), orDash(strings.Join(r.Groups, ","))})
	}
	table(stdout, "ID\tMODEL\tVERSION\tSTATE\tWAVE\tELIGIBLE\tOFFERED\tSUCCEEDED\tFAILED\tSILENT\tFAILURE RATE / MAX\tGROUPS", rows)
	return nil
}

// rolloutID reads the one positional rollout ID.
func rolloutID(name string, args []string, stderr io.Writer) (id string, asJSON bool, err error) {
	fs := newFlags(name, name+" ID [--json]", stderr)
	j := fs.Bool("json", false, "print the rollout as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return "", false, err
	}
	if len(pos) != 1 {
		return "", false, usageError(fs, "want one rollout ID (foster rollout list shows them)")
	}
	return pos[0], *j, nil
}

func cmdRolloutShow(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	id, asJSON, err := rolloutID("rollout show", args, stderr)
	if err != nil {
		return err
	}
	var r server.RolloutView
	if err := c.do(ctx, "GET", "/v1/rollouts/"+url.PathEscape(id), nil, 0, "", &r); err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, r)
	}
	printRollout(stdout, r)
	return nil
}

func printRollout(w io.Writer, r server.RolloutView) {
	h := r.Health
	waves := make([]string, len(r.Waves))
	for i, p := range r.Waves {
		waves[i] = strconv.Itoa(p) + "%"
		if i == r.Wave {
			waves[i] = "[" + waves[i] + "]"
		}
	}
	rows := [][]string{
		{"rollout", r.ID}, {"release", r.Model + " " + r.Version + " (" + r.TargetPath + ")"},
		{"state", r.State}, {"groups", orDash(strings.Join(r.Groups, ", "))},
		{"wave", fmt.Sprintf("%d of %d: %d%% of eligible devices, since %s", r.Wave+1, len(r.Waves), r.Percent, fmtTime(r.WaveStartedAt()))},
		{"waves", strings.Join(waves, " ")},
		{"signed share", fmt.Sprintf("%d of 10000 buckets", r.Share)},
		{"eligible", strconv.Itoa(h.Eligible)}, {"offered", strconv.Itoa(h.Offered)},
		{"succeeded", strconv.Itoa(h.Succeeded)}, {"failed", strconv.Itoa(h.Failed)},
		{"silent", fmt.Sprintf("%d (offered, no report for %s)", h.Silent, r.SilenceDeadline)},
		{"failure rate", fmt.Sprintf("%.2f%% (max %.2f%%, halts once %d outcomes are in; %d now)", h.FailureRate*100, r.MaxFailureRate*100, r.MinSample, h.Succeeded+h.Failed+h.Silent)},
		{"wave interval", r.WaveInterval},
		{"created", fmtTime(r.CreatedAt) + " by " + r.CreatedBy},
		{"updated", fmtTime(r.UpdatedAt) + " by " + r.UpdatedBy},
	}
	if r.HaltReason != "" {
		rows = append(rows, []string{"halt reason", r.HaltReason})
	}
	if len(r.HaltIndices) > 0 {
		rows = append(rows, []string{"halt log indices", joinInts(r.HaltIndices)})
	}
	if len(h.FailedIndices) > 0 {
		rows = append(rows, []string{"failed log indices", joinInts(h.FailedIndices)})
	}
	table(w, "FIELD\tVALUE", rows)
}

func joinInts(v []int64) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(s, ",")
}

// cmdRolloutAction is promote, pause, resume or abort.
func cmdRolloutAction(action, done string) func(context.Context, *client, []string, io.Writer, io.Writer) error {
	return func(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
		id, asJSON, err := rolloutID("rollout "+action, args, stderr)
		if err != nil {
			return err
		}
		var r server.RolloutView
		if err := c.do(ctx, "POST", "/v1/rollouts/"+url.PathEscape(id)+"/"+action, nil, 0, "", &r); err != nil {
			return err
		}
		if asJSON {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "rollout %s %s: %s, wave %d of %d (%d%%), signed share %d of 10000\n", r.ID, done, r.State, r.Wave+1, len(r.Waves), r.Percent, r.Share)
		return nil
	}
}

func cmdDeviceTag(untag bool) func(context.Context, *client, []string, io.Writer, io.Writer) error {
	name, path, verb := "device tag", "/tags", "tagged"
	if untag {
		name, path, verb = "device untag", "/untag", "untagged"
	}
	return func(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
		fs := newFlags(name, name+" SERIAL|URN TAG... [--json]", stderr)
		asJSON := fs.Bool("json", false, "print the device's tags and groups as JSON")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) < 2 {
			return usageError(fs, "want a device SERIAL or URN and at least one TAG")
		}
		var out server.DeviceTags
		if err := c.postJSON(ctx, "/v1/devices/"+url.PathEscape(pos[0])+path, map[string]any{"tags": pos[1:]}, &out); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, out)
		}
		fmt.Fprintf(stdout, "%s %s: tags %s, groups %s (signed)\n", verb, out.DeviceID, orDash(strings.Join(out.Tags, ",")), orDash(strings.Join(out.Groups, ",")))
		return nil
	}
}

func cmdGroupCreate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("group create", "group create NAME (--tag T | --serials FILE) [--json]", stderr)
	tag := fs.String("tag", "", "a tag group: every device carrying this tag (foster device tag)")
	serialsFile := fs.String("serials", "", "a static group: the serials in FILE, one per line (# comments; at most 100000; \"-\" reads stdin)")
	asJSON := fs.Bool("json", false, "print the group as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (*tag == "") == (*serialsFile == "") {
		return usageError(fs, "want a group NAME and one of --tag or --serials")
	}
	req := server.CreateGroupRequest{Name: pos[0], Tag: *tag}
	if *serialsFile != "" {
		if req.Serials, err = readSerials(*serialsFile); err != nil {
			return err
		}
		if len(req.Serials) == 0 {
			return fmt.Errorf("%s lists no serial", *serialsFile)
		}
	}
	var g store.Group
	if err := c.postJSON(ctx, "/v1/groups", req, &g); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, g)
	}
	fmt.Fprintf(stdout, "group %s created (%s)\n", g.Name, groupWhat(g))
	return nil
}

func readSerials(path string) ([]string, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(io.LimitReader(r, 8<<20))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
		if len(out) > store.MaxStaticSerials {
			return nil, fmt.Errorf("%s: more than %d serials", path, store.MaxStaticSerials)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

func groupWhat(g store.Group) string {
	if g.Kind == store.GroupTag {
		return "devices tagged " + g.Tag
	}
	return fmt.Sprintf("static, %d serials", g.SerialCount)
}

func cmdGroupList(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("group list", "group list [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var gs []store.Group
	if err := c.do(ctx, "GET", "/v1/groups", nil, 0, "", &gs); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, gs)
	}
	var rows [][]string
	for _, g := range gs {
		rows = append(rows, []string{g.Name, g.Kind, groupWhat(g), fmtTime(g.CreatedAt), g.CreatedBy})
	}
	table(stdout, "GROUP\tKIND\tMEMBERS\tCREATED\tBY", rows)
	return nil
}

func cmdGroupShow(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("group show", "group show NAME [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON (members: the first 1000)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one group NAME")
	}
	var g server.GroupDetail
	if err := c.do(ctx, "GET", "/v1/groups/"+url.PathEscape(pos[0]), nil, 0, "", &g); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, g)
	}
	fmt.Fprintf(stdout, "group:   %s\nkind:    %s (%s)\ncreated: %s by %s\n", g.Name, g.Kind, groupWhat(g.Group), fmtTime(g.CreatedAt), g.CreatedBy)
	what := "serials"
	if g.Kind == store.GroupTag {
		what = "devices"
	}
	fmt.Fprintf(stdout, "%s (%d shown):\n", what, len(g.Members))
	for _, m := range g.Members {
		fmt.Fprintf(stdout, "  %s\n", m)
	}
	return nil
}

func cmdGroupDelete(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("group delete", "group delete NAME [--json]", stderr)
	asJSON := fs.Bool("json", false, `print {"name": NAME, "deleted": true} as JSON`)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "want one group NAME")
	}
	if err := c.do(ctx, "DELETE", "/v1/groups/"+url.PathEscape(pos[0]), nil, 0, "", nil); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, map[string]any{"name": pos[0], "deleted": true})
	}
	fmt.Fprintf(stdout, "group %s deleted; its devices' signed groups are updated\n", pos[0])
	return nil
}
