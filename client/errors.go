package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// IsTransient reports whether retrying soon may help: network trouble,
// server overload or 5xx, a stalled, slow or cut-off download (resumed). Verification
// failures (bad signatures, hash or length mismatches of complete bodies,
// certificate errors) and local problems are not transient: retrying them
// hammers the server and the answer will not change until someone acts.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		tlsVerify        *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &tlsVerify) {
		return false
	}
	if errors.Is(err, fetch.ErrStalled) || errors.Is(err, fetch.ErrTruncated) || errors.Is(err, fetch.ErrSlowRetrieval) ||
		errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var dl *metadata.ErrDownloadHTTP
	if errors.As(err, &dl) {
		return retryableStatus(dl.StatusCode)
	}
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return retryableStatus(ae.Status)
	}
	var ne net.Error
	return errors.As(err, &ne)
}

func retryableStatus(code int) bool {
	return code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
}
