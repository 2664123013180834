package e2e

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// The fleet simulator: N simulated devices, each a real agent library
// instance (package client) with its own key and state directory, against
// a real cluster on this machine: fosterd replicas (the binaries TestMain
// builds) on one PostgreSQL schema and one S3 bucket (versitygw), behind a
// TCP load balancer. Every device enrolls through a factory station's
// token, checks for updates, installs the release a staged rollout offers
// it, attests, and polls. One replica is SIGKILLed and restarted halfway
// through the enrollments, the other halfway through the installs; devices
// retry, and the balancer sends them to the replica that is up. At the end
// every acknowledged enrollment and attestation is checked through the API.
//
// `make test` runs it with 50 devices; `make fleetsim DEVICES=10000` runs
// the scale proof and prints the figures docs/BENCHMARKS.md records. The
// summary's last line reads
//
//	devices=N enrolled=N updated=N attested=N errors=0
//
// where enrolled, updated and attested count devices whose enrollment,
// install and attestation the API confirms at the end, and errors the
// problems found (a device may have more than one).

var (
	fleetDevices     = flag.Int("fleetsim.devices", 50, "fleet simulator: simulated devices")
	fleetConcurrency = flag.Int("fleetsim.concurrency", 16, "fleet simulator: devices working at once")
	fleetReplicas    = flag.Int("fleetsim.replicas", 2, "fleet simulator: fosterd replicas (2 or 3)")
	fleetPolls       = flag.Int("fleetsim.polls", 1, "fleet simulator: steady-state polls per device after the rollout")
	fleetImageSize   = flag.Int("fleetsim.image-size", 64<<10, "fleet simulator: firmware image size in bytes")
	fleetDir         = flag.String("fleetsim.dir", "", "fleet simulator: where the devices' state directories go (default: the test's temporary directory)")
)

// fleetSummary is printed by TestMain after the tests, so that a run of
// the simulator ends with it.
var fleetSummary string

const (
	fleetModel   = "edge-gw"
	fleetVersion = "1.0.0"
	fleetStation = "fleet-line"
	// fleetPatience is how long a device keeps retrying one operation.
	fleetPatience = 5 * time.Minute
)

// simSlots is a simulated device's A/B slot pair, in memory. The agent
// streams the image to a staging file (it verifies a file), Install
// activates the other slot, Commit keeps it, Rollback returns to the old
// one. It never reboots: the real A/B installer, its bootloader and its
// reboots are tested in client/ab_test.go and cmd/foster-agent's power-loss
// test. Used by one agent at a time.
type simSlots struct {
	staging   string
	active    string            // the slot running: "a" or "b"
	previous  string            // the slot to go back to until a commit ("" when none)
	images    map[string]string // slot -> sha256 (hex) of its image
	committed time.Time         // when Commit last ran: the attestation starts there
}

func newSimSlots(dir string) *simSlots {
	return &simSlots{staging: filepath.Join(dir, "slot.unverified"), active: "a", images: map[string]string{"a": "factory"}}
}

func otherSlot(s string) string {
	if s == "a" {
		return "b"
	}
	return "a"
}

func (s *simSlots) Name() string  { return "sim-ab" }
func (s *simSlots) Reboots() bool { return false }
func (s *simSlots) Prepare(context.Context) (client.InstallDest, error) {
	return client.InstallDest{Path: s.staging, From: s.active, To: otherSlot(s.active)}, nil
}
func (s *simSlots) Install(_ context.Context, p client.InstallPlan) error {
	if _, err := os.Stat(p.Image); err != nil {
		return fmt.Errorf("sim-ab: verified image: %w", err)
	}
	s.images[p.To] = fmt.Sprintf("%x", p.Want.SHA256)
	s.previous, s.active = s.active, p.To
	return nil
}
func (s *simSlots) Running(_ context.Context, p client.InstallPlan) (client.Running, error) {
	if s.active == p.To && s.images[p.To] == fmt.Sprintf("%x", p.Want.SHA256) {
		return client.RunningNew, nil
	}
	return client.RunningOld, nil
}
func (s *simSlots) Status(context.Context) (client.BootStatus, error) {
	return client.BootStatus{}, nil
}
func (s *simSlots) Commit(context.Context, client.InstallPlan) error {
	s.previous, s.committed = "", time.Now()
	return nil
}
func (s *simSlots) Rollback(context.Context, client.InstallPlan) error {
	if s.previous != "" {
		s.active, s.previous = s.previous, ""
	}
	return nil
}
func (s *simSlots) Cleanup(p client.InstallPlan) { os.Remove(p.Image) }

// simDevice is one simulated device. Its fields are written by the one
// worker that runs it at a time.
type simDevice struct {
	serial, urn, dir, token string
	slots                   *simSlots
	// Acknowledged by fosterd: an enrollment answered with a certificate,
	// an attestation answered 2xx.
	enrolled, attested bool
	certSerial         string
	installedVersion   string
	wave1              bool // installed before the promotion
	problem            string
}

func (d *simDevice) fail(format string, args ...any) {
	if d.problem == "" {
		d.problem = fmt.Sprintf(format, args...)
	}
}

// fleetSim is the cluster and the fleet.
type fleetSim struct {
	t           *testing.T
	ctx         context.Context
	n           int
	concurrency int
	replicas    []*Env
	args        [][]string // each replica's fosterd flags
	lb          *balancer
	admin       *http.Client // an admin's API client (any replica: they share the CA)
	devs        []*simDevice
	caRoot      string
	tufRoot     string
	schema      string
	db          *sql.DB // the test PostgreSQL, for measuring
	pg          *pgBackends
	s3Pid       int
	deadCPU     time.Duration // CPU time of the killed fosterd processes
	lat         latencies
	phases      []phaseStats
	kills       []string
	retryMu     sync.Mutex
	retries     map[string]int
	retryErrs   map[string][]string
	checks      atomic.Int64 // successful agent checks (RunOnce)
	rollout     rolloutJSON
	problems    []string
	startedAt   time.Time
	loadAtStart string
}

// TestFleetSimLosesNothingWhenReplicasAreKilled is the fleet simulator
// (see the comment at the top of this file).
func TestFleetSimLosesNothingWhenReplicasAreKilled(t *testing.T) {
	f := newFleetSim(t, *fleetDevices, *fleetConcurrency, *fleetReplicas)

	f.run("enroll", f.devs, 1, f.enroll)

	fw, _ := writeFirmware(t, *fleetImageSize)
	a := f.replicas[0]
	a.Admin("release", "add", "--model", fleetModel, "--version", fleetVersion, "--hold", fw)
	id := strings.TrimSpace(a.Admin("rollout", "create", "--model", fleetModel, "--version", fleetVersion, "--waves", "10,100").Stdout)
	f.rollout = a.rollout(id)
	f.awaitSameRepository()
	f.run("wave 1 (10 %)", f.devs, -1, f.checkOnce)
	var rest []*simDevice
	for _, d := range f.devs {
		if !d.wave1 {
			rest = append(rest, d)
		}
	}
	a.Admin("rollout", "promote", id)
	f.awaitSameRepository()
	f.run("wave 2 (100 %)", rest, 0, f.update)
	f.run("poll", f.devs, -1, f.poll)
	f.awaitConnectionsReleased()

	enrolled, updated, attested := f.verify()
	errs := len(f.problems)
	summary := f.summary() + fmt.Sprintf("devices=%d enrolled=%d updated=%d attested=%d errors=%d", f.n, enrolled, updated, attested, errs)
	fleetSummary = summary
	t.Logf("\n%s", summary)
	if errs > 0 {
		t.Fatalf("%d errors:\n%s", errs, strings.Join(f.problems[:min(len(f.problems), 50)], "\n"))
	}
}

// newFleetSim starts the cluster (PostgreSQL schema, S3 bucket, replicas,
// balancer), adds the model and a station, and prepares n devices with a
// station token each.
func newFleetSim(t *testing.T, n, concurrency, replicas int) *fleetSim {
	t.Helper()
	if n < 2 || concurrency < 1 || replicas < 2 || replicas > 3 {
		t.Fatalf("fleet simulator: want at least 2 devices, concurrency 1 or more, 2 or 3 replicas (got %d, %d, %d)", n, concurrency, replicas)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &fleetSim{t: t, ctx: ctx, n: n, concurrency: concurrency, retries: map[string]int{}, retryErrs: map[string][]string{}, startedAt: time.Now(), loadAtStart: loadAverage()}

	// The replicas' PostgreSQL connections carry an application_name of
	// their own, so that their backends' CPU time can be told apart.
	app := fmt.Sprintf("fleetsim-%d-%d", os.Getpid(), rand.Uint32())
	dsn := storetest.PostgresDSN(t) + "&application_name=" + app
	if u, err := url.Parse(dsn); err == nil {
		f.schema = u.Query().Get("search_path")
	}
	db, err := sql.Open("pgx", storetest.PostgresBase())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f.db, f.pg = db, followPGBackends(t, db, app)
	s3 := s3test.StartServer(t)
	bucket := s3.NewBucket(t)
	f.s3Pid = findProcess("versitygw", strings.TrimPrefix(s3.Endpoint, "http://"))

	f.args = [][]string{{"--db", dsn, "--blobs", bucket}}
	a := NewEnvWith(t, f.args[0])
	f.replicas = []*Env{a}
	for range replicas - 1 {
		f.replicas = append(f.replicas, a.Replica(nil))
		f.args = append(f.args, nil)
	}
	var addrs []string
	for _, r := range f.replicas {
		addrs = append(addrs, r.Addr)
	}
	f.lb = startBalancer(t, addrs)
	f.caRoot, f.tufRoot = filepath.Join(a.DataDir, "ca.pem"), filepath.Join(a.DataDir, "root.json")
	caPEM, err := os.ReadFile(f.caRoot)
	if err != nil {
		t.Fatal(err)
	}
	f.admin = a.adminClient(caPEM)

	a.Admin("model", "add", fleetModel)
	stationFile := filepath.Join(t.TempDir(), "line.station")
	a.Admin("station", "create", fleetStation, "--quota", strconv.Itoa(n), "--models", fleetModel, "--out", stationFile)
	serials := make([]string, n)
	for i := range serials {
		serials[i] = fmt.Sprintf("SN-%07d", i)
	}
	tokens := stationTokens(t, stationFile, fleetStation, fleetModel, serials, 24*time.Hour)

	dir := *fleetDir
	if dir == "" {
		dir = t.TempDir()
	} else {
		if dir, err = os.MkdirTemp(dir, "fleetsim-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	for i, sn := range serials {
		ddir := filepath.Join(dir, sn)
		f.devs = append(f.devs, &simDevice{serial: sn, urn: deviceURN(fleetModel, sn), dir: ddir, token: tokens[i], slots: newSimSlots(ddir)})
	}
	t.Logf("fleet simulator: %d devices, %d replicas %v behind %s, PostgreSQL schema %s, S3 %s (pid %d)",
		n, replicas, addrs, f.lb.URL(), f.schema, s3.Endpoint, f.s3Pid)
	return f
}

// meter is the CPU time used so far by each part of the system.
type meter struct {
	at                   time.Time
	fosterd, pg, s3, sim time.Duration
	ops                  int64
	requests             map[string]float64
}

func (f *fleetSim) meter() meter {
	m := meter{at: time.Now(), fosterd: f.deadCPU, pg: f.pg.total(), sim: selfCPU(), ops: f.checks.Load(), requests: map[string]float64{}}
	for _, r := range f.replicas {
		if cpu, err := procCPU(r.daemon.Process.Pid); err == nil {
			m.fosterd += cpu
		}
		reqs, err := r.requestCounts(f.admin)
		if err != nil {
			f.t.Fatalf("reading %s/metrics: %v", r.URL, err)
		}
		for k, v := range reqs {
			m.requests[k] += v
		}
	}
	if f.s3Pid != 0 {
		m.s3, _ = procCPU(f.s3Pid)
	}
	return m
}

// phaseStats is what one phase cost.
type phaseStats struct {
	name                 string
	devices              int
	ops                  int64 // enrollments or agent checks that succeeded
	wall                 time.Duration
	fosterd, pg, s3, sim time.Duration
	kill                 string
	// requests by "route code", when no replica restarted (its counters
	// start again from zero).
	requests map[string]float64
}

// run is one phase: fn for every device in devs, at most f.concurrency at
// once. fn reports whether the device reached the phase's goal. When kill
// is a replica index, that replica is SIGKILLed once half the devices are
// done, and restarted, while the others keep working.
func (f *fleetSim) run(name string, devs []*simDevice, kill int, fn func(*simDevice) bool) {
	t := f.t
	before := f.meter()
	var done atomic.Int64
	half := make(chan struct{})
	var once sync.Once
	work := make(chan *simDevice)
	finished := make(chan struct{})
	var wg sync.WaitGroup
	for range min(f.concurrency, len(devs)) {
		wg.Go(func() {
			for d := range work {
				if d.problem == "" && fn(d) && done.Add(1) >= int64(len(devs)+1)/2 {
					once.Do(func() { close(half) })
				}
			}
		})
	}
	go func() {
		for _, d := range devs {
			work <- d
		}
		close(work)
		wg.Wait()
		close(finished)
	}()
	t.Logf("%s: %d devices", name, len(devs))
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	st := phaseStats{name: name, devices: len(devs)}
	halfway := half
	if kill < 0 {
		halfway = nil
	}
	for waiting := true; waiting; {
		select {
		case <-halfway:
			halfway = nil
			st.kill = f.killAndRestart(kill, done.Load(), len(devs))
		case <-tick.C:
			t.Logf("%s: %d/%d devices done, %.0f s", name, done.Load(), len(devs), time.Since(before.at).Seconds())
		case <-finished:
			waiting = false
		}
	}
	if kill >= 0 && st.kill == "" {
		f.problems = append(f.problems, fmt.Sprintf("%s: replica %d was never killed: only %d of %d devices finished", name, kill+1, done.Load(), len(devs)))
	}
	after := f.meter()
	st.wall = after.at.Sub(before.at)
	st.ops = after.ops - before.ops
	st.fosterd, st.pg, st.s3, st.sim = after.fosterd-before.fosterd, after.pg-before.pg, after.s3-before.s3, after.sim-before.sim
	if st.kill == "" {
		st.requests = map[string]float64{}
		for k, v := range after.requests {
			if d := v - before.requests[k]; d > 0 {
				st.requests[k] = d
			}
		}
	}
	f.phases = append(f.phases, st)
	for _, d := range devs {
		if d.problem != "" {
			f.problems = append(f.problems, fmt.Sprintf("%s: %s", d.serial, d.problem))
			d.problem = "reported"
		}
	}
	t.Logf("%s: done in %.1f s", name, st.wall.Seconds())
}

// killAndRestart SIGKILLs replica i (a power cut: no shutdown) and starts
// it again on the same data directory and address. Called on the test
// goroutine while the devices keep working.
func (f *fleetSim) killAndRestart(i int, done int64, of int) string {
	r := f.replicas[i]
	start := time.Now()
	r.KillDaemon()
	if ps := r.daemon.ProcessState; ps != nil {
		f.deadCPU += ps.UserTime() + ps.SystemTime()
	}
	r.StartDaemonWith(f.args[i])
	note := fmt.Sprintf("replica %d SIGKILLed after %d of %d devices, serving again %.1f s later", i+1, done, of, time.Since(start).Seconds())
	f.t.Log(note)
	f.kills = append(f.kills, note)
	return note
}

// permanent marks an error that retrying does not help.
type permanent struct{ error }

var (
	errQueued     = errors.New("the attestation is still queued")
	errNotOffered = errors.New("the release is not installed yet")
)

// try runs fn until it succeeds, returns a permanent error, or
// fleetPatience runs out, backing off from 100 ms to 5 s (with jitter)
// between attempts, as a device would. Failures are counted by op.
func (f *fleetSim) try(op string, fn func() error) error {
	deadline := time.Now().Add(fleetPatience)
	backoff := 100 * time.Millisecond
	for {
		err := fn()
		var perm permanent
		if err == nil || errors.As(err, &perm) || f.ctx.Err() != nil {
			return err
		}
		class := "other"
		if client.IsTransient(err) || errors.Is(err, errQueued) || errors.Is(err, errNotOffered) {
			class = "transient"
		}
		key := op + ", " + class
		f.retryMu.Lock()
		f.retries[key]++
		if len(f.retryErrs[key]) < 3 {
			msg := err.Error()
			f.retryErrs[key] = append(f.retryErrs[key], msg[:min(len(msg), 240)])
		}
		f.retryMu.Unlock()
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v: %w", fleetPatience, err)
		}
		time.Sleep(time.Duration(float64(backoff) * (0.5 + rand.Float64())))
		backoff = min(2*backoff, 5*time.Second)
	}
}

// enroll enrolls d with its station token, through the balancer.
func (f *fleetSim) enroll(d *simDevice) bool {
	err := f.try("enroll", func() error {
		start := time.Now()
		_, err := client.Enroll(f.ctx, client.EnrollConfig{
			StateDir: d.dir, Server: f.lb.URL(), Token: d.token, Serial: d.serial, Model: fleetModel,
			CARootPath: f.caRoot, TUFRootPath: f.tufRoot,
		})
		if errors.Is(err, client.ErrAlreadyEnrolled) {
			return nil // an earlier attempt stored its certificate
		}
		if err != nil {
			return err
		}
		f.lat.add("enroll", time.Since(start))
		f.checks.Add(1)
		return nil
	})
	if err != nil {
		d.fail("enroll: %v", err)
		return false
	}
	st, err := client.ReadStatus(d.dir, time.Now())
	if err != nil {
		d.fail("reading the state dir after enrolling: %v", err)
		return false
	}
	d.enrolled, d.certSerial = true, st.CertSerial
	return true
}

// check is one agent check (RunOnce), with a fresh agent as a device
// process would have after an hour's sleep: a new TLS connection, its own
// certificate.
func (f *fleetSim) check(d *simDevice) (*client.Report, error) {
	a, err := client.New(client.Config{StateDir: d.dir, Installer: d.slots})
	if err != nil {
		return nil, permanent{err}
	}
	defer a.Close()
	start := time.Now()
	rep, err := a.RunOnce(f.ctx)
	took := time.Since(start)
	if rep != nil {
		if rep.Installed != nil {
			d.installedVersion = rep.Installed.Version
		}
		if rep.AttestationsSent > 0 && rep.AttestationsQueued == 0 {
			d.attested = true
		}
	}
	if err != nil {
		if errors.Is(err, client.ErrRolledBack) {
			return rep, permanent{err}
		}
		return rep, err
	}
	f.checks.Add(1)
	switch {
	case rep.Installed != nil:
		f.lat.add("install", took)
		if rep.AttestationsSent > 0 {
			f.lat.add("attest", time.Since(d.slots.committed))
		}
	case rep.UpToDate && rep.AttestationsSent == 0:
		f.lat.add("poll", took)
	}
	if rep.AttestationsQueued > 0 {
		return rep, errQueued
	}
	return rep, nil
}

// checkOnce is the first wave: one check per device; those the signed
// terms offer the release to install it.
func (f *fleetSim) checkOnce(d *simDevice) bool {
	if err := f.try("check", func() error { _, err := f.check(d); return err }); err != nil {
		d.fail("check in wave 1: %v", err)
		return false
	}
	d.wave1 = d.installedVersion == fleetVersion
	return true
}

// update checks until d runs the release and its attestation is accepted.
func (f *fleetSim) update(d *simDevice) bool {
	err := f.try("check", func() error {
		if _, err := f.check(d); err != nil {
			return err
		}
		if d.installedVersion != fleetVersion {
			return errNotOffered
		}
		return nil
	})
	if err != nil {
		d.fail("update: %v", err)
		return false
	}
	return true
}

// poll is the steady state: checks that find nothing new.
func (f *fleetSim) poll(d *simDevice) bool {
	for range *fleetPolls {
		err := f.try("check", func() error {
			rep, err := f.check(d)
			if err == nil && (!rep.UpToDate || rep.Installed != nil) {
				return permanent{fmt.Errorf("a poll with nothing new to install reported %+v", rep)}
			}
			return err
		})
		if err != nil {
			d.fail("poll: %v", err)
			return false
		}
	}
	return true
}

// awaitSameRepository waits until every replica serves the snapshot the
// first one published last (replicas follow each other's publishes).
func (f *fleetSim) awaitSameRepository() {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		vs := make([]int64, len(f.replicas))
		for i, r := range f.replicas {
			var st struct {
				Versions struct{ Snapshot int64 } `json:"versions"`
			}
			r.getJSON(f.admin, "/v1/tuf", &st)
			vs[i] = st.Versions.Snapshot
		}
		if slices.Min(vs) == slices.Max(vs) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("replicas serve snapshot versions %v after 60 s", vs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// awaitConnectionsReleased: the devices' connections, each authenticated
// as its device, are closed once their checks end (Agent.Close), instead
// of staying open on fosterd until their idle timeout (90-120 s). Every
// device connection passes through the balancer, which counts them.
func (f *fleetSim) awaitConnectionsReleased() {
	deadline := time.Now().Add(30 * time.Second)
	for {
		open := f.lb.open()
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.problems = append(f.problems, fmt.Sprintf("%d device connections still open 30 s after the last check", open))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type fleetDeviceJSON struct {
	ID               string `json:"id"`
	Status           string `json:"status"`
	CertSerial       string `json:"cert_serial"`
	InstalledVersion string `json:"installed_version"`
}

type fleetAttestationJSON struct {
	ID         int64  `json:"id"`
	DeviceID   string `json:"device_id"`
	Sequence   int64  `json:"sequence"`
	Outcome    string `json:"outcome"`
	Version    string `json:"version"`
	LeafIndex  int64  `json:"leaf_index"`
	CertSerial string `json:"cert_serial"`
}

// verify checks through the API (of replica 1) that nothing acknowledged
// was lost: every device that got a certificate is recorded with it,
// every accepted attestation is in the store and in the transparency log;
// and that the first wave was exactly the devices the signed terms
// offered. It returns the devices the API confirms enrolled, updated and
// attested.
func (f *fleetSim) verify() (enrolled, updated, attested int) {
	a := f.replicas[0]
	devices := map[string]fleetDeviceJSON{}
	for after := ""; ; {
		var page []fleetDeviceJSON
		a.getJSON(f.admin, "/v1/devices?limit=1000&after="+url.QueryEscape(after), &page)
		for _, d := range page {
			devices[d.ID] = d
		}
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	atts := map[string][]fleetAttestationJSON{}
	total := 0
	for after := int64(0); ; {
		var page []fleetAttestationJSON
		a.getJSON(f.admin, fmt.Sprintf("/v1/attestations?limit=1000&after=%d", after), &page)
		for _, at := range page {
			atts[at.DeviceID] = append(atts[at.DeviceID], at)
		}
		total += len(page)
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	treeSize := f.logSize()
	offered := map[string]bool{}
	for _, d := range f.devs {
		offered[d.urn] = bucket(f.t, f.rollout.Seed, d.urn) < f.rollout.Share
	}

	problem := func(d *simDevice, format string, args ...any) {
		f.problems = append(f.problems, d.serial+": "+fmt.Sprintf(format, args...))
	}
	for _, d := range f.devs {
		rec, known := devices[d.urn]
		switch {
		case !d.enrolled:
			problem(d, "never enrolled")
			continue
		case !known:
			problem(d, "acknowledged enrollment lost: the API does not know the device")
			continue
		case rec.CertSerial != d.certSerial || rec.Status != "active":
			problem(d, "the API has certificate %s (%s), the device was given %s", rec.CertSerial, rec.Status, d.certSerial)
			continue
		}
		enrolled++
		if d.installedVersion == fleetVersion && rec.InstalledVersion == fleetVersion {
			updated++
		} else {
			problem(d, "runs %q, the API says %q, want %s", d.installedVersion, rec.InstalledVersion, fleetVersion)
		}
		if d.wave1 != offered[d.urn] {
			problem(d, "installed in the first wave: %v; the signed terms (seed %s, share %d) offer it: %v", d.wave1, f.rollout.Seed, f.rollout.Share, offered[d.urn])
		}
		if !d.attested {
			problem(d, "no attestation accepted")
			continue
		}
		as := atts[d.urn]
		if len(as) != 1 || as[0].Sequence != 1 || as[0].Outcome != attest.OutcomeCommitted || as[0].Version != fleetVersion ||
			as[0].CertSerial != d.certSerial || as[0].LeafIndex < 0 || as[0].LeafIndex >= treeSize {
			problem(d, "acknowledged attestation lost or changed: the API has %+v (log size %d)", as, treeSize)
			continue
		}
		attested++
	}
	if len(devices) != f.n || total != attested || treeSize != int64(total) {
		f.problems = append(f.problems, fmt.Sprintf("the API has %d devices (want %d), %d attestations and a log of %d entries (want %d each)",
			len(devices), f.n, total, treeSize, attested))
	}
	if ro := a.rollout(f.rollout.ID); ro.Health.Succeeded != f.n || ro.Health.Failed != 0 {
		f.problems = append(f.problems, fmt.Sprintf("rollout %s health %+v, want %d succeeded and no failure", ro.ID, ro.Health, f.n))
	}
	return enrolled, updated, attested
}

// logSize is the size of the transparency log's latest checkpoint (a
// C2SP signed note: origin, size, root hash).
func (f *fleetSim) logSize() int64 {
	a := f.replicas[0]
	resp, err := f.admin.Get(a.URL + "/v1/log/checkpoint")
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil || resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET /v1/log/checkpoint: %v %s", err, resp.Status)
	}
	lines := strings.Split(string(body), "\n")
	if len(lines) < 2 {
		f.t.Fatalf("checkpoint %q", body)
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		f.t.Fatalf("checkpoint size %q: %v", lines[1], err)
	}
	return n
}

// summary is the figures of the run, one line each (the caller adds the
// last line, the counts).
func (f *fleetSim) summary() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("fleet simulator: %d devices, %d fosterd replicas (one PostgreSQL schema, one versitygw bucket) behind a TCP load balancer;",
		f.n, len(f.replicas))
	p("  concurrency %d, image %d bytes, waves 10,100, %d poll(s) per device after the rollout; %d CPUs; run took %.0f s;",
		f.concurrency, *fleetImageSize, *fleetPolls, runtime.NumCPU(), time.Since(f.startedAt).Seconds())
	p("  load average (1, 5, 15 min) %s at the start, %s at the end", f.loadAtStart, loadAverage())
	for _, k := range f.kills {
		p("kill: %s", k)
	}
	p("%-15s %7s %7s %8s %8s %10s %9s %9s %9s %9s", "phase", "devices", "ops", "wall s", "ops/s", "fosterd s", "ms/op", "PG ms/op", "S3 ms/op", "sim s")
	perOp := func(d time.Duration, ops int64) float64 {
		if ops == 0 {
			return 0
		}
		return float64(d.Microseconds()) / 1000 / float64(ops)
	}
	var poll *phaseStats
	for i, st := range f.phases {
		p("%-15s %7d %7d %8.1f %8.1f %10.2f %9.3f %9.3f %9.3f %9.1f", st.name, st.devices, st.ops, st.wall.Seconds(),
			float64(st.ops)/st.wall.Seconds(), st.fosterd.Seconds(), perOp(st.fosterd, st.ops), perOp(st.pg, st.ops), perOp(st.s3, st.ops), st.sim.Seconds())
		if st.name == "poll" {
			poll = &f.phases[i]
		}
	}
	p("(ops: enrollments in phase enroll, agent checks otherwise; fosterd: CPU time of every fosterd process, killed ones included;")
	p(" PG: the replicas' PostgreSQL backends; S3: the versitygw process; sim: this process, the devices and the balancer)")
	p("%-40s %7s %9s %9s %9s", "latency (client side, successful tries)", "n", "p50 ms", "p99 ms", "max ms")
	for _, op := range []struct{ name, what string }{
		{"enroll", "enroll (key, CSR, station token)"},
		{"poll", "poll (a check, nothing new)"},
		{"install", "install (check, download, install, attest)"},
		{"attest", "attest (after commit: sign, send)"},
	} {
		n, p50, p99, mx := f.lat.quantiles(op.name)
		p("%-40s %7d %9.1f %9.1f %9.1f", op.what, n, ms(p50), ms(p99), ms(mx))
	}
	keys := slices.Sorted(maps.Keys(f.retries))
	for _, k := range keys {
		p("retried: %s: %d, e.g. %q", k, f.retries[k], f.retryErrs[k][0])
	}
	p("connections the balancer moved to another replica (the first refused): %d", f.lb.rerouted.Load())
	if poll != nil && poll.ops > 0 {
		var routes []string
		for k, v := range poll.requests {
			if !strings.Contains(k, "/metrics") && !strings.HasPrefix(k, "GET /v1/") {
				routes = append(routes, fmt.Sprintf("%s %.2f", k, v/float64(poll.ops)))
			}
		}
		slices.Sort(routes)
		p("requests per poll: %s", strings.Join(routes, "; "))
		cpu := perOp(poll.fosterd, poll.ops) // ms per poll
		if cpu > 0 {
			p("hourly poll: fosterd %.3f ms CPU per device-hour: %.0f devices per core at 100 %% busy; PostgreSQL backends %.3f ms, S3 server %.3f ms per device-hour",
				cpu, 3600e3/cpu, perOp(poll.pg, poll.ops), perOp(poll.s3, poll.ops))
		}
	}
	var size int64
	if err := f.db.QueryRow(`SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, f.schema).Scan(&size); err == nil {
		p("PostgreSQL: %d bytes in the schema (tables, indexes, TOAST), %.0f bytes per device; %d backends seen", size, float64(size)/float64(f.n), f.pg.count())
	}
	if rows, err := f.db.Query(`SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'
		ORDER BY 2 DESC LIMIT 6`, f.schema); err == nil {
		var tables []string
		for rows.Next() {
			var name string
			var bytes int64
			if rows.Scan(&name, &bytes) == nil {
				tables = append(tables, fmt.Sprintf("%s %.0f", name, float64(bytes)/float64(f.n)))
			}
		}
		rows.Close()
		p("  bytes per device by table: %s", strings.Join(tables, ", "))
	}
	var rss []string
	for i, r := range f.replicas {
		rss = append(rss, fmt.Sprintf("replica %d %s", i+1, peakRSS(r.daemon.Process.Pid)))
	}
	p("fosterd peak RSS (the restarted processes: since their restart): %s", strings.Join(rss, ", "))
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// loadAverage is the machine's 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// peakRSS is a process's peak resident set size (VmHWM).
func peakRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
