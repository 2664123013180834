package client

import (
	"crypto/x509"
	"fmt"
	"net/http"

	"github.com/foster-ota/foster/client/internal/statedir"
)

// withRedirectRoots makes the transport for redirect targets (redirect.go)
// trust the CA certificates in file on top of the system roots: an object
// store with a private CA (MinIO, Ceph RGW on a plant network).
func withRedirectRoots(dl *http.Client, file string) error {
	pemBytes, err := statedir.ReadBounded(file, statedir.MaxSmallFile)
	if err != nil {
		return fmt.Errorf("redirect CA bundle: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pemBytes) {
		return fmt.Errorf("redirect CA bundle %s holds no PEM certificate", file)
	}
	ot, ok := dl.Transport.(offsiteTransport)
	if !ok {
		return fmt.Errorf("download client has no redirect transport")
	}
	away, ok := ot.away.(*http.Transport)
	if !ok {
		return fmt.Errorf("download client has no redirect transport")
	}
	away.TLSClientConfig.RootCAs = roots
	return nil
}
