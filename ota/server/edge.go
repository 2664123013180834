package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
)

// The edge is what every handler group registers its routes through: panic
// recovery, authentication and the role check (auth.go), throttling of
// unauthenticated routes (throttle.go), the transfer window of streaming
// routes (limits.go), and the one place an error becomes an HTTP answer
// (apierr.Write). Handlers return errors; an *apierr.Error carries its
// status and code, anything else is a 500 and is logged.

// handlerFunc is a route's handler: it writes the answer, or returns the error
// the edge renders.
type handlerFunc func(http.ResponseWriter, *http.Request) error

// Who may call a route.
var (
	deviceOnly  = []identity.Role{identity.RoleDevice}
	stationOnly = []identity.Role{identity.RoleStation}
	adminOnly   = []identity.Role{identity.RoleAdmin}
	readers     = []identity.Role{identity.RoleAdmin, identity.RoleAuditor} // admins and auditors
	// devicesAndReaders: TUF metadata, which auditors verify the fleet
	// report against (`foster audit report --from-log`).
	devicesAndReaders = []identity.Role{identity.RoleDevice, identity.RoleAdmin, identity.RoleAuditor}
)

// edge wraps handlers for registration. Safe for concurrent use.
type edge struct {
	auth           *authenticator
	throttle       *throttle
	metrics        *metrics
	log            *slog.Logger
	transferWindow time.Duration // Limits.TransferWindow
}

// handle wraps fn with panic recovery, authentication for roles (nil: no
// client certificate needed) and JSON error rendering.
func (e *edge) handle(roles []identity.Role, fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v) // a streamed answer was cut on purpose: net/http drops the connection
				}
				e.log.Error("panic in handler", "path", r.URL.Path, "panic", fmt.Sprint(v))
				apierr.Write(w, errors.New("panic"))
			}
		}()
		if roles != nil {
			c, err := e.auth.authenticate(r, roles)
			if err != nil {
				apierr.Write(w, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, c))
		}
		if err := fn(w, r); err != nil {
			var ae *apierr.Error
			if !errors.As(err, &ae) {
				e.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			apierr.Write(w, err)
		}
	})
}

// throttled is an unauthenticated route whose failed attempts are throttled
// per client address (throttle.go).
func (e *edge) throttled(route string, fn handlerFunc) http.Handler {
	return e.throttle.wrap(route, e.handle(nil, fn))
}

// --- request and response helpers

// maxAdminBody bounds the JSON body of an admin API request.
const maxAdminBody = 16 << 10 // bytes

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// decodeJSON reads a bounded JSON body into v, refusing unknown fields.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readBounded(w, r, limit)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "malformed JSON request: %v", err)
	}
	return nil
}

// readBounded reads a request body of at most limit bytes.
func readBounded(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "request body larger than %d bytes", limit)
	}
	if err != nil {
		return nil, badRequest("reading request body: %v", err)
	}
	return body, nil
}

func badRequest(format string, args ...any) error {
	return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, format, args...)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// pageParams reads ?after=ID&limit=N for id-ordered listings.
func pageParams(q url.Values, defaultLimit, maxLimit int) (after int64, limit int, err error) {
	limit = defaultLimit
	if v := q.Get("after"); v != "" {
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < 0 {
			return 0, 0, badRequest("after must be a non-negative id")
		}
		after = n
	}
	if v := q.Get("limit"); v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > maxLimit {
			return 0, 0, badRequest("limit must be between 1 and %d", maxLimit)
		}
		limit = n
	}
	return after, limit, nil
}

// intParam parses a required non-negative integer query parameter.
func intParam(v, name string) (int64, error) {
	if v == "" {
		return 0, badRequest("%s is required", name)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest("%s must be a non-negative integer", name)
	}
	return n, nil
}
