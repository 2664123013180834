package instance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
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
}

// Instance is an opened data directory, ready to serve.
type Instance struct {
	Dir    string
	Config Config
	Store  *store.DB
	CA     *ca.CA
	Repo   *tufrepo.Repo
	Log    *tlog.Log // install-attestation transparency log
	API    *server.Server
	TLS    *tls.Config
	// SyncInterval is how often, with a PostgreSQL store, fosterd checks
	// whether another replica published the TUF repository and reloads it
	// (Repo.Follow). Default DefaultSyncInterval (FOSTER_TEST_SYNC_INTERVAL in
	// tests); set before Serve.
	SyncInterval time.Duration
	// CertCheckInterval is how often fosterd checks whether its server
	// certificate is due for renewal (servercert.go). Default
	// DefaultCertCheckInterval; set before Serve.
	CertCheckInterval time.Duration
	serverCert        *serverCert
	log               *slog.Logger
}

// Open loads dir and builds every component.
func Open(ctx context.Context, dir string, ov Overrides, passphrase []byte, log *slog.Logger) (*Instance, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := Load(dir)
	if err != nil {
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
	authority, err := ca.Open(dir, ca.Options{
		Passphrase:      passphrase,
		IntermediateKey: cfg.Identity.IntermediateKey,
		DeviceValidity:  deviceValidity,
		CRL:             &ca.CRLOptions{Store: revocations{st}, Validity: crlValidity},
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("opening CA: %w", err)
	}
	cfg.Distribution.applyOverrides(ov)
	cfg.HTTP.applyOverrides(ov)
	limits, throttle, err := cfg.HTTP.limits()
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	blobs, err := openRepoBlobs(ctx, dir, cfg)
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	repo, err := openRepo(ctx, dir, cfg, st, blobs, passphrase)
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	tl, err := openLog(ctx, dir, cfg.LogKey, st, passphrase)
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	api, err := server.New(server.Config{
		Store: st, Issuer: authority, Repo: repo, Blobs: blobs, Log: tl, Logger: log, RenewGrace: grace,
		Distribution: distribution(cfg.Distribution, blobs), Limits: limits, Throttle: throttle,
		IssuerError: func(err error) bool {
			return errors.Is(err, ca.ErrBadCSR) || errors.Is(err, ca.ErrWeakKey) || errors.Is(err, ca.ErrIdentityMismatch)
		},
	})
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	sc, err := loadServerCert(p.ServerCert, p.ServerKey)
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	if err := recordAdminCert(ctx, p, authority, st, log); err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	syncEvery, err := syncInterval()
	if err != nil {
		authority.Close()
		st.Close()
		return nil, err
	}
	return &Instance{
		Dir: dir, Config: *cfg, Store: st, CA: authority, Repo: repo, Log: tl, API: api,
		TLS: server.TLSConfig(sc.get, authority.RootPool()), SyncInterval: syncEvery, serverCert: sc, log: log,
	}, nil
}

// Close stops the CA's CRL generator and releases the store.
func (in *Instance) Close() error {
	in.CA.Close()
	return in.Store.Close()
}

// RefreshInterval is how often fosterd re-signs snapshot and timestamp
// metadata that would expire within RefreshMargin.
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
		return 0, fmt.Errorf("%s=%q: want a positive duration", env.TestSyncInterval.Name, v)
	}
	return d, nil
}

// Serve serves HTTPS on ln until ctx is done, then shuts down gracefully.
func (in *Instance) Serve(ctx context.Context, ln net.Listener) error {
	// Timeouts, HTTP/2 stream and connection caps: server.Limits.
	srv := in.API.HTTPServer(in.TLS, slog.NewLogLogger(in.log.Handler(), slog.LevelDebug))
	ln = in.API.LimitListener(ln)
	stopMetrics, err := in.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	go in.refreshLoop(ctx)
	go in.serverCertLoop(ctx)
	go in.Repo.Follow(ctx, in.SyncInterval, func(err error) {
		in.log.Error("checking for TUF metadata published by another fosterd", "err", err)
	})
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	}
}

func (in *Instance) refreshLoop(ctx context.Context) {
	refresh := func() {
		if err := in.Repo.Refresh(ctx, RefreshMargin); err != nil && ctx.Err() == nil {
			in.log.Error("refreshing TUF timestamp/snapshot", "err", err)
		}
		// A fresh CRL every interval, far within its validity (default 24h);
		// revocations also regenerate it at once.
		if err := in.CA.RefreshCRL(ctx); err != nil && ctx.Err() == nil {
			in.log.Error("refreshing the CRL", "err", err)
		}
	}
	refresh()
	t := time.NewTicker(RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			refresh()
		}
	}
}
