package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The docs test's own parts, without fosterd: what it runs, what it skips,
// and that a block that never exits fails fast instead of hanging CI.

func TestDocsExtractorFindsBlocksAndSkipMarkers(t *testing.T) {
	dir := t.TempDir()
	md := "# x\n\n```sh\necho one \\\n  two\necho three\n```\n\n<!-- docs-test: skip: needs a device -->\n```sh\nfoster console\n```\n\n```json\n{}\n```\n"
	if err := os.WriteFile(filepath.Join(dir, "X.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	bs, err := extractShellBlocks(filepath.Join(dir, "X.md"), dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[0].line != 3 || bs[0].skip != "" || bs[1].skip != "needs a device" {
		t.Fatalf("blocks: %+v", bs)
	}
	cmds := splitCommands(bs[0])
	if len(cmds) != 2 || cmds[0].line != 4 || cmds[1].line != 6 {
		t.Fatalf("commands: %+v", cmds)
	}
	if err := os.WriteFile(filepath.Join(dir, "Y.md"), []byte("<!-- docs-test: skip: -->\n```sh\ntrue\n```\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := extractShellBlocks(filepath.Join(dir, "Y.md"), dir); err == nil {
		t.Fatal("a skip marker without a reason was accepted")
	}
}

func TestDocsHarnessRecognisesServersAndForeverCommands(t *testing.T) {
	for text, want := range map[string][2]bool{ // isFosterd, runsForever
		"go run ./cmd/fosterd --data-dir ./foster-data   # serves\n":     {true, false},
		"go run ./cmd/fosterd --data-dir ./foster-data --init\n":         {true, false},
		"FOSTER_PASSPHRASE=x fosterd --data-dir d --blobs 's3://b' \\\n": {true, false},
		"fosterd --help\n":                                                 {false, false},
		"foster --instance d console\n":                                    {false, true},
		"foster --cred a.cred console --listen 127.0.0.1:0\n":              {false, true},
		"foster-agent --state-dir ./dev1 run\n":                            {false, true},
		"foster-agent --state-dir ./dev1 run --once --installer file\n":    {false, false},
		"foster-agent --state-dir ./dev1 enroll --tuf-root ./root.json\n":  {false, false},
		"tail -f fosterd.log\n":                                            {false, true},
		"foster --instance ./foster-data device list   # run it anytime\n": {false, false},
	} {
		c := command{line: 1, text: text}
		if got := [2]bool{isFosterd(c), runsForever(c)}; got != want {
			t.Errorf("%q: isFosterd, runsForever = %v, want %v", text, got, want)
		}
	}
}

// The last attempt at this test hung CI on a README command that never
// exits: a block that does not finish fails, names its line, and is killed
// with everything it started.
func TestDocsHarnessFailsAHangingBlockInsteadOfHanging(t *testing.T) {
	h := &docsHarness{t: t, work: t.TempDir(), timeout: 2 * time.Second}
	h.state = filepath.Join(t.TempDir(), "state.sh")
	if err := os.WriteFile(h.state, []byte("cd "+shellQuote(h.work)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.env = append(os.Environ(), "DOCS_TEST_STATE="+h.state)
	b := docBlock{file: "README.md", line: 10, text: "X=1\nsleep 600 &\nsleep 600\n"}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- h.runChunk(b, splitCommands(b)) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("a hanging block hung the harness")
	}
	if err == nil || !strings.Contains(err.Error(), "README.md:11") || !strings.Contains(err.Error(), "did not finish within") {
		t.Fatalf("a hanging block: %v", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("a hanging block took %v to fail", took)
	}
	// State carries over between blocks: variables and the directory.
	h.timeout = time.Minute
	for _, text := range []string{"mkdir sub && cd sub\nTOKEN=abc\nexport PATH=$PWD/bin:$PATH\n", "test \"$TOKEN\" = abc\ntest \"$(basename \"$PWD\")\" = sub\ncase \"$PATH\" in */sub/bin:*) ;; *) exit 1;; esac\n"} {
		b := docBlock{file: "README.md", line: 1, text: text}
		if err := h.runChunk(b, splitCommands(b)); err != nil {
			t.Fatalf("shell state did not carry over between blocks: %v", err)
		}
	}
}
