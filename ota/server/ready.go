package server

import (
	"context"
	"net/http"
	"sync"
	"time"
)

// readiness serves GET /readyz: whether this fosterd can serve requests
// now, for load balancers and orchestrators (Kubernetes readiness probe,
// compose health check). /healthz stays a liveness check that touches
// nothing: a fosterd whose database is down is not ready, but restarting it
// would not help.
//
// Every check runs under a short timeout, concurrently; one result is
// reused for resultTTL so a flood of unauthenticated probes costs at most
// one round of checks per second. Failure details go to the log, not to the
// anonymous caller, who learns only which check failed.
type readiness struct {
	store   storePinger
	blobs   blobProber
	keys    keysReady // nil: not checked
	timeout time.Duration
	log     logger

	mu   sync.Mutex
	at   time.Time
	last readyzResponse
	code int
}

// storePinger is the database (*store.DB).
type storePinger interface {
	Ping(ctx context.Context) error
}

// blobProber reads the blob store cheaply (tufrepo.Repo: the published
// timestamp's metadata).
type blobProber interface {
	CheckStore(ctx context.Context) error
}

// keysReady reports whether this replica uses the current online key
// record (KeyManager.Ready).
type keysReady interface {
	Ready(ctx context.Context) error
}

type logger interface {
	Warn(msg string, args ...any)
}

// readyResultTTL is how long one round of checks answers /readyz.
const readyResultTTL = time.Second

type readyzResponse struct {
	Status string            `json:"status"` // ok | unavailable
	Checks map[string]string `json:"checks"` // check -> ok | failed
}

func (rd *readiness) routes(mux *http.ServeMux, _ *edge) {
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		code, resp := rd.check(r.Context())
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, code, resp)
	})
}

func (rd *readiness) check(ctx context.Context) (int, readyzResponse) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if !rd.at.IsZero() && time.Since(rd.at) < readyResultTTL {
		return rd.code, rd.last
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rd.timeout)
	defer cancel()
	checks := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"store", rd.store.Ping},
		{"blobs", rd.blobs.CheckStore},
	}
	if rd.keys != nil {
		checks = append(checks, struct {
			name string
			fn   func(context.Context) error
		}{"keys", rd.keys.Ready})
	}
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { errs[i] = c.fn(ctx) })
	}
	wg.Wait()
	resp := readyzResponse{Status: "ok", Checks: map[string]string{}}
	code := http.StatusOK
	for i, c := range checks {
		if errs[i] != nil {
			rd.log.Warn("not ready", "check", c.name, "err", errs[i])
			resp.Checks[c.name] = "failed"
			resp.Status, code = "unavailable", http.StatusServiceUnavailable
			continue
		}
		resp.Checks[c.name] = "ok"
	}
	rd.at, rd.last, rd.code = time.Now(), resp, code
	return code, resp
}
