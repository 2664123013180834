package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/foster-ota/foster/ota/console"
	"github.com/foster-ota/foster/pkg/identity"
)

// cmdConsole is `foster [connection] console [--listen ADDR]`: the fleet
// console on this machine, talking to fosterd with the caller's own
// credential (docs/CONSOLE.md). It runs until interrupted.
func cmdConsole(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("console", "[connection] console [--listen 127.0.0.1:8080] [--stale-days 30]", stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve the console on; keep it on loopback: whoever reaches it acts with your credential")
	stale := fs.Int("stale-days", 30, "days of silence after which a device is an orphan candidate")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(fs, "unexpected argument %q", pos[0])
	}
	if *stale < 1 || *stale > 36500 {
		return usageError(fs, "--stale-days must be between 1 and 36500")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	p, err := cl.principal()
	if err != nil {
		return err
	}
	if p.Role != identity.RoleAdmin && p.Role != identity.RoleAuditor {
		return fmt.Errorf("the console needs an admin or auditor credential; %s is a %s", p.URI(), p.Role)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	if !addr.IP.IsLoopback() {
		fmt.Fprintf(stderr, "foster console: WARNING: %s is not a loopback address: anyone who reaches it acts with your credential\n", ln.Addr())
	}
	con, err := console.New(console.Config{
		Server: cl.base, Client: cl.http, Role: p.Role, Who: p.URI(), Addr: ln.Addr().String(), StaleDays: *stale,
		Log: slog.New(slog.NewTextHandler(stderr, nil)),
	})
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: con.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	fmt.Fprintf(stdout, "Foster console for %s (%s): open http://%s/ (Ctrl-C to stop)\n", p.URI(), p.Role, ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// principal is the identity of the client certificate in use.
func (c *client) principal() (identity.Principal, error) {
	tr, ok := c.http.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil || len(tr.TLSClientConfig.Certificates) == 0 || len(tr.TLSClientConfig.Certificates[0].Certificate) == 0 {
		return identity.Principal{}, errors.New("no client certificate configured")
	}
	pair := tr.TLSClientConfig.Certificates[0]
	leaf := pair.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return identity.Principal{}, fmt.Errorf("parsing the client certificate: %w", err)
		}
	}
	return identity.FromCertificate(leaf)
}
