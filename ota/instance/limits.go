package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/foster-ota/foster/ota/server"
)

// HTTPConfig is config.json "http": connection and request limits, the
// throttling of failed unauthenticated attempts, and the metrics listener
// (docs/CONTRACTS.md). Durations are Go durations ("20s"); zero values mean
// the defaults of server.Limits and server.Throttle.
type HTTPConfig struct {
	// ReadTimeout bounds reading a request, body included (default 20s).
	ReadTimeout string `json:"read_timeout,omitempty"`
	// WriteTimeout bounds a request from its headers to the end of its
	// response (default 60s).
	WriteTimeout string `json:"write_timeout,omitempty"`
	// IdleTimeout closes idle keep-alive connections (default 120s).
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// TransferWindow: uploads and downloads outlast the timeouts while
	// they move 64 KiB per window (default 60s).
	TransferWindow string `json:"transfer_window,omitempty"`
	// MaxConnections caps open connections (default 1024).
	MaxConnections int `json:"max_connections,omitempty"`
	// MaxStreams caps concurrent requests per HTTP/2 connection (default 100).
	MaxStreams int `json:"max_streams,omitempty"`
	// ThrottleBurst is how many failed unauthenticated attempts an address
	// may make in a row (default 20); ThrottleEvery how often it earns one
	// more (default 1s); ThrottleMaxAddresses bounds the table (default 65536).
	ThrottleBurst        int    `json:"throttle_burst,omitempty"`
	ThrottleEvery        string `json:"throttle_every,omitempty"`
	ThrottleMaxAddresses int    `json:"throttle_max_addresses,omitempty"`
	// MetricsListen, if set, serves GET /metrics without authentication
	// over plain HTTP on this address (keep it on loopback or a private
	// network). The API listener's /metrics needs an admin or auditor
	// certificate either way.
	MetricsListen string `json:"metrics_listen,omitempty"`
}

// applyOverrides applies the fosterd flags that tune the HTTP limits.
func (h *HTTPConfig) applyOverrides(ov Overrides) {
	if ov.ReadTimeout > 0 {
		h.ReadTimeout = ov.ReadTimeout.String()
	}
	if ov.MaxConnections > 0 {
		h.MaxConnections = ov.MaxConnections
	}
	if ov.MetricsListen != "" {
		h.MetricsListen = ov.MetricsListen
	}
}

// limits parses h into the server's settings.
func (h HTTPConfig) limits() (server.Limits, server.Throttle, error) {
	var l server.Limits
	var t server.Throttle
	for _, d := range []struct {
		name, v string
		to      *time.Duration
	}{
		{"read_timeout", h.ReadTimeout, &l.ReadTimeout},
		{"write_timeout", h.WriteTimeout, &l.WriteTimeout},
		{"idle_timeout", h.IdleTimeout, &l.IdleTimeout},
		{"transfer_window", h.TransferWindow, &l.TransferWindow},
		{"throttle_every", h.ThrottleEvery, &t.Every},
	} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil || v <= 0 {
			return l, t, fmt.Errorf("config http.%s %q: want a positive duration like 20s", d.name, d.v)
		}
		*d.to = v
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"max_connections", h.MaxConnections}, {"max_streams", h.MaxStreams},
		{"throttle_burst", h.ThrottleBurst}, {"throttle_max_addresses", h.ThrottleMaxAddresses},
	} {
		if n.v < 0 {
			return l, t, fmt.Errorf("config http.%s %d: want a positive number", n.name, n.v)
		}
	}
	l.MaxConnections, l.MaxStreams = h.MaxConnections, h.MaxStreams
	t.Burst, t.MaxAddresses = h.ThrottleBurst, h.ThrottleMaxAddresses
	return l, t, nil
}

// serveMetrics starts the unauthenticated metrics listener when
// http.metrics_listen is set; stop shuts it down.
func (in *Instance) serveMetrics() (stop func(), err error) {
	addr := in.Config.HTTP.MetricsListen
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err != nil || !ap.Addr().IsLoopback() {
		in.log.Warn("metrics are served without authentication on a non-loopback address", "addr", ln.Addr().String())
	}
	srv := &http.Server{
		Handler:           in.API.MetricsHandler(),
		ReadHeaderTimeout: server.DefaultReadHeaderTimeout,
		ReadTimeout:       server.DefaultReadTimeout,
		WriteTimeout:      server.DefaultWriteTimeout,
		IdleTimeout:       server.DefaultIdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(in.log.Handler(), slog.LevelDebug),
	}
	// Connections beyond a few are not needed by any scraper.
	lim := server.NewConnLimit(ln, 16)
	go func() {
		if err := srv.Serve(lim); err != nil && !errors.Is(err, http.ErrServerClosed) {
			in.log.Error("metrics listener stopped", "err", err)
		}
	}()
	in.log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}
