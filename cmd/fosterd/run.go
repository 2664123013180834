package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/pkg/buildinfo"
	"github.com/foster-ota/foster/pkg/env"
)

type config struct {
	dataDir, listen, db, blobs string
	targetRedirect             string
	publicRepository           bool
	readTimeout                time.Duration
	maxConnections             int
	metricsListen              string
	mqttBroker                 string
	// sets are --set KEY=VALUE flags: any config.json setting.
	sets setFlags
	// init creates a development instance when dataDir is missing or
	// empty. Without it fosterd only opens an existing instance: an
	// unmounted volume or a typo must not become a brand-new CA and TUF root.
	init bool
}

// checkInit decides whether fosterd may create an instance in dir, which
// holds none (no config.json). It creates nothing itself.
func checkInit(dir string, init bool) error {
	ents, err := os.ReadDir(dir)
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("reading data directory: %w", err)
	case len(ents) > 0:
		if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err != nil {
			return fmt.Errorf("%s is not empty and holds no Foster instance: refusing to initialise into it", dir)
		}
		// An interrupted Init (config.json is written last): finish it only when asked.
		if !init {
			return fmt.Errorf("%s holds an unfinished Foster instance (no config.json): run with --init to finish creating a development instance", dir)
		}
		return nil
	case init:
		return nil
	case err != nil:
		return fmt.Errorf("data directory %s does not exist (is the volume mounted?); run with --init to create a new development instance", dir)
	default:
		return fmt.Errorf("data directory %s is empty (is the volume mounted?); run with --init to create a new development instance", dir)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	if cfg.readTimeout < 0 || cfg.maxConnections < 0 {
		return fmt.Errorf("--read-timeout and --max-connections must be positive")
	}
	dir, err := filepath.Abs(cfg.dataDir)
	if err != nil {
		return err
	}
	pass := env.Passphrase.Bytes()
	if !instance.Exists(dir) {
		if err := checkInit(dir, cfg.init); err != nil {
			return err
		}
		log.Info("initialising a new development instance", "dir", dir)
		if _, err := instance.Init(ctx, dir, instance.InitOptions{Listen: cfg.listen, DB: cfg.db, Blobs: cfg.blobs, Passphrase: pass, Logger: log}); err != nil {
			return fmt.Errorf("initialising %s: %w", dir, err)
		}
	}
	in, err := instance.Open(ctx, dir, instance.Overrides{
		Listen: cfg.listen, DB: cfg.db, Blobs: cfg.blobs,
		TargetRedirect: cfg.targetRedirect, PublicRepository: cfg.publicRepository,
		ReadTimeout: cfg.readTimeout, MaxConnections: cfg.maxConnections, MetricsListen: cfg.metricsListen,
		MQTTBroker: cfg.mqttBroker, Sets: cfg.sets,
	}, pass, log)
	if err != nil {
		return err
	}
	defer in.Close()
	ln, err := net.Listen("tcp", in.Config.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", in.Config.Listen, err)
	}
	p := instance.PathsOf(dir)
	url := "https://" + ln.Addr().String()
	fmt.Fprintf(os.Stderr, `Foster is serving on %s
  CA root (devices trust this):   %s
  TUF root (devices trust this):  %s
  admin certificate / key:        %s / %s
  data directory:                 %s
Admin CLI:  foster --instance %s device list
`, url, p.CARoot, p.TUFRoot, p.AdminCert, p.AdminKey, dir, cfg.dataDir)
	log.Info("serving", append([]any{"addr", ln.Addr().String()}, buildinfo.Read("fosterd").LogAttrs()...)...)
	for _, w := range in.Warnings {
		fmt.Fprintf(os.Stderr, "\n*** WARNING: %s ***\n\n", w)
		log.Warn(w)
	}
	reloadOnHangup(ctx, in, log)
	notifyReady(log)
	go runWatchdog(ctx, ln.Addr(), in.CA.RootPool(), log)
	return in.Serve(ctx, ln)
}

// reloadOnHangup re-reads server.crt and server.key on SIGHUP (an operator
// replaced them), keeping the current pair if the new one is unusable.
func reloadOnHangup(ctx context.Context, in *instance.Instance, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := in.ReloadServerCertificate(); err != nil {
					log.Error("SIGHUP: reloading the server certificate", "err", err)
				}
			}
		}
	}()
}

// setFlags collects repeated --set KEY=VALUE flags.
type setFlags []string

func (s *setFlags) String() string     { return strings.Join(*s, " ") }
func (s *setFlags) Set(v string) error { *s = append(*s, v); return nil }
