package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

func runCLI(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), err
}

// `foster GROUP --help` and `foster help GROUP` list the group's commands and
// succeed (exit 0), as kubectl, step and gh do.
func TestGroupHelpListsSubcommandsAndSucceeds(t *testing.T) {
	for _, c := range commandTree {
		if len(c.subs) == 0 {
			continue
		}
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}, {c.name}} {
			out, errOut, err := runCLI(args...)
			if err != nil {
				t.Errorf("foster %s: %v\n%s", strings.Join(args, " "), err, errOut)
				continue
			}
			all := out + errOut
			for _, s := range c.subs {
				if !strings.Contains(all, s.name) {
					t.Errorf("foster %s does not list %q:\n%s", strings.Join(args, " "), s.name, all)
				}
			}
		}
	}
	out, _, err := runCLI("help")
	if err != nil || !strings.Contains(out, "completion") || !strings.Contains(out, "model update") {
		t.Fatalf("foster help: %v\n%s", err, out)
	}
}

// Every command the tree lists is one run dispatches: its --help is its own
// usage, never "unknown command".
func TestCommandTreeMatchesDispatch(t *testing.T) {
	for _, c := range commandTree {
		subs := c.subs
		if len(subs) == 0 {
			subs = []subcommand{{}}
		}
		for _, s := range subs {
			args := []string{c.name}
			if s.name != "" {
				args = append(args, s.name)
			}
			if c.name == "completion" {
				args = append(args, "bash")
			} else {
				args = append(args, "--help")
			}
			_, errOut, err := runCLI(args...)
			if err != nil && !errors.Is(err, flag.ErrHelp) {
				t.Errorf("foster %s: %v\n%s", strings.Join(args, " "), err, errOut)
			}
			if strings.Contains(errOut, "unknown command") {
				t.Errorf("foster %s: %s", strings.Join(args, " "), errOut)
			}
		}
	}
}

func TestUnknownCommandSuggestsTheClosest(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"modle"}, "foster model"},
		{[]string{"devices", "list"}, "foster device"},
		{[]string{"model", "lst"}, "foster model list"},
		{[]string{"release", "revok"}, "foster release revoke"},
		{[]string{"tuf", "keygn"}, "foster tuf keygen"},
		{[]string{"audit", "verfy"}, "foster audit verify"},
	}
	for _, tt := range tests {
		_, errOut, err := runCLI(tt.args...)
		if !errors.Is(err, errUsage) || !strings.Contains(errOut, "unknown command") || !strings.Contains(errOut, tt.want) {
			t.Errorf("foster %s: err %v, stderr:\n%s\nwant \"unknown command\" and %q", strings.Join(tt.args, " "), err, errOut, tt.want)
		}
	}
	if _, errOut, _ := runCLI("zzzzzzzz"); strings.Contains(errOut, "Did you mean") {
		t.Errorf("a suggestion for nonsense:\n%s", errOut)
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, errOut, err := runCLI("completion", sh)
		if err != nil || !strings.Contains(out, "model") || !strings.Contains(out, "update") {
			t.Fatalf("completion %s: %v %s\n%s", sh, err, errOut, out)
		}
		if sh == "bash" {
			cmd := exec.Command("bash", "-c", out+"\nCOMP_WORDS=(foster mod); COMP_CWORD=1; _foster; echo \"${COMPREPLY[@]}\"\nCOMP_WORDS=(foster --instance d model up); COMP_CWORD=4; _foster; echo \"${COMPREPLY[@]}\"")
			got, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(got), "model") || !strings.Contains(string(got), "update") {
				t.Fatalf("bash completion: %v\n%s", err, got)
			}
		}
	}
	if _, _, err := runCLI("completion", "powershell"); !errors.Is(err, errUsage) {
		t.Fatalf("unknown shell: %v", err)
	}
}

// TestEveryDispatchedCommandIsInTheTree: a command run dispatches (a case
// of cli.go's switch) but the tree lacks is refused as "unknown command"
// before it is dispatched. This reads the switch from the source so a new
// command cannot be added to one and not the other.
func TestEveryDispatchedCommandIsInTheTree(t *testing.T) {
	src, err := os.ReadFile("cli.go")
	if err != nil {
		t.Fatal(err)
	}
	cases := regexp.MustCompile(`(?m)^\s*case "([a-z-]+) ?([a-z-]*)":`).FindAllStringSubmatch(string(src), -1)
	if len(cases) < 30 {
		t.Fatalf("found only %d dispatch cases in cli.go: has the switch moved?", len(cases))
	}
	for _, m := range cases {
		c, ok := findCommand(m[1])
		if !ok {
			t.Errorf("foster %s is dispatched but not in commandTree", m[1])
			continue
		}
		if m[2] != "" && !c.hasSub(m[2]) {
			t.Errorf("foster %s %s is dispatched but not in commandTree", m[1], m[2])
		}
	}
}
