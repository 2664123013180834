package server

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/foster-ota/foster/pkg/apierr"
)

// Throttling of failed attempts on the routes that need no certificate
// (enrollment, renewal after expiry, the CRL, the public log routes).
//
// Only failures count: a 4xx answer (other than 429 itself) costs the
// client's address one token of a bucket of Burst tokens that refills one
// token every Every. An address with no token left gets 429 throttled with
// Retry-After until it has one again, on every throttled route; successful
// requests never touch the table, so honest clients pay one map lookup.
// Failures of requests that were in flight together are all charged (the
// bucket goes into debt), so parallel guessing earns no extra attempts.
//
// The address is the TCP peer (RemoteAddr), never X-Forwarded-For: TLS
// and client certificates terminate at fosterd, so anything in front of it
// is a TCP proxy that forwards no headers, and a header would be the
// client's own claim. IPv6 addresses count per /64, the block one
// subscriber is given. The table holds at most MaxAddresses entries:
// entries whose bucket is full again are dropped (they hold nothing a fresh
// entry would not), and when it is still full, arbitrary entries are.

// Throttle tunes the throttling of failed unauthenticated attempts. Zero
// values mean the defaults.
type Throttle struct {
	// Burst is how many failed attempts an address may make in a row. Default 20.
	Burst int
	// Every is how often an address earns one more failed attempt. Default 1s.
	Every time.Duration
	// MaxAddresses bounds the table (about 200 bytes an entry). Default 65536.
	MaxAddresses int
}

// Throttle defaults.
const (
	DefaultThrottleBurst        = 20
	DefaultThrottleEvery        = time.Second
	DefaultThrottleMaxAddresses = 1 << 16
	throttleSweepEvery          = time.Minute
)

// throttleBurstDefault is DefaultThrottleBurst. This package's tests raise
// it (export_test.go), so that their tables of refused requests from one
// address are not throttled; the throttle's own tests set Burst.
var throttleBurstDefault = DefaultThrottleBurst

func (t Throttle) withDefaults() (Throttle, error) {
	if t.Burst < 0 || t.Every < 0 || t.MaxAddresses < 0 {
		return t, errors.New("server: negative Throttle setting")
	}
	if t.Burst == 0 {
		t.Burst = throttleBurstDefault
	}
	if t.Every == 0 {
		t.Every = DefaultThrottleEvery
	}
	if t.MaxAddresses == 0 {
		t.MaxAddresses = DefaultThrottleMaxAddresses
	}
	return t, nil
}

// throttle is the per-address table. Safe for concurrent use.
type throttle struct {
	cfg       Throttle
	now       func() time.Time
	metrics   *metrics
	log       *slog.Logger
	mu        sync.Mutex
	addrs     map[string]*throttleEntry
	lastSweep time.Time
}

type throttleEntry struct {
	lim      *rate.Limiter
	refusing bool // logged as throttled since its last admitted request
}

func newThrottle(cfg Throttle, m *metrics, log *slog.Logger) *throttle {
	return &throttle{cfg: cfg, now: time.Now, metrics: m, log: log, addrs: map[string]*throttleEntry{}}
}

// wrap throttles failed attempts at route.
func (t *throttle) wrap(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := clientKey(r.RemoteAddr)
		if wait, ok := t.admit(key); !ok {
			secs := int(math.Ceil(wait.Seconds()))
			if secs < 1 {
				secs = 1
			}
			t.metrics.throttled.WithLabelValues(route).Inc()
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			apierr.Write(w, apierr.New(http.StatusTooManyRequests, apierr.CodeThrottled,
				"too many failed attempts from %s: retry in %d s", key, secs))
			return
		}
		cw := &codeWriter{ResponseWriter: w}
		next.ServeHTTP(cw, r)
		if cw.code >= 400 && cw.code < 500 && cw.code != http.StatusTooManyRequests {
			t.fail(key)
		}
	})
}

// admit reports whether key may make an attempt, or how long it must wait.
func (t *throttle) admit(key string) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.addrs[key]
	if e == nil {
		return 0, true
	}
	now := t.now()
	tokens := e.lim.TokensAt(now)
	if tokens >= 1 {
		e.refusing = false
		return 0, true
	}
	if !e.refusing {
		e.refusing = true
		t.log.Warn("throttling failed attempts", "client", key, "burst", t.cfg.Burst, "every", t.cfg.Every)
	}
	return time.Duration((1 - tokens) * float64(t.cfg.Every)), false
}

// fail charges key one failed attempt.
func (t *throttle) fail(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if now.Sub(t.lastSweep) >= throttleSweepEvery {
		t.sweep(now, false)
	}
	e := t.addrs[key]
	if e == nil {
		if len(t.addrs) >= t.cfg.MaxAddresses {
			t.sweep(now, true)
		}
		e = &throttleEntry{lim: rate.NewLimiter(rate.Every(t.cfg.Every), t.cfg.Burst)}
		t.addrs[key] = e
	}
	// Always granted (1 <= burst, no wait limit): the bucket goes into debt.
	e.lim.ReserveN(now, 1)
	t.metrics.throttleAddr.Set(float64(len(t.addrs)))
}

// sweep drops entries whose bucket is full again; with force, also
// arbitrary others until the table is below 7/8 of its bound.
func (t *throttle) sweep(now time.Time, force bool) {
	t.lastSweep = now
	for k, e := range t.addrs {
		if e.lim.TokensAt(now) >= float64(t.cfg.Burst) {
			delete(t.addrs, k)
		}
	}
	if !force {
		return
	}
	for k := range t.addrs {
		if len(t.addrs) < t.cfg.MaxAddresses-t.cfg.MaxAddresses/8 {
			break
		}
		delete(t.addrs, k)
	}
}

func (t *throttle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.addrs)
}

// clientKey is the throttle's key for a RemoteAddr: the IPv4 address, or
// the IPv6 /64.
func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}

// codeWriter remembers the response status.
type codeWriter struct {
	http.ResponseWriter
	code int
}

func (w *codeWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *codeWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *codeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
