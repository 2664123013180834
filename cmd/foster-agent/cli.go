package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/pkg/buildinfo"
	"github.com/foster-ota/foster/pkg/suggest"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

const defaultStateDir = "/var/lib/foster-agent"

const mainUsage = `foster-agent: Foster device agent (enroll, update, attest).

Usage:
  foster-agent [--state-dir DIR] [--log-level LEVEL] <command> [flags]
  foster-agent --version

Commands:
  enroll   generate the device key and obtain a device certificate with a one-time token
           (an admin's token, or a factory station's offline token)
  run      check for a firmware update, download and verify it, install it, attest it
  install-bundle  the same from an offline bundle (file, directory, HTTP mirror), without fosterd
  status   show identity, certificate expiry, installed release and queued attestations
  renew    renew the device certificate (run does this when due, at ~2/3 of its life)
  tuf      TUF client conformance mode: init, refresh, download (tuf-conformance client CLI)
  help     show help for a command: foster-agent help <command>

Global flags (also accepted after the command):
`

// globals are the flags shared by every command.
type globals struct {
	stateDir string
	logLevel string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.stateDir, "state-dir", g.stateDir, "agent state `DIR` (device key, certificate, trust roots, journal)")
	fs.StringVar(&g.logLevel, "log-level", g.logLevel, "log `LEVEL`: debug, info, warn or error (logs go to stderr)")
}

func (g *globals) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// command is one subcommand.
type command struct {
	name, summary, usage string
	// flags registers the command's flags and returns the function that runs it.
	flags func(fs *flag.FlagSet, g *globals) func(ctx context.Context, env *env) error
	// args: the command takes positional arguments (env.args).
	args bool
	// failCode replaces exitUsage for usage errors (tuf: 1 on any failure).
	failCode int
}

// env is what a command runs with.
type env struct {
	g              *globals
	stdout, stderr io.Writer
	log            *slog.Logger
	args           []string
}

// usageError is a command-line mistake: exit code 2 and a pointer to --help.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func commands() []command {
	return []command{enrollCmd(), runCmd(), installBundleCmd(), statusCmd(), renewCmd(), tufCmd()}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stateDir: defaultStateDir, logLevel: "info"}
	top := flag.NewFlagSet("foster-agent", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	g.register(top)
	version := top.Bool("version", false, "print the version, VCS commit and Go version, and exit")
	top.Usage = func() {}
	printMain := func(w io.Writer) {
		fmt.Fprint(w, mainUsage)
		printFlags(w, top)
	}
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printMain(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "foster-agent: %v\n\n", err)
		printMain(stderr)
		return exitUsage
	}
	if *version {
		fmt.Fprintln(stdout, buildinfo.Read("foster-agent"))
		return exitOK
	}
	rest := top.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, "foster-agent: missing command\n\n")
		printMain(stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 0 {
			printMain(stdout)
			return exitOK
		}
		name, rest = rest[0], []string{"--help"}
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == name {
			cmd = &c
		}
	}
	if cmd == nil {
		var known []string
		for _, c := range commands() {
			known = append(known, c.name)
		}
		fmt.Fprintf(stderr, "foster-agent: unknown command %q\n", name)
		if s := suggest.Closest(name, append(known, "help")); s != "" {
			fmt.Fprintf(stderr, "\nDid you mean this?\n\tfoster-agent %s\n", s)
		}
		fmt.Fprint(stderr, "\nRun \"foster-agent help\" for the list of commands.\n")
		return exitUsage
	}

	fs := flag.NewFlagSet("foster-agent "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	exec := cmd.flags(fs, g)
	g.register(fs)
	printCmd := func(w io.Writer) {
		fmt.Fprintf(w, "foster-agent %s: %s\n\nUsage:\n  %s\n\nFlags:\n", cmd.name, cmd.summary, cmd.usage)
		printFlags(w, fs)
	}
	usageCode := exitUsage
	if cmd.failCode != 0 {
		usageCode = cmd.failCode
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printCmd(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "foster-agent %s: %v\n\n", cmd.name, err)
		printCmd(stderr)
		return usageCode
	}
	if fs.NArg() > 0 && !cmd.args {
		fmt.Fprintf(stderr, "foster-agent %s: unexpected argument %q\n\n", cmd.name, fs.Arg(0))
		printCmd(stderr)
		return usageCode
	}
	log, err := g.logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "foster-agent: %v\n", err)
		return usageCode
	}
	if g.stateDir == "" {
		fmt.Fprintf(stderr, "foster-agent %s: --state-dir must not be empty\n", cmd.name)
		return usageCode
	}
	err = exec(ctx, &env{g: g, stdout: stdout, stderr: stderr, log: log, args: fs.Args()})
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "foster-agent %s: %v\n\n", cmd.name, err)
		printCmd(stderr)
		return usageCode
	default:
		fmt.Fprintf(stderr, "foster-agent %s: %v\n", cmd.name, err)
		return exitError
	}
}

// printFlags is flag.PrintDefaults with the --long spelling this CLI documents.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		head := "  --" + f.Name
		if typ != "" {
			head += " " + typ
		}
		fmt.Fprintf(w, "%s\n    \t%s", head, usage)
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// required returns a usage error naming every empty flag.
func required(flags ...[2]string) error {
	var missing []string
	for _, f := range flags {
		if strings.TrimSpace(f[1]) == "" {
			missing = append(missing, "--"+f[0])
		}
	}
	if len(missing) > 0 {
		return usagef("missing required flag(s): %s", strings.Join(missing, ", "))
	}
	return nil
}

func enrollCmd() command {
	return command{
		name:    "enroll",
		summary: "generate the device key on this device and obtain its certificate with a one-time token",
		usage: "foster-agent --state-dir DIR enroll --server https://HOST:PORT --token TOKEN --serial SN --model MODEL \\\n" +
			"      --ca-root ca.pem --tuf-root root.json",
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var c client.EnrollConfig
			var tokenFile string
			fs.StringVar(&c.Server, "server", "", "fosterd `URL`, https only (required)")
			fs.StringVar(&c.Token, "token", "", "one-time enrollment `TOKEN` (required unless --token-file; visible in the process list)")
			fs.StringVar(&tokenFile, "token-file", "", "read the enrollment token from `FILE` instead of --token")
			fs.StringVar(&c.Serial, "serial", "", "device serial number `SN`; becomes the certificate CN (required)")
			fs.StringVar(&c.Model, "model", "", "device `MODEL`, as registered on the server (required)")
			fs.StringVar(&c.HardwareID, "hardware-id", "", "hardware `ID` of this device, one of its model's (required when the model declares hardware ids): only images listing it (or listing none) will be installed")
			fs.StringVar(&c.CARootPath, "ca-root", "", "Foster root CA certificate `PEM` file that the server's TLS certificate must chain to (required)")
			fs.StringVar(&c.TUFRootPath, "tuf-root", "", "initial trusted TUF root metadata `FILE` (root.json) (required)")
			fs.DurationVar(&c.Timeout, "timeout", client.DefaultRequestTimeout, "timeout of the enrollment request")
			return func(ctx context.Context, e *env) error {
				if tokenFile != "" {
					if c.Token != "" {
						return usagef("use either --token or --token-file, not both")
					}
					b, err := os.ReadFile(tokenFile)
					if err != nil {
						return fmt.Errorf("reading token: %w", err)
					}
					c.Token = strings.TrimSpace(string(b))
				}
				if err := required([2]string{"server", c.Server}, [2]string{"token", c.Token}, [2]string{"serial", c.Serial},
					[2]string{"model", c.Model}, [2]string{"ca-root", c.CARootPath}, [2]string{"tuf-root", c.TUFRootPath}); err != nil {
					return err
				}
				c.StateDir, c.Logger = e.g.stateDir, e.log
				res, err := client.Enroll(ctx, c)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "enrolled %s; certificate valid until %s\n",
					res.Device, res.NotAfter.UTC().Format(time.RFC3339))
				return nil
			}
		},
	}
}

// agentFlags are the settings run and install-bundle share: the installer
// (from the config file, overridden by flags), timeouts, health check and
// reboot.
type agentFlags struct {
	fs                     *flag.FlagSet
	configPath             string
	installer, target      string
	reqTimeout, stallTime  time.Duration
	minRate                int64
	healthCheck            string
	healthTimeout          time.Duration
	rebootCommand, bootIDs string
	mqtt                   client.MQTTConfig
}

func registerAgentFlags(fs *flag.FlagSet) *agentFlags {
	f := &agentFlags{fs: fs}
	fs.StringVar(&f.configPath, "config", "", "agent config `FILE` (JSON; default "+client.DefaultConfigPath+" if it exists)")
	fs.StringVar(&f.installer, "installer", "", "installer `NAME`, one of: "+strings.Join(client.InstallerNames, ", ")+
		" (default file; ab, rauc, swupdate and script are configured in the config file)")
	fs.StringVar(&f.target, "target", "", "`PATH` of the file the file installer replaces")
	fs.DurationVar(&f.reqTimeout, "request-timeout", client.DefaultRequestTimeout, "timeout of each API and metadata request")
	fs.DurationVar(&f.stallTime, "stall-timeout", client.DefaultStallTimeout, "abort a download when no data arrives for this long")
	fs.Int64Var(&f.minRate, "min-rate", 0, "abandon (and later resume) a download slower than `BYTES` per second over the rate window; 0 disables")
	fs.StringVar(&f.healthCheck, "health-check", "", "shell `COMMAND` that must exit 0 once the new image runs, or the install is rolled back")
	fs.DurationVar(&f.healthTimeout, "health-timeout", client.DefaultHealthTimeout, "timeout of the health check")
	fs.StringVar(&f.rebootCommand, "reboot-command", "", "shell `COMMAND` that reboots the device (default: reboot)")
	fs.StringVar(&f.bootIDs, "boot-id-file", "", "`FILE` whose content changes on every boot (default /proc/sys/kernel/random/boot_id)")
	return f
}

// registerMQTT adds the nudge flags (run only).
func (f *agentFlags) registerMQTT() {
	fs := f.fs
	fs.StringVar(&f.mqtt.Broker, "mqtt-broker", "", "MQTT broker `URL` (tcp://HOST:PORT or ssl://HOST:PORT) to listen on for \"update now\" nudges; polling goes on as usual (default: none)")
	fs.StringVar(&f.mqtt.CAFile, "mqtt-ca", "", "CA certificates `PEM` the MQTT broker's certificate must chain to (ssl://; default: system roots)")
	fs.StringVar(&f.mqtt.CertFile, "mqtt-cert", "", "client certificate `PEM` for the MQTT broker (ssl://)")
	fs.StringVar(&f.mqtt.KeyFile, "mqtt-key", "", "client key `PEM` for the MQTT broker (ssl://)")
	fs.DurationVar(&f.mqtt.MinInterval, "nudge-min-interval", client.DefaultNudgeInterval, "at most one nudged check per this long")
}

// config builds the agent config from the config file and the flags set.
// It returns the file config too (run reads its interval).
func (f *agentFlags) config(e *env) (client.Config, *client.FileConfig, error) {
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	fc := &client.FileConfig{}
	path := f.configPath
	if path == "" {
		if _, err := os.Stat(client.DefaultConfigPath); err == nil {
			path = client.DefaultConfigPath
		}
	}
	if path != "" {
		var err error
		if fc, err = client.LoadFileConfig(path); err != nil {
			return client.Config{}, nil, err
		}
	}
	if set["installer"] {
		fc.Installer = f.installer
	}
	if fc.Installer == "" {
		fc.Installer = "file"
	}
	if set["target"] {
		fc.File.Path = f.target
	}
	if set["mqtt-broker"] {
		fc.MQTTBroker = f.mqtt.Broker
	}
	if set["mqtt-ca"] {
		fc.MQTTCAFile = f.mqtt.CAFile
	}
	if set["mqtt-cert"] {
		fc.MQTTCertFile = f.mqtt.CertFile
	}
	if set["mqtt-key"] {
		fc.MQTTKeyFile = f.mqtt.KeyFile
	}
	if set["nudge-min-interval"] {
		if f.mqtt.MinInterval <= 0 {
			return client.Config{}, nil, usagef("--nudge-min-interval must be positive")
		}
		fc.NudgeMinInterval = client.Duration(f.mqtt.MinInterval)
	}
	if fc.Installer == "file" && fc.File.Path == "" {
		return client.Config{}, nil, required([2]string{"target", ""})
	}
	if f.reqTimeout <= 0 || f.stallTime <= 0 || f.healthTimeout <= 0 || f.minRate < 0 {
		return client.Config{}, nil, usagef("--request-timeout, --stall-timeout and --health-timeout must be positive, --min-rate not negative")
	}
	if err := fc.Validate(); err != nil {
		return client.Config{}, nil, usagef("%v", err)
	}
	inst, err := fc.BuildInstaller(e.g.stateDir)
	if err != nil {
		if path == "" { // from flags alone
			return client.Config{}, nil, usagef("%v", err)
		}
		return client.Config{}, nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg := client.Config{StateDir: e.g.stateDir, Installer: inst, Logger: e.log}
	if set["request-timeout"] {
		cfg.RequestTimeout = f.reqTimeout
	}
	if set["stall-timeout"] {
		cfg.StallTimeout = f.stallTime
	}
	if set["min-rate"] {
		cfg.MinRate = f.minRate
	}
	if f.healthCheck != "" {
		cfg.HealthCheck = []string{"/bin/sh", "-c", f.healthCheck}
	}
	if set["health-timeout"] {
		cfg.HealthTimeout = f.healthTimeout
	}
	if f.rebootCommand != "" {
		cfg.RebootCommand = []string{"/bin/sh", "-c", f.rebootCommand}
	}
	cfg.BootIDFile = f.bootIDs
	fc.Apply(&cfg)
	return cfg, fc, nil
}

func runCmd() command {
	return command{
		name:    "run",
		summary: "check for, download, verify, install, health-check, commit or roll back, and attest firmware updates",
		usage: "foster-agent --state-dir DIR run [--once] [--config FILE] [--installer NAME] [--target PATH] [flags]\n" +
			"  (the installer and its settings come from the config file, default " + client.DefaultConfigPath + " when it exists;\n" +
			"   flags override it; docs/AGENT.md documents the file)",
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var (
				once     bool
				interval time.Duration
			)
			fs.BoolVar(&once, "once", false, "check once, install if needed, and exit (default: loop until SIGINT/SIGTERM); "+
				"after a reboot request the process exits and the next run continues the install")
			fs.DurationVar(&interval, "interval", client.DefaultInterval, "time between checks when looping (jittered by ±10%)")
			af := registerAgentFlags(fs)
			af.registerMQTT()
			return func(ctx context.Context, e *env) error {
				if interval <= 0 {
					return usagef("--interval must be positive")
				}
				cfg, fc, err := af.config(e)
				if err != nil {
					return err
				}
				intervalSet := false
				fs.Visit(func(f *flag.Flag) { intervalSet = intervalSet || f.Name == "interval" })
				if !intervalSet && fc.Interval > 0 {
					interval = time.Duration(fc.Interval)
				}
				a, err := client.New(cfg)
				if err != nil {
					return err
				}
				if !once {
					e.log.Info("agent started", "interval", interval, "installer", cfg.Installer.Name())
					err := a.Run(ctx, interval)
					e.log.Info("agent stopped")
					return err
				}
				rep, err := a.RunOnce(ctx)
				if err != nil {
					return err
				}
				attrs := []any{"up_to_date", rep.UpToDate, "phase", rep.Phase, "attestations_sent", rep.AttestationsSent,
					"attestations_queued", rep.AttestationsQueued}
				if rep.Installed != nil {
					attrs = append(attrs, "installed", rep.Installed.Name, "version", rep.Installed.Version)
				}
				if rep.Rebooting {
					attrs = append(attrs, "rebooting", true)
				}
				e.log.Info("run complete", attrs...)
				return nil
			}
		},
	}
}

func installBundleCmd() command {
	return command{
		name:    "install-bundle",
		summary: "verify and install an offline bundle (file, directory or HTTP mirror) without reaching fosterd",
		usage: "foster-agent --state-dir DIR install-bundle [--verify-only] [--json] [installer flags] FILE|DIR\n" +
			"  foster-agent --state-dir DIR install-bundle --mirror http://HOST/PATH/ [flags]\n" +
			"  (FILE is written by foster bundle export; DIR is an unpacked bundle, a copy of the repository, or a USB stick\n" +
			"   holding one bundle file. Verification, rollback protection, installers and journal are the online ones;\n" +
			"   the install attestation is queued and sent at the next run that reaches fosterd. docs/OFFLINE.md)",
		args: true,
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var (
				mirror     string
				verifyOnly bool
				asJSON     bool
			)
			fs.StringVar(&mirror, "mirror", "", "base `URL` of a plain HTTP(S) mirror of the repository or of an unpacked bundle (URL/tuf/, URL/targets/)")
			fs.BoolVar(&verifyOnly, "verify-only", false, "verify the bundle against this device (metadata, policy, image) and change nothing")
			fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
			af := registerAgentFlags(fs)
			return func(ctx context.Context, e *env) error {
				o := client.BundleOptions{Mirror: mirror, VerifyOnly: verifyOnly}
				switch {
				case len(e.args) > 1:
					return usagef("want one bundle FILE or DIR, got %d arguments", len(e.args))
				case len(e.args) == 1 && mirror != "":
					return usagef("give a bundle FILE|DIR or --mirror, not both")
				case len(e.args) == 1:
					o.Path = e.args[0]
				case mirror == "":
					return usagef("missing bundle FILE|DIR (or --mirror URL)")
				}
				var cfg client.Config
				if verifyOnly {
					cfg = client.Config{StateDir: e.g.stateDir, Logger: e.log}
				} else {
					var err error
					if cfg, _, err = af.config(e); err != nil {
						return err
					}
				}
				a, err := client.New(cfg)
				if err != nil {
					return err
				}
				rep, err := a.InstallBundle(ctx, o)
				if asJSON && rep != nil {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					if jerr := enc.Encode(rep); jerr != nil && err == nil {
						err = jerr
					}
				}
				if err != nil {
					return err
				}
				if !asJSON {
					printBundleReport(e.stdout, rep, verifyOnly)
				}
				return nil
			}
		},
	}
}

func printBundleReport(w io.Writer, rep *client.BundleReport, verifyOnly bool) {
	switch {
	case rep.Installed != nil && rep.Offered == nil:
		fmt.Fprintf(w, "installed %s (version %s, release %d): the install in flight since the reboot is committed\n", rep.Installed.Name, rep.Installed.Version, rep.Installed.ReleaseCounter)
	case rep.Rebooting && rep.Offered == nil:
		fmt.Fprintln(w, "an install in flight requested a reboot; run install-bundle again after it")
	case rep.UpToDate:
		fmt.Fprintf(w, "%s offers nothing newer for this device\n", rep.Source)
	case verifyOnly:
		fmt.Fprintf(w, "verified %s: %s (version %s, release %d, %d bytes) installs on this device; bundle valid until %s\n",
			rep.Source, rep.Offered.Name, rep.Offered.Version, rep.Offered.ReleaseCounter, rep.Offered.Length, rep.Expires.UTC().Format(time.RFC3339))
	case rep.Rebooting:
		fmt.Fprintf(w, "installed %s (version %s) from %s; rebooting into it: the next start of the agent (run, or install-bundle) health-checks and commits it\n",
			rep.Offered.Name, rep.Offered.Version, rep.Source)
	case rep.Installed != nil:
		fmt.Fprintf(w, "installed %s (version %s, release %d) from %s\n", rep.Installed.Name, rep.Installed.Version, rep.Installed.ReleaseCounter, rep.Source)
	}
	if rep.AttestationsQueued > 0 && !verifyOnly {
		fmt.Fprintf(w, "%d attestation(s) queued: the next run that reaches fosterd delivers them\n", rep.AttestationsQueued)
	}
}

// repeated is a flag that may be given several times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func tufCmd() command {
	return command{
		name:    "tuf",
		summary: "TUF client conformance mode over the agent's updater (exit 0 on success, 1 on any failure)",
		usage: "foster-agent tuf --metadata-dir D init ROOT.json\n" +
			"  foster-agent tuf --metadata-dir D --metadata-url URL refresh\n" +
			"  foster-agent tuf --metadata-dir D --metadata-url URL --target-name P [--target-name P2 ...] \\\n" +
			"      --target-base-url TURL --target-dir TD download",
		args:     true,
		failCode: exitError,
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var o client.TUFOptions
			var names repeated
			fs.StringVar(&o.MetadataDir, "metadata-dir", "", "`DIR` of trusted metadata (unversioned names: root.json, timestamp.json, ...)")
			fs.StringVar(&o.MetadataURL, "metadata-url", "", "repository metadata base `URL`")
			fs.Var(&names, "target-name", "target `PATH` to download (repeatable; fetched in order)")
			fs.StringVar(&o.TargetBaseURL, "target-base-url", "", "repository targets base `URL`")
			fs.StringVar(&o.TargetDir, "target-dir", "", "`DIR` that receives downloaded targets")
			return func(ctx context.Context, e *env) error {
				o.TargetNames = names
				if len(e.args) == 0 {
					return usagef("missing subcommand: init, refresh or download")
				}
				sub, args := e.args[0], e.args[1:]
				if sub == "refresh" || sub == "download" {
					// The reference time is the system's date, so
					// libfaketime (which Go's clock ignores) moves it.
					ref, err := client.SystemDate(ctx)
					if err != nil {
						return err
					}
					o.RefTime = ref
				}
				switch {
				case sub == "init" && len(args) == 1:
					if o.MetadataDir == "" {
						return usagef("--metadata-dir is required")
					}
					return client.TUFInit(o.MetadataDir, args[0])
				case sub == "refresh" && len(args) == 0:
					return client.TUFRefresh(ctx, o)
				case sub == "download" && len(args) == 0:
					return client.TUFDownload(ctx, o)
				}
				msg := fmt.Sprintf("unknown or malformed subcommand %q (want: init ROOT.json, refresh, download)", strings.Join(e.args, " "))
				if s := suggest.Closest(sub, []string{"init", "refresh", "download"}); s != "" && s != sub {
					msg += fmt.Sprintf("; did you mean %q?", s)
				}
				return usagef("%s", msg)
			}
		},
	}
}

func statusCmd() command {
	return command{
		name:    "status",
		summary: "show identity, certificate expiry, installed release, last check and queued attestations",
		usage:   "foster-agent --state-dir DIR status [--json]",
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var asJSON bool
			fs.BoolVar(&asJSON, "json", false, "print machine-readable JSON")
			return func(_ context.Context, e *env) error {
				now := time.Now()
				s, err := client.ReadStatus(e.g.stateDir, now)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(s)
				}
				printStatus(e.stdout, s, now)
				return nil
			}
		},
	}
}

func printStatus(w io.Writer, s *client.Status, now time.Time) {
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "%-14s %s\n", k+":", fmt.Sprintf(format, args...)) }
	line("device", "%s", s.Device)
	if s.DeviceID != "" && s.DeviceID != s.Device { // the server's id is the URN today: say it once
		line("device id", "%s", s.DeviceID)
	}
	if s.HardwareID != "" {
		line("hardware id", "%s", s.HardwareID)
	}
	line("server", "%s", s.Server)
	if s.CertExpired {
		line("certificate", "serial %s, EXPIRED at %s (by the local clock)", s.CertSerial, s.CertNotAfter.UTC().Format(time.RFC3339))
	} else {
		line("certificate", "serial %s, valid until %s (%s left)", s.CertSerial,
			s.CertNotAfter.UTC().Format(time.RFC3339), s.CertNotAfter.Sub(now).Round(time.Minute))
	}
	line("phase", "%s", s.Phase)
	target := func(t *client.Target) string {
		if t == nil {
			return "none"
		}
		return fmt.Sprintf("%s (version %s, release %d, sha256 %s)", t.Name, t.Version, t.ReleaseCounter, t.SHA256)
	}
	line("installed", "%s", target(s.Installed))
	if s.Pending != nil {
		line("pending", "%s", target(s.Pending))
	}
	if n := len(s.RolledBack); n > 0 {
		line("rolled back", "%d image(s), not retried (newest sha256 %s)", n, s.RolledBack[n-1])
	}
	if sm := s.SeenMetadata; sm.Timestamp > 0 {
		line("metadata", "root v%d, timestamp v%d, snapshot v%d, targets v%d", sm.Root, sm.Timestamp, sm.Snapshot, sm.Targets)
	}
	if !s.ClockFloor.IsZero() {
		line("time floor", "%s (newest signed time evidence; the clock is not trusted before it)", s.ClockFloor.UTC().Format(time.RFC3339))
	}
	if s.LastCheck.IsZero() {
		line("last check", "never")
	} else {
		line("last check", "%s (%s ago)", s.LastCheck.UTC().Format(time.RFC3339), now.Sub(s.LastCheck).Round(time.Second))
	}
	for _, n := range s.NotOffered {
		line("not offered", "%s", n)
	}
	if s.LastError != "" {
		line("last error", "%s (%s)", s.LastError, s.LastErrorAt.UTC().Format(time.RFC3339))
	}
	q := "none queued"
	if n := len(s.QueuedAttestations); n > 0 {
		seqs := make([]string, n)
		for i, v := range s.QueuedAttestations {
			seqs[i] = fmt.Sprint(v)
		}
		q = fmt.Sprintf("%d queued (sequence %s)", n, strings.Join(seqs, ", "))
	}
	if s.UnsignedAttestations > 0 {
		q += fmt.Sprintf(", %d to sign", s.UnsignedAttestations)
	}
	line("attestations", "%s, %d sent, last sequence %d", q, s.SentAttestations, s.AttestationSequence)
}
