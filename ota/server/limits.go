package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Connection and request limits: what one client can hold of fosterd.
//
// Every request must arrive (TLS handshake, headers and body) within
// ReadTimeout and be answered within WriteTimeout, so a client trickling a
// body to /v1/enroll is cut and its connection closed. Routes that move
// large bodies (release uploads, target and metadata downloads, ceremony
// publishes, log entries) outlast those timeouts only while data flows: each
// TransferChunk bytes moved, in either direction, give the request
// TransferWindow more, so they need about 1 KiB/s (the agent's own default
// minimum download rate), never a fixed total. At most MaxConnections
// connections are open at once (more wait in the listen backlog), and an
// HTTP/2 connection carries at most MaxStreams requests at once.

// Limits bounds connections and request durations. Zero values mean the
// defaults.
type Limits struct {
	// ReadHeaderTimeout bounds the TLS handshake and request headers. Default 10s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included. Default 20s.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its response. Default 60s.
	WriteTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long. Default 120s.
	IdleTimeout time.Duration
	// TransferWindow is how long a streaming route may go without moving
	// TransferChunk bytes. Default 60s.
	TransferWindow time.Duration
	// MaxConnections caps concurrently open connections. Default 1024.
	MaxConnections int
	// MaxStreams caps concurrent requests per HTTP/2 connection. Default 100.
	MaxStreams int
}

// TransferChunk is how many bytes a streaming route must move to earn
// another TransferWindow.
const TransferChunk = 64 << 10

// Limit defaults (Limits).
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 20 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultTransferWindow    = 60 * time.Second
	DefaultMaxConnections    = 1024
	DefaultMaxStreams        = 100
	maxHeaderBytes           = 64 << 10
)

func (l Limits) withDefaults() (Limits, error) {
	durations := []struct {
		v    *time.Duration
		name string
		def  time.Duration
	}{
		{&l.ReadHeaderTimeout, "ReadHeaderTimeout", DefaultReadHeaderTimeout},
		{&l.ReadTimeout, "ReadTimeout", DefaultReadTimeout},
		{&l.WriteTimeout, "WriteTimeout", DefaultWriteTimeout},
		{&l.IdleTimeout, "IdleTimeout", DefaultIdleTimeout},
		{&l.TransferWindow, "TransferWindow", DefaultTransferWindow},
	}
	for _, d := range durations {
		switch {
		case *d.v < 0:
			return l, fmt.Errorf("server: negative %s", d.name)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if l.MaxConnections < 0 || l.MaxStreams < 0 {
		return l, errors.New("server: negative MaxConnections or MaxStreams")
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	return l, nil
}

// HTTPServer returns the http.Server that serves the API with s's limits.
// Serve it on LimitListener(ln).
func (s *Server) HTTPServer(tlsConfig *tls.Config, errorLog *log.Logger) *http.Server {
	l := s.limits
	return &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadTimeout,
		WriteTimeout:      l.WriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: l.MaxStreams},
		ErrorLog:          errorLog,
	}
}

// LimitListener returns ln holding at most Limits.MaxConnections accepted
// connections open: beyond that, Accept waits for one to close (clients
// wait in the kernel's listen backlog). Waits are counted in
// foster_http_connection_limit_waits_total and logged at most once a minute.
func (s *Server) LimitListener(ln net.Listener) net.Listener {
	l := NewConnLimit(ln, s.limits.MaxConnections)
	var lastWarn atomic.Int64 // unix seconds
	l.onWait = func() {
		s.metrics.connWaits.Inc()
		if now := time.Now().Unix(); now-lastWarn.Load() >= 60 {
			lastWarn.Store(now)
			s.log.Warn("connection limit reached: new connections wait until one closes", "max_connections", s.limits.MaxConnections)
		}
	}
	l.onOpen = func(delta float64) { s.metrics.connsOpen.Add(delta) }
	return l
}

// NewConnLimit returns ln holding at most n accepted connections open.
func NewConnLimit(ln net.Listener, n int) *ConnLimit {
	return &ConnLimit{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{}), onWait: func() {}, onOpen: func(float64) {}}
}

// ConnLimit is a listener with a cap on open connections. Safe for
// concurrent use.
type ConnLimit struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	onWait    func()
	onOpen    func(delta float64)
}

// Accept waits for a free slot, then accepts.
func (l *ConnLimit) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	default:
		l.onWait()
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	l.onOpen(1)
	return &limitConn{Conn: c, l: l}, nil
}

// Close closes the listener and ends a waiting Accept.
func (l *ConnLimit) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	l        *ConnLimit
	released sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.released.Do(func() {
		c.l.onOpen(-1)
		<-c.l.sem
	})
	return err
}

// streaming lets fn's transfer outlast ReadTimeout and WriteTimeout while
// data flows: the request gets TransferWindow from the start of fn, and
// again each time TransferChunk bytes of its body were read or of its
// response written, and once more when its body is read to the end (to
// process it). It runs after authentication, so an anonymous caller of an
// authenticated route never gets the longer window.
func (e *edge) streaming(fn handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := &progress{rc: http.NewResponseController(w), window: e.transferWindow}
		p.extend()
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &progressBody{ReadCloser: r.Body, p: p}
		}
		return fn(&progressWriter{ResponseWriter: w, p: p}, r)
	}
}

type progress struct {
	rc     *http.ResponseController
	window time.Duration
	moved  atomic.Int64 // bytes since the last extension
}

func (p *progress) add(n int) {
	if n > 0 && p.moved.Add(int64(n)) >= TransferChunk {
		p.moved.Store(0)
		p.extend()
	}
}

// extend moves both deadlines: on HTTP/1 the read deadline also bounds the
// server's background read, which cancels the request when it expires.
func (p *progress) extend() {
	d := time.Now().Add(p.window)
	_ = p.rc.SetReadDeadline(d) // http.ErrNotSupported outside a real server (tests)
	_ = p.rc.SetWriteDeadline(d)
}

type progressBody struct {
	io.ReadCloser
	p *progress
}

func (b *progressBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	b.p.add(n)
	if err == io.EOF {
		b.p.extend()
	}
	return n, err
}

type progressWriter struct {
	http.ResponseWriter
	p *progress
}

// Write writes b in TransferChunk pieces, so that one large buffer (a
// metadata file from memory) also extends the deadlines as it drains.
func (w *progressWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		piece := b[:min(len(b), TransferChunk)]
		n, err := w.ResponseWriter.Write(piece)
		written += n
		w.p.add(n)
		if err != nil {
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// watchBodies counts and logs request bodies cut by ReadTimeout (or by a
// streaming route's window), the slow-body clients the limits exist for.
func (e *edge) watchBodies(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &watchedBody{ReadCloser: r.Body, e: e, r: r}
		}
		next.ServeHTTP(w, r)
	})
}

type watchedBody struct {
	io.ReadCloser
	e     *edge
	r     *http.Request
	noted bool
}

func (b *watchedBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if err != nil && !b.noted && errors.Is(err, os.ErrDeadlineExceeded) {
		b.noted = true
		b.e.metrics.bodyTimeouts.Inc()
		b.e.log.Info("request body too slow: cut by the read timeout", "method", b.r.Method, "path", b.r.URL.Path, "remote", b.r.RemoteAddr)
	}
	return n, err
}

// TLS12CipherSuites are the TLS 1.2 suites fosterd accepts: forward-secret
// (ECDHE) AEAD only, so no CBC-mode or SHA-1 MAC suite is ever negotiated.
// TLS 1.3 suites are all AEAD and not configurable.
var TLS12CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}
