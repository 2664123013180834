package client

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// offsiteTransport sends requests that a redirect took to another host (a
// presigned S3 URL: fosterd's distribution.target_redirect) through away, a
// transport with the system roots and no client certificate, so the
// device's certificate is never offered to the bucket and the bucket's
// public-CA certificate is accepted. Everything for fosterd's own host goes
// through home (mTLS, Foster roots). What arrives is still checked against
// the TUF-signed length and hashes.
type offsiteTransport struct {
	home, away http.RoundTripper
}

func (t offsiteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	if first != req && req.URL.Host != first.URL.Host {
		return t.away.RoundTrip(req)
	}
	return t.home.RoundTrip(req)
}

// CloseIdleConnections closes both transports' idle connections:
// http.Client.CloseIdleConnections reaches them only through it (renewal,
// whose new certificate must not ride on a connection that presented the
// old one, and Agent.Close).
func (t offsiteTransport) CloseIdleConnections() {
	for _, rt := range []http.RoundTripper{t.home, t.away} {
		if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// awayTransport is the transport for redirect targets: system roots,
// certificate validity judged at the agent's reference time (a device whose
// clock died still has signed evidence of the date), HTTP/1.1, no client
// certificate.
func awayTransport(now func() time.Time) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, Time: now, NextProtos: []string{"http/1.1"}},
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          2,
	}
}
