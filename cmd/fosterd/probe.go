package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/foster-ota/foster/ota/instance"
)

// probe asks the fosterd serving cfg.dataDir whether it is ready (GET
// /readyz over TLS, verified against the instance's CA root) and returns
// nil only on 200. It is the health check of images without a shell or
// curl (deploy/compose, the Dockerfile): `fosterd --probe`. It reads
// config.json and ca.pem and never creates or changes anything.
func probe(ctx context.Context, cfg config) error {
	dir, err := filepath.Abs(cfg.dataDir)
	if err != nil {
		return err
	}
	c, err := instance.Load(dir)
	if err != nil {
		return err
	}
	if err := c.ApplyEnv(os.LookupEnv); err != nil {
		return err
	}
	if err := c.ApplySets(cfg.sets); err != nil {
		return err
	}
	listen := c.Listen
	if cfg.listen != "" {
		listen = cfg.listen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	caPEM, err := os.ReadFile(instance.PathsOf(dir).CARoot)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no certificate", instance.PathsOf(dir).CARoot)
	}
	// The server certificate always names localhost (instance.Init).
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "https://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe: %s: %d %s", url, resp.StatusCode, body)
	}
	return nil
}
