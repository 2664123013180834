// Package console is Foster's fleet console: a server-rendered web UI that
// `foster console` serves on the operator's or auditor's own machine, like
// `kubectl proxy`. It talks to fosterd with the caller's own mTLS
// credential; the browser never sees a key, a certificate or a password,
// and fosterd learns nothing new: it sees the same client certificate the
// CLI presents, and its API decides what that certificate may do.
//
// Threat model. The console listens on loopback by default, so only
// processes on this machine reach it, but a web page the operator visits
// can still make the browser send requests to it:
//   - DNS rebinding: evil.example resolves to 127.0.0.1 and reads the
//     console's pages as same-origin. Every request whose Host header is not
//     one of the console's own names (the listen address, localhost,
//     127.0.0.1, [::1] with its port) is refused before anything else runs.
//   - CSRF: a foreign page submits a form to a console action. Every
//     request with a foreign Origin is refused (and state-changing ones go
//     through net/http's CrossOriginProtection, which also reads
//     Sec-Fetch-Site), and every POST must carry a token bound to the
//     browser's session cookie by an HMAC under a key that lives only in
//     this process: a cookie planted by another local port cannot forge it.
//   - Clickjacking: X-Frame-Options DENY and CSP frame-ancestors 'none'.
//
// The credential's role decides what is shown: an auditor gets no action
// buttons. The console does not enforce roles itself; fosterd refuses an
// auditor's actions whatever the console sends. A Console is safe for
// concurrent use.
package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures a Console.
type Config struct {
	// Server is fosterd's base URL (https://host:port).
	Server *url.URL
	// Client talks to fosterd with the caller's credential (mTLS).
	Client *http.Client
	// Role is the credential's role: admin sees actions, auditor does not.
	Role identity.Role
	// Who names the credential in the page header (its principal URN).
	Who string
	// Addr is the address the console listens on (host:port, after
	// binding): with localhost, 127.0.0.1 and [::1] on its port, the only
	// Host headers accepted.
	Addr string
	// StaleDays is the silence after which a device is an orphan
	// candidate (default 30).
	StaleDays int
	// Timeout bounds each call to fosterd (default 30 s).
	Timeout time.Duration
	Log     *slog.Logger
}

// Console serves the UI. Safe for concurrent use.
type Console struct {
	cfg   Config
	api   *api
	pages *pages
	key   []byte // HMAC key for CSRF tokens; never leaves the process
	hosts map[string]bool
	mon   monitor
	log   *slog.Logger
}

// New checks cfg and returns a Console.
func New(cfg Config) (*Console, error) {
	if cfg.Server == nil || cfg.Server.Host == "" {
		return nil, errors.New("console: a fosterd server URL is required")
	}
	if cfg.Client == nil {
		return nil, errors.New("console: an HTTP client with the caller's credential is required")
	}
	if cfg.Role != identity.RoleAdmin && cfg.Role != identity.RoleAuditor {
		return nil, fmt.Errorf("console: needs an admin or auditor credential, not %q", cfg.Role)
	}
	hosts, err := ownHosts(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.StaleDays <= 0 {
		cfg.StaleDays = 30
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	p, err := parsePages()
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, api: &api{base: cfg.Server, http: cfg.Client, timeout: cfg.Timeout}, pages: p, key: key, hosts: hosts, log: cfg.Log}, nil
}

// ownHosts are the Host header values the console answers to.
func ownHosts(addr string) (map[string]bool, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return nil, fmt.Errorf("console: listen address %q: want host:port after binding", addr)
	}
	hosts := map[string]bool{}
	for _, h := range []string{host, "localhost", "127.0.0.1", "::1"} {
		if h == "" || h == "0.0.0.0" || h == "::" {
			continue
		}
		hosts[strings.ToLower(net.JoinHostPort(h, port))] = true
	}
	return hosts, nil
}

// Handler returns the console's routes behind the Host, Origin and CSRF
// checks.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", c.page(c.fleet))
	mux.HandleFunc("GET /fleet/{list}", c.page(c.fleetListPage))
	mux.HandleFunc("GET /rollouts", c.page(c.rollouts))
	mux.HandleFunc("GET /rollouts/{id}", c.page(c.rolloutPage))
	mux.HandleFunc("GET /rollouts/{id}/confirm/{action}", c.page(c.rolloutConfirm))
	mux.HandleFunc("POST /rollouts/{id}/{action}", c.page(c.rolloutAct))
	mux.HandleFunc("GET /devices", c.page(c.devices))
	mux.HandleFunc("GET /devices/{id}", c.page(c.device))
	mux.HandleFunc("GET /devices/{id}/confirm/{action}", c.page(c.deviceConfirm))
	mux.HandleFunc("POST /devices/{id}/revoke", c.page(c.deviceRevoke))
	mux.HandleFunc("POST /devices/{id}/reprovision", c.page(c.deviceReprovision))
	mux.HandleFunc("GET /devices/{id}/bundle/{seq}", c.bundle)
	mux.HandleFunc("GET /releases", c.page(c.releases))
	mux.HandleFunc("GET /stations", c.page(c.stations))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.renderError(w, r, http.StatusNotFound, "no such page: "+r.URL.Path)
	})
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse(w, "CSRF: cross-origin request refused")
	}))
	return c.guard(cop.Handler(mux))
}

// guard refuses DNS rebinding (foreign Host), cross-origin requests
// (foreign Origin) and POSTs without the session's CSRF token, and sets
// the security headers on every answer.
func (c *Console) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: under no-referrer browsers send
		// "Origin: null" with the console's own forms, which the Origin
		// check must refuse.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		if !c.hosts[strings.ToLower(r.Host)] {
			c.log.Warn("console: refused a request for a foreign host (DNS rebinding?)", "host", r.Host)
			refuse(w, "DNS rebinding: host "+r.Host+" is not this console")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
			c.log.Warn("console: refused a cross-origin request (CSRF?)", "origin", o)
			refuse(w, "CSRF: cross-origin request from "+o+" refused")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			if !c.validToken(r) {
				refuse(w, "CSRF: missing or wrong form token; reload the page and try again")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func refuse(w http.ResponseWriter, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintln(w, msg)
}

const sessionCookie = "foster_console_session"

// session returns the browser's session id, setting a new one if absent.
func (c *Console) session(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(sessionCookie); err == nil && len(ck.Value) == 64 {
		if _, err := hex.DecodeString(ck.Value); err == nil {
			return ck.Value
		}
	}
	b := make([]byte, 32)
	rand.Read(b)
	id := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return id
}

// token is the CSRF token of a session.
func (c *Console) token(session string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(session))
	return hex.EncodeToString(m.Sum(nil))
}

func (c *Console) validToken(r *http.Request) bool {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	got := r.PostFormValue("csrf")
	want := c.token(ck.Value)
	return len(got) == len(want) && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
