package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// systemd integration (deploy/systemd/fosterd.service, Type=notify): once
// the store is migrated, the keys are loaded and the listener is bound,
// fosterd sends READY=1; with WatchdogSec set it sends WATCHDOG=1 at half
// the interval, but only after a GET /healthz through its own listener, TLS
// handshake included, answered 200: a fosterd whose accept loop or handlers
// hang is restarted by systemd. It checks liveness, not the store or the
// blob store (/readyz): an outage of PostgreSQL must not make systemd
// restart every replica in a loop. Outside systemd (no NOTIFY_SOCKET) all of
// this does nothing.

// notifyReady tells systemd that fosterd serves.
func notifyReady(log *slog.Logger) {
	sent, err := daemon.SdNotify(false, daemon.SdNotifyReady)
	if err != nil {
		log.Warn("sd_notify READY=1", "err", err)
	} else if sent {
		log.Debug("sd_notify READY=1 sent")
	}
}

// runWatchdog pings systemd's watchdog while addr answers /healthz over TLS
// verified against roots; it returns when ctx is done or no watchdog is set.
func runWatchdog(ctx context.Context, addr net.Addr, roots *x509.CertPool, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings", "err", err)
		return
	}
	if interval <= 0 {
		return
	}
	url := "https://" + dialable(addr) + "/healthz"
	client := &http.Client{
		Timeout:   interval / 2,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true},
	}
	log.Info("systemd watchdog enabled", "interval", interval.String(), "check", url)
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		if err := selfCheck(ctx, client, url); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Error("watchdog self-check failed: not pinging systemd", "err", err)
		} else if _, err := daemon.SdNotify(false, daemon.SdNotifyWatchdog); err != nil {
			log.Warn("sd_notify WATCHDOG=1", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func selfCheck(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// dialable turns a listener address into one this host can dial: an
// unspecified address (0.0.0.0, ::) becomes loopback, which the server
// certificate always names.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
