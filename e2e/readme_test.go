package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/foster-ota/foster/ota/blob/s3test"
)

// TestREADMERunsAsWritten runs every ```sh block of README.md (and of each
// docs/*.md that declares itself a walkthrough with
// "<!-- docs-test: walkthrough -->"), in order, with bash -euo pipefail, in a
// fresh copy of the repository, against the real binaries. The only
// substitutions are the ones a reader would make (docs/CONTRIBUTING.md):
//
//   - 127.0.0.1:8443 (fosterd's default address) becomes a free port;
//   - every fosterd command ("fosterd ..." or "go run ./cmd/fosterd ...") is
//     started in the background, as in a second terminal, after stopping the
//     previous one as a reader would with Ctrl-C; the harness waits until it
//     answers /healthz (or exits 0, for a command that only initialises);
//   - when a block names s3://BUCKET, an S3 server (versitygw) is started,
//     http://127.0.0.1:9000 becomes its endpoint, BUCKET is created and the
//     AWS_* credentials point at it;
//   - `go build -o DIR ./cmd/...` and `go run ./cmd/X` use the binaries this
//     package's TestMain built from the same tree (a go shim first on PATH).
//
// A block marked "<!-- docs-test: skip: REASON -->" on the line before its
// fence is not run (and logged). A command that never exits fails its block
// after blockTimeout, naming the file and line, instead of hanging the test.
func TestREADMERunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the README's walkthroughs against the real binaries")
	}
	root := moduleRoot()
	docs := []string{filepath.Join(root, "README.md")}
	others, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	for _, p := range others {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if walkthroughRE.Match(b) {
			docs = append(docs, p)
		}
	}
	var blocks []docBlock
	for _, p := range docs {
		bs, err := extractShellBlocks(p, root)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, bs...)
	}
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```sh blocks: the extractor is broken")
	}

	h := newDocsHarness(t, root)
	for _, b := range blocks {
		if b.skip != "" {
			t.Logf("%s:%d: skipped: %s", b.file, b.line, b.skip)
			continue
		}
		h.runBlock(b)
		if t.Failed() {
			return
		}
	}
}

const (
	walkthroughMarker = "<!-- docs-test: walkthrough -->"
	skipMarker        = "<!-- docs-test: skip:"
	// blockTimeout bounds each chunk of a block: a command that does not
	// exit fails the test here, not at go test's -timeout.
	blockTimeout = 120 * time.Second
	// daemonTimeout bounds a fosterd start (a first start creates the PKI).
	daemonTimeout = 120 * time.Second
)

type docBlock struct {
	file string // relative to the repository root
	line int    // line of the opening fence
	text string
	skip string // the skip marker's reason, if marked
}

var walkthroughRE = regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(walkthroughMarker) + `\s*$`)

var fenceRE = regexp.MustCompile("^```(sh|bash|shell|console)\\s*$")

// extractShellBlocks returns the shell blocks of a Markdown file in order.
func extractShellBlocks(path, root string) ([]docBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rel, _ := filepath.Rel(root, path)
	var out []docBlock
	var cur *docBlock
	prev := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && fenceRE.MatchString(strings.TrimSpace(line)):
			cur = &docBlock{file: rel, line: n}
			if p := strings.TrimSpace(prev); strings.HasPrefix(p, skipMarker) {
				cur.skip = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(p, skipMarker), "-->"))
				if cur.skip == "" {
					return nil, fmt.Errorf("%s:%d: a skip marker needs a reason: %s REASON -->", rel, n-1, skipMarker)
				}
			}
		case cur != nil && strings.TrimSpace(line) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
		prev = line
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: unterminated code block", rel, cur.line)
	}
	return out, sc.Err()
}

// command is one shell command of a block: its lines joined across
// backslash continuations.
type command struct {
	line int // first line in the file
	text string
}

func splitCommands(b docBlock) []command {
	var out []command
	var cur *command
	for i, l := range strings.Split(strings.TrimSuffix(b.text, "\n"), "\n") {
		if cur == nil {
			cur = &command{line: b.line + 1 + i}
		}
		cur.text += l + "\n"
		if !strings.HasSuffix(strings.TrimRight(l, " \t"), "\\") {
			out = append(out, *cur)
			cur = nil
		}
	}
	if cur != nil {
		out = append(out, *cur)
	}
	return out
}

var (
	// A fosterd server: "fosterd ..." or "go run ./cmd/fosterd ...",
	// optionally after VAR=value assignments.
	fosterdRE = regexp.MustCompile(`^\s*((?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*)(fosterd|go run \./cmd/fosterd)\b`)
	// Commands that run until Ctrl-C and are not fosterd: a block holding
	// one must carry the skip marker.
	foreverRE = []*regexp.Regexp{
		regexp.MustCompile(`(^|[\s;&|(])foster\s+(\S+\s+)*console\b`),
		regexp.MustCompile(`(^|[\s;&|(])foster-agent\s+(\S+\s+)*run\b`),
		regexp.MustCompile(`(^|[\s;&|(])tail\s+-[a-zA-Z]*[fF]`),
		regexp.MustCompile(`(^|[\s;&|(])watch\s`),
	}
	helpRE = regexp.MustCompile(`(^|\s)(-h|--help|-help|help)(\s|$)`)
)

func isFosterd(c command) bool {
	return fosterdRE.MatchString(c.text) && !helpRE.MatchString(c.text)
}

func runsForever(c command) bool {
	text := stripComment(c.text)
	if strings.Contains(text, "--once") || helpRE.MatchString(text) {
		return false
	}
	for _, re := range foreverRE {
		if re.MatchString(text) {
			return true
		}
	}
	return false
}

// stripComment drops "# ..." comments outside quotes (good enough for the
// docs' one-line commands).
func stripComment(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		inS, inD := false, false
		for i, r := range l {
			if r == '\'' && !inD {
				inS = !inS
			} else if r == '"' && !inS {
				inD = !inD
			} else if r == '#' && !inS && !inD && (i == 0 || l[i-1] == ' ' || l[i-1] == '\t') {
				l = strings.TrimRight(l[:i], " \t")
				break
			}
		}
		b.WriteString(l + "\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// docsHarness is the reader's machine: a working copy, a shell state kept
// between blocks, a background fosterd and, when needed, an S3 server.
type docsHarness struct {
	t        *testing.T
	work     string // the copy of the repository the blocks run in
	state    string // the shell's variables and directory after the last chunk
	env      []string
	addr     string // replaces 127.0.0.1:8443
	s3       *s3test.Server
	daemon   *exec.Cmd
	exited   chan struct{}
	daemonRC int
	logPath  string
	logN     int
	timeout  time.Duration // per chunk: blockTimeout
}

func newDocsHarness(t *testing.T, root string) *docsHarness {
	h := &docsHarness{t: t, work: filepath.Join(t.TempDir(), "foster"), addr: freeAddr(t), timeout: blockTimeout}
	if err := copyTree(root, h.work); err != nil {
		t.Fatal(err)
	}
	aux := filepath.Join(t.TempDir(), "docs-test")
	shimDir := filepath.Join(aux, "bin")
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	realGo, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shimDir, "go"), []byte(fmt.Sprintf(goShim, realGo, binDir)), 0o755); err != nil {
		t.Fatal(err)
	}
	h.state = filepath.Join(aux, "state.sh")
	if err := os.WriteFile(h.state, []byte("cd "+shellQuote(h.work)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.env = append(envWithout(os.Environ(), "PATH=", "FOSTER_", "CDPATH=", "BASH_ENV=", "ENV="),
		"PATH="+shimDir+string(os.PathListSeparator)+os.Getenv("PATH"), "GOTOOLCHAIN=local", "DOCS_TEST_STATE="+h.state)
	t.Cleanup(h.stopDaemon)
	return h
}

// goShim stands in for `go build -o DIR ./cmd/X...` and `go run ./cmd/X`
// with the binaries TestMain built from this tree; anything else is go.
const goShim = `#!/usr/bin/env bash
set -euo pipefail
REAL=%q
BIN=%q
if [ "${1:-}" = run ] && [[ "${2:-}" == ./cmd/* ]]; then
  name="${2#./cmd/}"; shift 2; exec "$BIN/$name" "$@"
fi
if [ "${1:-}" = build ]; then
  out=""; pkgs=(); shift
  while [ $# -gt 0 ]; do
    case "$1" in
      -o) out="$2"; shift 2;;
      ./cmd/*) pkgs+=("${1#./cmd/}"); shift;;
      *) exec "$REAL" build "$@";;
    esac
  done
  if [ -n "$out" ] && [ ${#pkgs[@]} -gt 0 ]; then
    case "$out" in */) mkdir -p "$out";; esac
    for p in "${pkgs[@]}"; do
      if [ -d "$out" ]; then cp "$BIN/$p" "$out/$p"; else cp "$BIN/$p" "$out"; fi
    done
    exit 0
  fi
fi
exec "$REAL" "$@"
`

// stateSave is appended to each chunk: on success it records the shell's
// variables (not bash's own, not read-only ones) and directory for the next.
const stateSave = `
__docs_save() {
  local __v __names=()
  for __v in $(compgen -v); do
    case "$__v" in
      BASH*|FUNCNAME|GROUPS|PIPESTATUS|SHELLOPTS|EUID|PPID|UID|SHLVL|RANDOM|SRANDOM|SECONDS|LINENO|_|OPTIND|OPTARG|OPTERR|DIRSTACK|HIST*|COMP*|EPOCH*|PWD|OLDPWD|IFS|PS1|PS2|PS4|__*|DOCS_TEST_STATE) ;;
      *) __names+=("$__v");;
    esac
  done
  { declare -p "${__names[@]}" 2>/dev/null | grep -v '^declare -[a-zA-Z]*r' || true; printf 'cd %q\n' "$PWD"; } > "$DOCS_TEST_STATE.tmp"
  mv "$DOCS_TEST_STATE.tmp" "$DOCS_TEST_STATE"
}
trap '__rc=$?; if [ $__rc -eq 0 ]; then __docs_save; fi; exit $__rc' EXIT
`

func (h *docsHarness) substitute(s string) string {
	s = strings.ReplaceAll(s, "127.0.0.1:8443", h.addr)
	if h.s3 != nil {
		s = strings.ReplaceAll(s, "http://127.0.0.1:9000", h.s3.Endpoint)
	}
	return s
}

var bucketRE = regexp.MustCompile(`s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])`)

// needS3 starts the S3 server and creates the buckets a block names.
func (h *docsHarness) needS3(text string) {
	m := bucketRE.FindAllStringSubmatch(text, -1)
	if len(m) == 0 {
		return
	}
	if h.s3 == nil {
		h.s3 = s3test.StartServer(h.t)
		h.env = append(envWithout(h.env, "AWS_"), awsEnv()...)
	}
	for _, b := range m {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := h.s3.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(b[1])})
		cancel()
		var owned interface{ ErrorCode() string }
		if err != nil && !(errors.As(err, &owned) && strings.HasPrefix(owned.ErrorCode(), "BucketAlready")) {
			h.t.Fatalf("creating bucket %s: %v", b[1], err)
		}
	}
}

// awsEnv is the AWS_* environment s3test set for its server.
func awsEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AWS_") {
			out = append(out, kv)
		}
	}
	return out
}

// runBlock runs one block: chunks of ordinary commands in bash, each fosterd
// command in the background.
func (h *docsHarness) runBlock(b docBlock) {
	t := h.t
	cmds := splitCommands(b)
	for _, c := range cmds {
		if runsForever(c) {
			t.Fatalf("%s:%d: %q runs until interrupted: make the docs run it so it exits, or mark the block with %s REASON --> on the line before its fence",
				b.file, c.line, strings.TrimSpace(c.text), skipMarker)
		}
	}
	h.needS3(b.text)
	var chunk []command
	flush := func() {
		if len(chunk) > 0 {
			if err := h.runChunk(b, chunk); err != nil {
				t.Error(err)
			}
			chunk = nil
		}
	}
	for _, c := range cmds {
		if isFosterd(c) {
			flush()
			if t.Failed() {
				return
			}
			h.startDaemon(b, c)
		} else {
			chunk = append(chunk, c)
		}
		if t.Failed() {
			return
		}
	}
	flush()
}

func (h *docsHarness) runChunk(b docBlock, chunk []command) error {
	var body strings.Builder
	for _, c := range chunk {
		body.WriteString(c.text)
	}
	text := h.substitute(body.String())
	script := "source \"$DOCS_TEST_STATE\"\n" + stateSave + "\n" + text
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = h.work
	cmd.Env = h.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // what the block left in the background
	}
	took := time.Since(start).Round(time.Millisecond)
	if err == nil {
		h.t.Logf("%s:%d: ok (%v)", b.file, chunk[0].line, took)
		return nil
	}
	why := err.Error()
	if ctx.Err() != nil {
		why = fmt.Sprintf("did not finish within %v: a command that does not exit? (it must exit, or the block needs %s REASON -->)", h.timeout, skipMarker)
	}
	return fmt.Errorf("%s:%d: block failed after %v: %s\n--- commands (lines %d-%d) ---\n%s--- output ---\n%s%s",
		b.file, chunk[0].line, took, why, chunk[0].line, chunk[len(chunk)-1].line+strings.Count(chunk[len(chunk)-1].text, "\n")-1,
		numbered(chunk), out.String(), h.daemonLog())
}

func numbered(chunk []command) string {
	var b strings.Builder
	for _, c := range chunk {
		for i, l := range strings.Split(strings.TrimSuffix(c.text, "\n"), "\n") {
			fmt.Fprintf(&b, "%5d  %s\n", c.line+i, l)
		}
	}
	return b.String()
}

// startDaemon stops the running fosterd (the reader's Ctrl-C) and starts the
// block's fosterd command in the background on the test's address.
func (h *docsHarness) startDaemon(b docBlock, c command) {
	t := h.t
	h.stopDaemon()
	text := h.substitute(stripComment(c.text))
	if !strings.Contains(text, "--listen") {
		// Insert after the program name so a trailing argument or comment
		// cannot swallow it.
		loc := fosterdRE.FindStringSubmatchIndex(text)
		text = text[:loc[5]] + " --listen " + h.addr + text[loc[5]:]
	}
	h.logN++
	h.logPath = filepath.Join(filepath.Dir(h.state), fmt.Sprintf("fosterd-%d.log", h.logN))
	logf, err := os.Create(h.logPath)
	if err != nil {
		t.Fatal(err)
	}
	script := "source \"$DOCS_TEST_STATE\"\nexec " + strings.TrimSpace(text) + "\n"
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = h.work
	cmd.Env = h.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	h.daemon, h.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		h.daemonRC = 0
		if err != nil {
			h.daemonRC = 1
		}
		close(exited)
	}(h.exited)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // readiness only
	deadline := time.Now().Add(daemonTimeout)
	for {
		select {
		case <-h.exited:
			h.daemon = nil
			if h.daemonRC == 0 {
				t.Logf("%s:%d: fosterd exited 0 (a one-shot command)", b.file, c.line)
				return
			}
			t.Errorf("%s:%d: fosterd exited at startup:\n%5d  %s%s", b.file, c.line, c.line, c.text, h.daemonLog())
			return
		case <-time.After(100 * time.Millisecond):
		}
		if resp, err := client.Get("https://" + h.addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("%s:%d: fosterd serving on %s (in the background)", b.file, c.line, h.addr)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("%s:%d: fosterd did not answer /healthz on %s within %v%s", b.file, c.line, h.addr, daemonTimeout, h.daemonLog())
			return
		}
	}
}

// stopDaemon interrupts the background fosterd as a reader's Ctrl-C would.
func (h *docsHarness) stopDaemon() {
	if h.daemon == nil {
		return
	}
	pid := h.daemon.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGINT)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-h.exited
	}
	h.daemon = nil
}

func (h *docsHarness) daemonLog() string {
	if h.logPath == "" {
		return ""
	}
	b, _ := os.ReadFile(h.logPath)
	if len(b) > 16<<10 {
		b = b[len(b)-16<<10:]
	}
	return "\n--- fosterd log (" + filepath.Base(h.logPath) + ") ---\n" + string(b)
}

// copyTree copies the repository as a fresh clone would have it: no .git,
// no build output, nothing a walkthrough created.
func copyTree(src, dst string) error {
	skip := map[string]bool{".git": true, "bin": true, "foster-data": true, "dev1": true, "dev2": true, "scratch": true}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() && skip[rel] {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
}

func envWithout(env []string, prefixes ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
