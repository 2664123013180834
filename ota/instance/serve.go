package instance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/nudge"
	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
	"golang.org/x/sync/errgroup"
)

// Overrides replace config.json settings for one run (fosterd flags).
type Overrides struct {
	Listen, DB, Blobs string
	// TargetRedirect "presign" or "none" overrides distribution.target_redirect.
	TargetRedirect string
	// PublicRepository serves /tuf/ and /targets/ without client certificates.
	PublicRepository bool
	// ReadTimeout, MaxConnections and MetricsListen override config.json
	// http.read_timeout, http.max_connections and http.metrics_listen.
	ReadTimeout    time.Duration
	MaxConnections int
	MetricsListen  string
	// MQTTBroker overrides config.json mqtt.broker.
	MQTTBroker string
	// Sets are fosterd's --set KEY=VALUE flags (settings.go), applied over
	// config.json and the FOSTER_<SETTING> environment, before the flags
	// above.
	Sets []string
}

// Instance is an opened data directory, ready to serve.
type Instance struct {
	Dir    string
	Config Config
	Store  *store.DB
	CA     *ca.CA
	Repo   *tufrepo.Repo
	Log    *tlog.Log // install-attestation transparency log
	// Rollouts runs staged rollouts; Serve runs its loop every RolloutTick
	// (config rollouts.tick_interval).
	Rollouts    *rollout.Controller
	RolloutTick time.Duration
	API         *server.Server
	TLS         *tls.Config
	// Nudger publishes "update now" nudges; nil without a broker. The
	// rollout Controller takes it as rollout.Config.Nudger.
	Nudger *nudge.Publisher
	// SyncInterval is how often, with a PostgreSQL store, fosterd checks
	// whether another replica published the TUF repository and reloads it
	// (Repo.Follow). Default DefaultSyncInterval (FOSTER_TEST_SYNC_INTERVAL in
	// tests); set before Serve.
	SyncInterval time.Duration
	// CertCheckInterval is how often fosterd checks whether its server
	// certificate is due for renewal (servercert.go). Default
	// DefaultCertCheckInterval; set before Serve.
	CertCheckInterval time.Duration
	// Warnings are what an operator must hear about this instance (offline
	// keys on the server's disk: OfflineKeyWarning). fosterd logs them at
	// start; GET /v1/tuf (foster tuf status) shows them.
	Warnings   []string
	serverCert *serverCert
	keys       *keyManager // the online key record (keyset.go)
	log        *slog.Logger
}

// Open loads dir and builds every component.
func Open(ctx context.Context, dir string, ov Overrides, passphrase []byte, log *slog.Logger) (_ *Instance, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if err := cfg.ApplyEnv(os.LookupEnv); err != nil {
		return nil, err
	}
	if err := cfg.ApplySets(ov.Sets); err != nil {
		return nil, err
	}
	if ov.Listen != "" {
		cfg.Listen = ov.Listen
	}
	if ov.DB != "" {
		cfg.DB = ov.DB
	}
	if ov.Blobs != "" {
		cfg.Blobs = ov.Blobs
	}
	p := PathsOf(dir)
	deviceValidity, grace, crlValidity, err := cfg.Identity.durations()
	if err != nil {
		return nil, err
	}
	st, err := openStore(ctx, dir, cfg.DB)
	if err != nil {
		return nil, err
	}
	// One cleanup path for every failure below.
	var authority *ca.CA
	defer func() {
		if err != nil {
			if authority != nil {
				authority.Close()
			}
			st.Close()
		}
	}()
	// The online key record overrides config.json's online keys once an
	// admin changed them (keyset.go).
	keys, ks, rec, err := newKeyManager(ctx, dir, cfg, passphrase, st, log)
	if err != nil {
		return nil, err
	}
	interPEM, interKey := keys.intermediate(rec)
	authority, err = ca.Open(dir, ca.Options{
		Passphrase:      passphrase,
		IntermediateKey: interKey,
		IntermediatePEM: interPEM,
		DeviceValidity:  deviceValidity,
		CRL:             &ca.CRLOptions{Store: revocations{st}, Validity: crlValidity},
	})
	if err != nil {
		return nil, recordError(ks, fmt.Errorf("opening CA: %w", err))
	}
	keys.ca = authority
	cfg.Distribution.applyOverrides(ov)
	cfg.HTTP.applyOverrides(ov)
	limits, throttle, err := cfg.HTTP.limits()
	if err != nil {
		return nil, err
	}
	blobs, err := openRepoBlobs(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	tufKeys, loaded, err := keys.loadKeys(ctx, rec.tufRefs(cfg.TUFKeys))
	if err != nil {
		return nil, recordError(ks, err)
	}
	keys.loaded = loaded
	repo, err := openRepo(ctx, dir, cfg, st, blobs, tufKeys)
	if err != nil {
		return nil, recordError(ks, err)
	}
	keys.repo = repo
	if ks.Version > 0 {
		log.Info("online keys from the key record override config.json's", "version", ks.Version, "updated_by", ks.UpdatedBy, "tuf_keys", keys.describeLocked())
	}
	tl, err := openLog(ctx, dir, cfg.LogKey, st, passphrase)
	if err != nil {
		return nil, err
	}
	rolloutTick, err := cfg.Rollouts.tick()
	if err != nil {
		return nil, err
	}
	if ov.MQTTBroker != "" {
		cfg.MQTT.Broker = ov.MQTTBroker
	}
	nudger, err := openNudger(dir, cfg.MQTT, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && nudger != nil {
			nudger.Close()
		}
	}()
	rcfg := rollout.Config{Store: st, Publisher: repo, Log: log}
	if nudger != nil { // a nil *Publisher in the interface would not be nil
		rcfg.Nudger = nudger
	}
	rollouts, err := rollout.New(rcfg)
	if err != nil {
		return nil, err
	}
	var warnings []string
	if w := OfflineKeyWarning(dir, cfg); w != "" {
		warnings = append(warnings, w)
	}
	bundles, err := cfg.TUFLifetimes.bundles()
	if err != nil {
		return nil, err
	}
	scfg := server.Config{
		Store: st, Issuer: authority, Repo: repo, Blobs: blobs, Log: tl, Logger: log, RenewGrace: grace, Rollouts: rollouts,
		Distribution: distribution(cfg.Distribution, blobs), Limits: limits, Throttle: throttle, Warnings: warnings, Keys: keys,
		Bundles: bundles, ServerURL: cfg.ServerURL,
	}
	if nudger != nil { // a nil *Publisher in the interface would not be nil
		scfg.Nudger = nudger
	}
	api, err := server.New(scfg)
	if err != nil {
		return nil, err
	}
	sc, err := loadServerCert(p.ServerCert, p.ServerKey)
	if err != nil {
		return nil, err
	}
	if err := recordAdminCert(ctx, p, authority, st, log); err != nil {
		return nil, err
	}
	syncEvery, err := syncInterval()
	if err != nil {
		return nil, err
	}
	keys.interval = syncEvery
	return &Instance{
		Dir: dir, Config: *cfg, Store: st, CA: authority, Repo: repo, Log: tl, API: api, Rollouts: rollouts, RolloutTick: rolloutTick,
		TLS: server.TLSConfig(sc.get, authority.RootPool()), SyncInterval: syncEvery, serverCert: sc, log: log,
		Nudger: nudger, Warnings: warnings, keys: keys,
	}, nil
}

// Close stops the CA's CRL generator and releases the store.
func (in *Instance) Close() error {
	if in.Nudger != nil {
		in.Nudger.Close()
	}
	in.CA.Close()
	return in.Store.Close()
}

// RefreshInterval is how often fosterd re-signs snapshot and timestamp
// metadata that would expire within RefreshMargin, with the default
// timestamp lifetime; shorter lifetimes shorten both (refreshSchedule).
const (
	RefreshInterval = time.Hour
	RefreshMargin   = 6 * time.Hour
)

// DefaultSyncInterval is how often replicas sharing a PostgreSQL store look
// for each other's TUF publishes (one point read of the publish record; the
// repository is reloaded from the bucket only when it changed): a replica
// serves another's new timestamp at most about this long after it.
const DefaultSyncInterval = 5 * time.Second

// syncInterval is DefaultSyncInterval, or FOSTER_TEST_SYNC_INTERVAL so that
// tests of several replicas need not wait 5 s for each other.
func syncInterval() (time.Duration, error) {
	v := env.TestSyncInterval.Get()
	if v == "" {
		return DefaultSyncInterval, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive duration", env.TestSyncInterval.Name(), v)
	}
	return d, nil
}

// Serve serves HTTPS on ln until ctx is done, then shuts down gracefully.
// The server and its background loops (metadata and CRL refresh, server
// certificate renewal, following other replicas, rollouts) run in one errgroup: Serve
// returns only after every one of them has stopped, so the caller may close
// the store and the CA as soon as it returns. A server that fails stops the
// loops; the first error is returned.
func (in *Instance) Serve(ctx context.Context, ln net.Listener) error {
	// Timeouts, HTTP/2 stream and connection caps: server.Limits.
	srv := in.API.HTTPServer(in.TLS, slog.NewLogLogger(in.log.Handler(), slog.LevelDebug))
	ln = in.API.LimitListener(ln)
	stopMetrics, err := in.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	in.keys.interval = in.SyncInterval
	if in.keys.interval <= 0 {
		in.keys.interval = DefaultSyncInterval
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { in.refreshLoop(gctx); return nil })
	g.Go(func() error { in.serverCertLoop(gctx); return nil })
	g.Go(func() error { return in.runRollouts(gctx) })
	g.Go(func() error { in.keys.loop(gctx); return nil })
	g.Go(func() error {
		in.Repo.Follow(gctx, in.SyncInterval, func(err error) {
			in.log.Error("checking for TUF metadata published by another fosterd", "err", err)
		})
		return nil
	})
	g.Go(func() error {
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutting down: %w", err)
		}
		return nil
	})
	return g.Wait()
}

func (in *Instance) refreshLoop(ctx context.Context) {
	var o tufrepo.Options
	if err := in.Config.TUFLifetimes.apply(&o); err != nil {
		o.TimestampExpiry = DefaultTimestampLifetime // validated in Open
	}
	interval, margin := refreshSchedule(o.TimestampExpiry)
	refreshTUF := func() {
		if err := in.Repo.Refresh(ctx, margin); err != nil && ctx.Err() == nil {
			in.log.Error("refreshing TUF timestamp/snapshot", "err", err)
		}
	}
	// A fresh CRL every RefreshInterval, far within its validity (default
	// 24h); revocations also regenerate it at once.
	refreshCRL := func() {
		if err := in.CA.RefreshCRL(ctx); err != nil && ctx.Err() == nil {
			in.log.Error("refreshing the CRL", "err", err)
		}
	}
	refreshTUF()
	refreshCRL()
	tuf := time.NewTicker(interval)
	defer tuf.Stop()
	crl := time.NewTicker(RefreshInterval)
	defer crl.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tuf.C:
			refreshTUF()
		case <-crl.C:
			refreshCRL()
		}
	}
}
