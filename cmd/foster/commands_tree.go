package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/foster-ota/foster/pkg/suggest"
)

// The command tree: what `foster help`, `foster GROUP --help`, the
// "did you mean" suggestion and shell completion list. run dispatches;
// TestCommandTreeMatchesDispatch keeps the two in step.

type subcommand struct {
	name, summary string
}

type command struct {
	name, summary string
	subs          []subcommand // nil: the command takes no subcommand
}

var commandTree = []command{
	{"init", "create an instance directory (--production: offline keys on separate media)", nil},
	{"ca", "the issuing CA: certify a new intermediate offline, then use it", []subcommand{
		{"certify-intermediate", "offline: certify a new issuing key with the root (docs/CA.md)"},
		{"use-intermediate", "issue with a new intermediate on every fosterd, no restart"},
	}},
	{"model", "device models and their hardware ids", []subcommand{
		{"add", "register a device model"},
		{"list", "list models with their hardware ids"},
		{"show", "show one model"},
		{"update", "add or remove a model's hardware ids"},
	}},
	{"token", "one-time enrollment tokens", []subcommand{
		{"create", "mint a token bound to a serial and model (offline with --station)"},
	}},
	{"release", "firmware releases", []subcommand{
		{"add", "upload and sign a release"},
		{"list", "list releases"},
		{"show", "show one release"},
		{"revoke", "stop offering a release"},
	}},
	{"tuf", "TUF repository status and offline signing ceremonies", []subcommand{
		{"status", "versions and expiry of the published metadata"},
		{"keygen", "offline: a new Ed25519 key pair"},
		{"stage", "stage a new root or targets for signing"},
		{"sign", "offline: sign staged metadata"},
		{"combine", "offline: merge signed copies"},
		{"inspect", "whose signatures are there, which thresholds are met"},
		{"publish", "publish signed root or targets"},
		{"rotate", "rotate the timestamp, snapshot or targets key on every fosterd, no restart"},
	}},
	{"keys", "the online keys every fosterd uses (docs/TUF.md, docs/CA.md)", []subcommand{
		{"status", "the key record, held keys, intermediate, and each fosterd's version"},
	}},
	{"device", "enrolled devices", []subcommand{
		{"list", "list devices"},
		{"show", "show one device, its certificates and refusals"},
		{"revoke", "revoke a device's certificates"},
		{"reprovision", "allow a device to enroll again with a new key"},
		{"tag", "add tags to a device (groups are made of tags)"},
		{"untag", "remove tags from a device"},
	}},
	{"group", "device groups: by tag or a static list of serials, signed for devices", []subcommand{
		{"create", "create a group from a tag or a file of serials"},
		{"list", "list groups"},
		{"show", "show one group and its devices"},
		{"delete", "delete a group"},
	}},
	{"rollout", "staged rollouts: waves, groups, automatic halt (docs/ROLLOUTS.md)", []subcommand{
		{"create", "start a rollout of a held release"},
		{"list", "list rollouts with their health"},
		{"show", "show one rollout: wave, counts, failure rate, state"},
		{"promote", "sign the next wave now"},
		{"pause", "stop automatic advance"},
		{"resume", "resume a paused rollout"},
		{"abort", "stop offering the release (share 0)"},
	}},
	{"bundle", "offline bundles for devices that can never reach fosterd (docs/OFFLINE.md)", []subcommand{
		{"export", "write one file: metadata, image, CA bundle and CRL, valid for weeks"},
	}},
	{"nudge", "ask devices to check for updates now, over MQTT (--model M [--serial SN])", nil},
	{"station", "factory stations", []subcommand{
		{"create", "create a station credential bundle"},
		{"list", "list stations with quota and validity"},
		{"revoke", "revoke a station"},
	}},
	{"enroll", "a station submits a device CSR over mTLS (--station FILE)", nil},
	{"admin", "admin and auditor credentials", []subcommand{
		{"create", "issue a credential bundle"},
		{"list", "list credentials"},
		{"revoke", "revoke a credential"},
		{"renew", "a fresh credential for the caller"},
	}},
	{"audit", "install attestations: offline verification, reports, log monitoring", []subcommand{
		{"verify", "offline: verify attestation bundles"},
		{"report", "fleet status (--from-log: from the transparency log alone)"},
		{"export-log", "copy the log and TUF metadata out for an offline report"},
		{"monitor", "check the transparency log only grows"},
	}},
	{"console", "the fleet console: a web UI on this machine, with your credential", nil},
	{"blobs", "blob stores (TUF metadata and firmware)", []subcommand{
		{"copy", "offline: copy every object to another store (local files to S3)"},
		{"migrate", "offline: move the instance's blobs to another store, verified, and point config.json there"},
	}},
	{"migrate-blobs", "the same as blobs migrate", nil},
	{"backup", "archive a running instance: store, blobs, config, certificates, keys (docs/OPERATIONS.md)", nil},
	{"restore", "restore a backup into a new data directory and empty stores", nil},
	{"help", "help about any command", nil},
	{"completion", "shell completion script: bash, zsh or fish", nil},
}

func findCommand(name string) (command, bool) {
	for _, c := range commandTree {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func (c command) hasSub(name string) bool {
	for _, s := range c.subs {
		if s.name == name {
			return true
		}
	}
	return false
}

// printGroupHelp lists a group's subcommands.
func printGroupHelp(w io.Writer, c command) {
	fmt.Fprintf(w, "foster %s - %s\n\nUsage:\n  foster [connection] %s COMMAND [flags]\n\nCommands:\n", c.name, c.summary, c.name)
	for _, s := range c.subs {
		fmt.Fprintf(w, "  %-22s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(w, "\nRun \"foster %s COMMAND --help\" for a command's flags, \"foster --help\" for the connection flags.\n", c.name)
}

// unknownCommand reports an unknown command (group is "" at the top level)
// with the closest known one, and returns the usage error (exit 2).
func unknownCommand(stderr io.Writer, group, name string, known []string) error {
	full := strings.TrimSpace(group + " " + name)
	fmt.Fprintf(stderr, "foster: unknown command %q", full)
	if s := suggest.Closest(name, known); s != "" {
		fmt.Fprintf(stderr, "\n\nDid you mean this?\n\tfoster %s\n", strings.TrimSpace(group+" "+s))
	} else {
		fmt.Fprintln(stderr)
	}
	if group == "" {
		fmt.Fprintln(stderr, "\nRun \"foster help\" for the list of commands.")
	} else {
		fmt.Fprintf(stderr, "\nRun \"foster %s --help\" for its commands.\n", group)
	}
	return errUsage
}

func topNames() []string {
	var out []string
	for _, c := range commandTree {
		out = append(out, c.name)
	}
	return out
}

func subNames(c command) []string {
	var out []string
	for _, s := range c.subs {
		out = append(out, s.name)
	}
	return out
}

// globalFlags are the connection flags, for completion.
var globalFlags = []string{"--instance", "--cred", "--station", "--server", "--cert", "--key", "--ca", "--help"}

// completionScript writes a completion script for shell.
func completionScript(w io.Writer, shell string) error {
	var groups []string
	for _, c := range commandTree {
		if len(c.subs) > 0 {
			groups = append(groups, c.name)
		}
	}
	sort.Strings(groups)
	top := strings.Join(topNames(), " ")
	switch shell {
	case "bash":
		fmt.Fprintf(w, "# bash completion for foster: source <(foster completion bash)\n_foster() {\n")
		fmt.Fprintf(w, "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" i w cmd=\"\" n=0\n")
		fmt.Fprintf(w, "  for ((i=1; i<COMP_CWORD; i++)); do\n    w=\"${COMP_WORDS[i]}\"\n")
		fmt.Fprintf(w, "    case \"$w\" in --instance|--cred|--station|--server|--cert|--key|--ca) ((i++)); continue;; -*) continue;; esac\n")
		fmt.Fprintf(w, "    if [ -z \"$cmd\" ]; then cmd=\"$w\"; fi; n=$((n+1))\n  done\n")
		fmt.Fprintf(w, "  if [[ \"$cur\" == -* ]]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(globalFlags, " "))
		fmt.Fprintf(w, "  if [ \"$n\" -eq 0 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", top)
		fmt.Fprintf(w, "  if [ \"$n\" -eq 1 ]; then\n    case \"$cmd\" in\n")
		for _, g := range groups {
			c, _ := findCommand(g)
			fmt.Fprintf(w, "      %s) COMPREPLY=($(compgen -W %q -- \"$cur\"));;\n", g, strings.Join(subNames(c), " "))
		}
		fmt.Fprintf(w, "      help) COMPREPLY=($(compgen -W %q -- \"$cur\"));;\n", top)
		fmt.Fprintf(w, "      completion) COMPREPLY=($(compgen -W \"bash zsh fish\" -- \"$cur\"));;\n")
		fmt.Fprintf(w, "      *) COMPREPLY=($(compgen -f -- \"$cur\"));;\n    esac\n    return\n  fi\n")
		fmt.Fprintf(w, "  COMPREPLY=($(compgen -f -- \"$cur\"))\n}\ncomplete -o default -F _foster foster\n")
	case "zsh":
		fmt.Fprintf(w, "#compdef foster\n# zsh completion for foster: source <(foster completion zsh)\n_foster() {\n")
		fmt.Fprintf(w, "  local -a words_; words_=(${words[2,CURRENT-1]:#-*})\n")
		fmt.Fprintf(w, "  if (( ${#words_} == 0 )); then compadd -- %s; return; fi\n", top)
		fmt.Fprintf(w, "  if (( ${#words_} == 1 )); then\n    case ${words_[1]} in\n")
		for _, g := range groups {
			c, _ := findCommand(g)
			fmt.Fprintf(w, "      %s) compadd -- %s;;\n", g, strings.Join(subNames(c), " "))
		}
		fmt.Fprintf(w, "      help) compadd -- %s;;\n      completion) compadd -- bash zsh fish;;\n      *) _files;;\n    esac\n    return\n  fi\n  _files\n}\n", top)
		fmt.Fprintf(w, "if [ \"$funcstack[1]\" = \"_foster\" ]; then _foster \"$@\"; else compdef _foster foster; fi\n")
	case "fish":
		fmt.Fprintf(w, "# fish completion for foster: foster completion fish | source\n")
		for _, c := range commandTree {
			fmt.Fprintf(w, "complete -c foster -n __fish_use_subcommand -f -a %s -d %q\n", c.name, c.summary)
		}
		for _, g := range groups {
			c, _ := findCommand(g)
			for _, s := range c.subs {
				fmt.Fprintf(w, "complete -c foster -n '__fish_seen_subcommand_from %s' -f -a %s -d %q\n", g, s.name, s.summary)
			}
		}
		fmt.Fprintf(w, "complete -c foster -n '__fish_seen_subcommand_from completion' -f -a 'bash zsh fish'\n")
		for _, f := range globalFlags {
			fmt.Fprintf(w, "complete -c foster -l %s\n", strings.TrimPrefix(f, "--"))
		}
	default:
		return fmt.Errorf("%w: foster completion bash|zsh|fish (not %q)", errUsage, shell)
	}
	return nil
}
