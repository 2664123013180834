package console_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"html"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/console"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// The console at fleet scale: a real fosterd instance (CA, TUF repository,
// transparency log, rollout controller running its loop) whose store holds
// a fleet seeded by storetest.SeedFleet, its API served over TLS, and a
// console that talks to it with the admin credential. Page times are
// measured around the console's handler: console -> HTTPS -> API -> store.

var (
	benchDevices      = flag.Int("fleet-devices", 100_000, "devices in BenchmarkConsolePages' fleet")
	benchAttestations = flag.Int("fleet-attestations", 1_000_000, "install attestations in BenchmarkConsolePages' fleet")
	benchReseed       = flag.Bool("fleet-reseed", false, "BenchmarkConsolePages: seed the fleet again instead of reusing the cached one")
)

// seedVersion names the seeded fleet's shape: change it when the fixture
// or storetest.SeedFleet changes what they write, so cached fleets are
// seeded again.
const seedVersion = 1

var fleetModels = []string{"edge-gw", "meter", "sensor", "tracker"}

const releasesPerModel = 6

// scaleFleet is a running instance with a seeded fleet and a console on it.
type scaleFleet struct {
	in      *instance.Instance
	api     *httptest.Server
	admin   *http.Client
	console http.Handler
	host    string
	seed    fleetRecord
}

// fleetRecord is what seeding made, kept next to a cached fleet.
type fleetRecord struct {
	Fleet    *storetest.Fleet
	Rollouts map[string]string // running, paused, completed, aborted, halted -> id
	SeededAt time.Time
	Took     string
}

// openFleet opens (seeding first, unless cached is set and a seeded copy
// exists) an instance on backend "sqlite" or "postgres" with the fleet.
func openFleet(tb testing.TB, backend string, devices, attestations int, cached bool) *scaleFleet {
	tb.Helper()
	ctx := context.Background()
	dir, dsn := tb.TempDir(), ""
	reset := *benchReseed
	if cached {
		root := os.Getenv("FOSTER_BENCH_CACHE")
		if root == "" {
			c, err := os.UserCacheDir()
			if err != nil {
				tb.Fatal(err)
			}
			root = filepath.Join(c, "foster-bench")
		}
		// A fleet cached by an older schema is migrated when opened, as a
		// store is on upgrade.
		key := fmt.Sprintf("console_%s_%d_%d_v%d", backend, devices, attestations, seedVersion)
		dir = filepath.Join(root, key)
		if _, err := os.Stat(filepath.Join(dir, "fleet.json")); err != nil {
			reset = true
		}
		if backend == "postgres" {
			dsn = storetest.PostgresDatabase(tb, "foster_bench_"+strings.TrimPrefix(key, "console_"), reset)
		}
		if reset {
			if err := os.RemoveAll(dir); err != nil {
				tb.Fatal(err)
			}
		}
	} else if backend == "postgres" {
		dsn = storetest.PostgresDSN(tb)
	}
	if !cached || reset {
		t0 := time.Now()
		rec := seedFleet(tb, dir, dsn, devices, attestations)
		rec.Took = time.Since(t0).Round(time.Second).String()
		raw, err := json.Marshal(rec)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "fleet.json"), raw, 0o600); err != nil {
			tb.Fatal(err)
		}
		tb.Logf("seeded %d devices and %d attestations (%s) in %s: %s", devices, attestations, backend, rec.Took, dir)
	}
	var rec fleetRecord
	raw, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		tb.Fatal(err)
	}
	t0 := time.Now()
	f := serveFleet(tb, dir)
	tb.Logf("opened the instance (and migrated its store, if older) in %s", time.Since(t0).Round(time.Millisecond))
	f.seed = rec
	ctl, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.in.Rollouts.Run(ctl, f.in.RolloutTick) }() // as fosterd runs it
	tb.Cleanup(func() { cancel(); <-done })
	return f
}

// serveFleet opens the instance in dir, serves its API and builds a console
// with its admin credential.
func serveFleet(tb testing.TB, dir string) *scaleFleet {
	tb.Helper()
	in, err := instance.Open(context.Background(), dir, instance.Overrides{}, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { in.Close() })
	srv := httptest.NewUnstartedServer(in.API.Handler())
	srv.TLS = in.TLS
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	p := instance.PathsOf(dir)
	cert, err := tls.LoadX509KeyPair(p.AdminCert, p.AdminKey)
	if err != nil {
		tb.Fatal(err)
	}
	admin := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: in.CA.RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{cert}}}}
	tb.Cleanup(admin.CloseIdleConnections)
	u, _ := url.Parse(srv.URL)
	const addr = "127.0.0.1:8080" // the Host the requests carry; nothing listens
	c, err := console.New(console.Config{Server: u, Client: admin, Role: identity.RoleAdmin, Who: "urn:foster:admin:admin", Addr: addr, Timeout: 60 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	return &scaleFleet{in: in, api: srv, admin: admin, console: c.Handler(), host: addr}
}

// seedFleet creates an instance in dir (store dsn, "" for SQLite in dir):
// models, releases, a station and rollouts through the API, then the fleet
// through storetest.SeedFleet, its attestations appended to the instance's
// transparency log.
func seedFleet(tb testing.TB, dir, dsn string, devices, attestations int) fleetRecord {
	tb.Helper()
	ctx := context.Background()
	start := time.Now()
	if _, err := instance.Init(ctx, dir, instance.InitOptions{DB: dsn}); err != nil {
		tb.Fatal(err)
	}
	f := serveFleet(tb, dir)
	defer f.api.Close()
	defer f.in.Close()
	for _, m := range fleetModels {
		f.call(tb, "POST", "/v1/models", map[string]any{"name": m}, nil)
		for r := range releasesPerModel {
			hold := r == releasesPerModel-1 && m != "tracker"
			f.call(tb, "POST", fmt.Sprintf("/v1/releases?model=%s&version=1.%d.0&name=fw.bin&hold=%t", m, r, hold), []byte("firmware "+m+fmt.Sprint(r)), nil)
		}
	}
	f.call(tb, "POST", "/v1/stations", map[string]any{"name": "line-1", "quota": 2 * devices, "valid_for_seconds": 3 * 365 * 86400, "models": fleetModels}, nil)
	latest, previous := fmt.Sprintf("1.%d.0", releasesPerModel-1), fmt.Sprintf("1.%d.0", releasesPerModel-2)
	rec := fleetRecord{Rollouts: map[string]string{}, SeededAt: time.Now().UTC()}
	create := func(state, model, version string, extra map[string]any) string {
		req := map[string]any{"model": model, "version": version, "waves": []int{10, 50, 100}, "wave_interval": "8760h", "max_failure_rate": 1.0}
		for k, v := range extra {
			req[k] = v
		}
		var st struct{ ID string }
		f.call(tb, "POST", "/v1/rollouts", req, &st)
		rec.Rollouts[state] = st.ID
		return st.ID
	}
	id := create("completed", "edge-gw", previous, nil)
	for range 3 { // to 50 %, to 100 %, completed
		f.call(tb, "POST", "/v1/rollouts/"+id+"/promote", nil, nil)
	}
	f.call(tb, "POST", "/v1/rollouts/"+create("running", "edge-gw", latest, nil)+"/promote", nil, nil)
	f.call(tb, "POST", "/v1/rollouts/"+create("aborted", "meter", previous, nil)+"/abort", nil, nil)
	f.call(tb, "POST", "/v1/rollouts/"+create("paused", "meter", latest, nil)+"/pause", nil, nil)
	create("halted", "sensor", latest, map[string]any{"max_failure_rate": 0.01, "min_sample": 1})

	tb.Logf("seed: instance, releases and rollouts in %s", time.Since(start).Round(time.Millisecond))
	t0 := time.Now()
	fl, err := storetest.SeedFleet(ctx, f.in.Store, storetest.FleetSpec{Devices: devices, Attestations: attestations, Now: rec.SeededAt,
		Append: func(ctx context.Context, leaves [][]byte, insert func(context.Context, *sql.Tx, int64) error) error {
			_, _, err := f.in.Log.AppendWith(ctx, leaves, tlog.Prepare(insert))
			return err
		}})
	if err != nil {
		tb.Fatal(err)
	}
	rec.Fleet = fl
	tb.Logf("seed: fleet in %s", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	// The rollouts started when their releases were published (SeedFleet
	// re-dated those), their later waves two days apart.
	db := f.in.Store
	for _, id := range rec.Rollouts {
		var target string
		var wave int
		if err := db.SQL().QueryRowContext(ctx, db.Rebind(`SELECT target_path, wave FROM rollouts WHERE id = ?`), id).Scan(&target, &wave); err != nil {
			tb.Fatal(err)
		}
		var published int64
		if err := db.SQL().QueryRowContext(ctx, db.Rebind(`SELECT created_at FROM releases WHERE target_path = ?`), target).Scan(&published); err != nil {
			tb.Fatal(err)
		}
		starts := make([]int64, wave+1)
		for i := range starts {
			starts[i] = published + int64(i)*int64(48*time.Hour)
		}
		js, _ := json.Marshal(starts)
		if _, err := db.SQL().ExecContext(ctx, db.Rebind(`UPDATE rollouts SET created_at = ?, wave_starts = ? WHERE id = ?`), published, string(js), id); err != nil {
			tb.Fatal(err)
		}
	}
	if err := f.in.Rollouts.Tick(ctx); err != nil { // halts the failing one
		tb.Fatal(err)
	}
	// Statistics, as autovacuum keeps them on a store this size (and the
	// visibility map PostgreSQL's index-only scans need).
	stmt := "ANALYZE"
	if db.IsPostgres() {
		stmt = "VACUUM ANALYZE"
	}
	if _, err := db.SQL().ExecContext(ctx, stmt); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("seed: rollouts and %s in %s", stmt, time.Since(t0).Round(time.Millisecond))
	return rec
}

// call sends an admin API request (body: JSON value or raw bytes) and
// decodes a 2xx answer into out.
func (f *scaleFleet) call(tb testing.TB, method, path string, body, out any) {
	tb.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = strings.NewReader(string(b))
	default:
		raw, _ := json.Marshal(b)
		r = strings.NewReader(string(raw))
	}
	req, err := http.NewRequest(method, f.api.URL+path, r)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := f.admin.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		tb.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			tb.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// get renders a console page and returns its status and body.
func (f *scaleFleet) get(path string) (int, string) {
	req := httptest.NewRequest(http.MethodGet, "http://"+f.host+path, nil)
	rec := httptest.NewRecorder()
	f.console.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// consolePage is a page to time: path gives the i-th request's path.
type consolePage struct {
	name string
	path func(i int) string
}

// pages are every console page, as an operator walks them.
func (f *scaleFleet) pages() []consolePage {
	ids := f.seed.Fleet.IDs
	fixed := func(p string) func(int) string { return func(int) string { return p } }
	return []consolePage{
		{"fleet", fixed("/")},
		{"devices", func(i int) string {
			if i%2 == 0 {
				return "/devices"
			}
			return "/devices?after=" + url.QueryEscape(ids[(i*7919)%len(ids)])
		}},
		{"device", func(i int) string { return "/devices/" + url.PathEscape(ids[(i*104729)%len(ids)]) }},
		{"rollouts", fixed("/rollouts")},
		{"rollout", fixed("/rollouts/" + f.seed.Rollouts["running"])},
		{"releases", fixed("/releases")},
		{"stations", fixed("/stations")},
	}
}

// BenchmarkConsolePages (issue 11: every page < 300 ms at p95 with 100,000
// devices and 1,000,000 attestations, on SQLite and PostgreSQL): the server
// time of each console page, console -> HTTPS -> fosterd's API -> store,
// while the rollout controller runs its loop. The seeded fleet is cached
// (FOSTER_BENCH_CACHE, default the user cache directory, and a PostgreSQL
// database foster_bench_*) and reused by later runs; -fleet-reseed seeds it
// again.
//
//	go test -run '^$' -bench BenchmarkConsolePages -benchtime 40x -timeout 2h ./ota/console/
func BenchmarkConsolePages(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			f := openFleet(b, backend, *benchDevices, *benchAttestations, true)
			for _, p := range f.pages() {
				b.Run(p.name, func(b *testing.B) {
					ds := make([]time.Duration, 0, b.N)
					for i := range b.N {
						t0 := time.Now()
						code, body := f.get(p.path(i))
						ds = append(ds, time.Since(t0))
						if code != http.StatusOK {
							b.Fatalf("%s: %d\n%s", p.path(i), code, body)
						}
					}
					slices.Sort(ds)
					ms := func(q float64) float64 {
						k := min(len(ds)-1, max(0, int(math.Ceil(q*float64(len(ds))))-1)) // nearest rank
						return float64(ds[k].Microseconds()) / 1000
					}
					b.ReportMetric(ms(0.5), "p50-ms")
					b.ReportMetric(ms(0.95), "p95-ms")
					b.ReportMetric(ms(1), "max-ms")
				})
			}
		})
	}
}

// TestConsolePagesAtFleetScaleShowTheStore runs the benchmark's code path
// on a small seeded fleet (2,000 devices, 20,000 attestations), so it
// cannot rot, and checks what the pages show against what was seeded.
func TestConsolePagesAtFleetScaleShowTheStore(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			f := openFleet(t, backend, 2000, 20_000, false)
			for _, p := range f.pages() {
				for i := range 3 {
					if code, body := f.get(p.path(i)); code != http.StatusOK {
						t.Fatalf("%s %s: %d\n%s", p.name, p.path(i), code, body)
					}
				}
			}
			// The fleet page's counts are the seeded fleet's (silence grows
			// with time: between its values before and after the view).
			fl := f.seed.Fleet
			t0 := time.Now()
			_, body := f.get("/")
			t1 := time.Now()
			num := func(id string) int {
				m := regexp.MustCompile(`id="` + id + `">([\d,]+)<`).FindStringSubmatch(body)
				if m == nil {
					t.Fatalf("fleet page has no %s", id)
				}
				n, _ := strconv.Atoi(strings.ReplaceAll(m[1], ",", ""))
				return n
			}
			if got := num("active-devices"); got != fl.Active {
				t.Errorf("fleet page: %d active devices, seeded %d", got, fl.Active)
			}
			if got := num("behind-count"); got != fl.Behind() {
				t.Errorf("fleet page: %d behind, seeded %d", got, fl.Behind())
			}
			if got := num("revoked-count"); got != fl.Revoked {
				t.Errorf("fleet page: %d revoked, seeded %d", got, fl.Revoked)
			}
			if got := num("cloned-count"); got != len(fl.Cloned) || got == 0 {
				t.Errorf("fleet page: %d cloned, seeded %d", got, len(fl.Cloned))
			}
			if got := num("stale-count"); got < fl.Silent(t0, 30) || got > fl.Silent(t1, 30) {
				t.Errorf("fleet page: %d silent, seeded %d..%d", got, fl.Silent(t0, 30), fl.Silent(t1, 30))
			}
			// A device page lists its seeded certificates and refusals.
			_, body = f.get("/devices/" + url.PathEscape(fl.Cloned[0]))
			if n := strings.Count(body, `<td class="kind">`); n < 1 || !strings.Contains(body, "clone: enrollment with a different key") {
				t.Errorf("cloned device's page: %d certificates, refusal shown %v", n, strings.Contains(body, "clone:"))
			}
			// Every fleet list pages through to its end.
			for _, l := range []string{"behind", "silent", "revoked", "cloned"} {
				path, pages := "/fleet/"+l, 0
				for path != "" && pages < 100 {
					code, body := f.get(path)
					if code != http.StatusOK {
						t.Fatalf("%s: %d\n%s", path, code, body)
					}
					pages++
					m := regexp.MustCompile(`href="(/fleet/` + l + `\?[^"]*)">Next page`).FindStringSubmatch(body)
					path = ""
					if m != nil {
						path = html.UnescapeString(m[1])
					}
				}
				if want := map[string]int{"behind": fl.Behind(), "revoked": fl.Revoked, "cloned": len(fl.Cloned)}[l]; l != "silent" && pages != want/50+1 {
					t.Errorf("%s: %d pages of 50 for %d devices", l, pages, want)
				}
			}
		})
	}
}
