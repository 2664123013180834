package main

import (
	"strings"
	"testing"
)

// noJSON are the commands without --json, each with why: they print no
// result object (a file they wrote, a script, a secret kept out of stdout).
// Every other command of the tree prints its result as JSON with --json
// (docs/CONTRACTS.md, "CLI output").
var noJSON = map[string]string{
	"init":                    "offline: writes an instance directory",
	"ca certify-intermediate": "offline: writes a certificate file",
	"tuf keygen":              "offline: writes a key pair",
	"tuf sign":                "offline: writes signed metadata (--out)",
	"tuf combine":             "offline: writes merged metadata (--out)",
	"station create":          "writes a secret credential bundle (--out)",
	"admin create":            "writes a secret credential bundle (--out)",
	"admin renew":             "writes a secret credential bundle",
	"enroll":                  "writes the device certificate (--out)",
	"audit monitor":           "a monitor: its exit code is the result (docs/AUDIT.md)",
	"blobs copy":              "offline: copies objects, prints progress",
	"completion":              "prints a shell script",
	"help":                    "prints help",
	"console":                 "serves a web UI until Ctrl-C; its pages read the same API objects",
}

// TestEveryCommandThatPrintsAcceptsJSON walks the command tree: every
// command that prints a result documents --json in its --help, unless
// noJSON says why not (and noJSON names only commands that exist).
func TestEveryCommandThatPrintsAcceptsJSON(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commandTree {
		leaves := []string{c.name}
		if c.subs != nil {
			leaves = nil
			for _, s := range c.subs {
				leaves = append(leaves, c.name+" "+s.name)
			}
		}
		for _, l := range leaves {
			seen[l] = true
			if _, ok := noJSON[l]; ok {
				continue
			}
			out, errOut, _ := runCLI(append(strings.Fields(l), "--help")...)
			if !strings.Contains(out+errOut, "-json") {
				t.Errorf("foster %s --help lists no --json (add it, or say in noJSON why it prints no result):\n%s%s", l, out, errOut)
			}
		}
	}
	for l := range noJSON {
		if !seen[l] {
			t.Errorf("noJSON names %q, which is not a command", l)
		}
	}
}
