package instance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/env"
)

// fosterd's own TLS certificate must never lapse: every device, however long
// it was offline, meets it first. The listener reads the certificate through
// tls.Config.GetCertificate from an atomically swapped pointer, so a new one
// takes effect on the next handshake without a restart. fosterd issues
// itself a new certificate (same names, fresh key) once two thirds of the
// current one's life have passed (checked every CertCheckInterval), and
// re-reads server.crt/server.key when told to (SIGHUP: an operator replaced
// them, e.g. with a certificate from a public CA).

// DefaultCertCheckInterval is how often fosterd checks whether its server
// certificate is due for renewal.
const DefaultCertCheckInterval = time.Hour

// serverCert is the certificate the listener presents. Safe for concurrent use.
type serverCert struct {
	certPath, keyPath string
	cur               atomic.Pointer[tls.Certificate]
	mu                sync.Mutex // serialises reload and renew
}

func loadServerCert(certPath, keyPath string) (*serverCert, error) {
	sc := &serverCert{certPath: certPath, keyPath: keyPath}
	pair, err := sc.read()
	if err != nil {
		return nil, err
	}
	sc.cur.Store(pair)
	return sc, nil
}

// get is tls.Config.GetCertificate.
func (sc *serverCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return sc.cur.Load(), nil }

func (sc *serverCert) leaf() *x509.Certificate { return sc.cur.Load().Leaf }

// read reads the pair from disk, finishing an interrupted renewal first.
func (sc *serverCert) read() (*tls.Certificate, error) {
	if err := atomicfile.RecoverPair(sc.certPath, sc.keyPath); err != nil {
		return nil, fmt.Errorf("recovering server certificate: %w", err)
	}
	pair, err := tls.LoadX509KeyPair(sc.certPath, sc.keyPath)
	if err != nil {
		return nil, fmt.Errorf("loading server certificate: %w", err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parsing server certificate: %w", err)
		}
	}
	return &pair, nil
}

// ReloadServerCertificate re-reads server.crt and server.key (fosterd does
// on SIGHUP) and serves them from the next handshake on. A missing,
// mismatched or expired pair is refused and the current one kept.
func (in *Instance) ReloadServerCertificate() error {
	in.serverCert.mu.Lock()
	defer in.serverCert.mu.Unlock()
	pair, err := in.serverCert.read()
	if err != nil {
		return err
	}
	leaf := pair.Leaf
	if now := env.Now(); !now.Before(leaf.NotAfter) {
		return fmt.Errorf("server certificate %x expired at %s: keeping the current one", leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	in.serverCert.cur.Store(pair)
	in.log.Info("server certificate reloaded", "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter.UTC())
	return nil
}

// RenewServerCertificate issues fosterd a new server certificate, for the
// names of the current one, when two thirds of the current one's life have
// passed, writes it over server.crt/server.key (crash-safely) and serves it
// from the next handshake on. It reports whether it renewed.
func (in *Instance) RenewServerCertificate(ctx context.Context) (bool, error) {
	sc := in.serverCert
	sc.mu.Lock()
	defer sc.mu.Unlock()
	old := sc.leaf()
	if !ca.ServerRenewalDue(old, env.Now()) {
		return false, nil
	}
	if len(old.DNSNames) == 0 && len(old.IPAddresses) == 0 {
		return false, errors.New("the server certificate names no host: replace server.crt/server.key and send fosterd SIGHUP")
	}
	chain, key, err := in.CA.IssueServer(ctx, old.DNSNames, old.IPAddresses)
	if err != nil {
		return false, fmt.Errorf("issuing server certificate: %w", err)
	}
	if err := atomicfile.WritePair(sc.certPath, chain, sc.keyPath, key); err != nil {
		return false, err
	}
	pair, err := sc.read()
	if err != nil {
		return false, err
	}
	sc.cur.Store(pair)
	leaf := pair.Leaf
	in.log.Info("server certificate renewed", "old_serial", old.SerialNumber.Text(16), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter.UTC())
	return true, nil
}

// serverCertLoop renews the server certificate when due, checking at once
// and then every CertCheckInterval.
func (in *Instance) serverCertLoop(ctx context.Context) {
	every := in.CertCheckInterval
	if every <= 0 {
		every = DefaultCertCheckInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := in.RenewServerCertificate(ctx); err != nil && ctx.Err() == nil {
			in.log.Error("renewing the server certificate", "err", err, "not_after", in.serverCert.leaf().NotAfter.UTC())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
