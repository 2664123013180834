package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are fosterd's Prometheus series, on a registry per Server so tests
// and several servers in one process do not collide.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// Limits and throttling (limits.go, throttle.go).
	connsOpen    prometheus.Gauge
	connWaits    prometheus.Counter
	bodyTimeouts prometheus.Counter
	throttled    *prometheus.CounterVec
	throttleAddr prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "foster_http_requests_total", Help: "HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "foster_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"route"}),
	}
	m.connsOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "foster_http_connections_open", Help: "Open connections to the API listener.",
	})
	m.connWaits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "foster_http_connection_limit_waits_total", Help: "Connections that waited because max_connections were open.",
	})
	m.bodyTimeouts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "foster_http_body_timeouts_total", Help: "Requests whose body was cut by the read timeout (slow clients).",
	})
	m.throttled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "foster_http_throttled_total", Help: "Requests refused with 429 after too many failed attempts from their address, by route.",
	}, []string{"route"})
	m.throttleAddr = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "foster_throttle_addresses", Help: "Client addresses with recent failed attempts (the throttle's table).",
	})
	m.reg.MustRegister(m.connsOpen, m.connWaits, m.bodyTimeouts, m.throttled, m.throttleAddr)
	m.reg.MustRegister(m.requests, m.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// instrument records every request under its route pattern (never the raw
// path, which would let callers create unbounded label values).
func (m *metrics) instrument(next http.Handler, mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, route := mux.Handler(r)
		if route == "" || route == "/" {
			route = "unmatched"
		}
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		next.ServeHTTP(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// MetricsHandler serves the Prometheus metrics without authentication, for
// a separate listener (fosterd --metrics-listen, loopback by intent).
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.handler())
	return mux
}
