// Command fosterd is Foster's server: device CA, TUF firmware repository,
// blob distribution, attestation ingest and the admin API.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/foster-ota/foster/pkg/buildinfo"
	"github.com/foster-ota/foster/pkg/env"
)

const usage = `fosterd - Foster server: device identities (CA), signed firmware (TUF), install attestations.

Usage:
  fosterd [--data-dir DIR] [--init] [--listen ADDR] [--db URL] [--blobs URL]
          [--target-redirect presign|none] [--public-repository]
          [--read-timeout DURATION] [--max-connections N] [--metrics-listen ADDR]
          [--mqtt-broker tcp://HOST:PORT] [--set KEY=VALUE ...] [--log-format text|json]
  fosterd --data-dir DIR [--listen ADDR] --probe
  fosterd --version

fosterd serves the instance in --data-dir. It never creates one unless asked:
with --init, on an empty or missing --data-dir, it initialises a development
instance (PKI, TUF keys and root.json, SQLite store, file blob store, an admin
certificate) and prints where everything is; on an initialised directory
--init changes nothing. Without --init, a missing or empty --data-dir (an
unmounted volume, a typo) is an error, never a new CA. A development instance
keeps its offline keys (root CA, TUF root and targets) in DIR/keys and fosterd
warns about them at start; for production, create the instance with
foster init --production --offline-dir OFFLINE (docs/OPERATIONS.md) and start
fosterd on it without --init.

Every config.json setting can also be set with --set KEY=VALUE (repeatable,
e.g. --set http.write_timeout=90s) or the environment variable FOSTER_KEY
(FOSTER_HTTP_WRITE_TIMEOUT=90s); precedence: flag > environment >
config.json > default (docs/CONFIG.md).

fosterd renews its own TLS server certificate when two thirds of its life
have passed, without a restart; SIGHUP makes it re-read a replaced
server.crt/server.key (docs/CA.md).

Flags:
`

func main() {
	var cfg config
	var version, probeReady bool
	var logFormat string
	fs := flag.NewFlagSet("fosterd", flag.ContinueOnError)
	fs.BoolVar(&version, "version", false, "print the version, VCS commit and Go version, and exit")
	fs.StringVar(&cfg.dataDir, "data-dir", "foster-data", "instance data directory")
	fs.BoolVar(&cfg.init, "init", false, "create a development instance in --data-dir when it is missing or empty (no-op on an initialised one)")
	fs.StringVar(&cfg.listen, "listen", "", "HTTPS listen address (default from config.json; 127.0.0.1:8443 for a new instance)")
	fs.StringVar(&cfg.db, "db", "", "store: SQLite file path or postgres://user@host:5432/db (default from config.json; foster.db)")
	fs.StringVar(&cfg.blobs, "blobs", "", "blob store URL: file:PATH or s3://bucket?endpoint=... (default from config.json; file:blobs)")
	fs.StringVar(&cfg.targetRedirect, "target-redirect", "", "presign: redirect target downloads to presigned S3 URLs; none: stream them (default from config.json)")
	fs.BoolVar(&cfg.publicRepository, "public-repository", false, "serve /tuf/ and /targets/ without client certificates (any TUF client with root.json)")
	fs.DurationVar(&cfg.readTimeout, "read-timeout", 0, "time a client has to send a whole request, body included (default from config.json http.read_timeout; 20s)")
	fs.IntVar(&cfg.maxConnections, "max-connections", 0, "most connections open at once; more wait (default from config.json http.max_connections; 1024)")
	fs.StringVar(&logFormat, "log-format", "text", "log format on stderr: text or json (one JSON object a line, for log collectors)")
	fs.BoolVar(&probeReady, "probe", false, "do not serve: ask the fosterd serving --data-dir (at --listen or config.json's listen) for GET /readyz and exit 0 when it is ready, 1 otherwise (health check for images without a shell)")
	fs.StringVar(&cfg.metricsListen, "metrics-listen", "", "also serve GET /metrics without authentication, over plain HTTP, on this address, e.g. 127.0.0.1:9464 (default from config.json http.metrics_listen; off)")
	fs.Var(&cfg.sets, "set", "KEY=VALUE: set a config.json setting for this run, e.g. http.write_timeout=90s (repeatable; docs/CONFIG.md)")
	fs.StringVar(&cfg.mqttBroker, "mqtt-broker", "", "MQTT broker for \"update now\" nudges, tcp://HOST:PORT or ssl://HOST:PORT (default from config.json mqtt.broker; none)")
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(os.Stderr, "\n"+env.Help())
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if version {
		fmt.Println(buildinfo.Read("fosterd"))
		return
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fosterd: unexpected argument %q (see fosterd --help)\n", fs.Arg(0))
		os.Exit(2)
	}
	opts := &slog.HandlerOptions{Level: logLevel(env.LogLevel.Get())}
	var log *slog.Logger
	switch logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		fmt.Fprintf(os.Stderr, "fosterd: --log-format %q: want text or json\n", logFormat)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if probeReady {
		if err := probe(ctx, cfg); err != nil {
			fmt.Fprintf(os.Stderr, "fosterd: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, cfg, log); err != nil {
		fmt.Fprintf(os.Stderr, "fosterd: %v\n", err)
		os.Exit(1)
	}
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if l.UnmarshalText([]byte(s)) != nil {
		return slog.LevelInfo
	}
	return l
}
