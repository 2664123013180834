package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/pkg/attest"
	fenv "github.com/foster-ota/foster/pkg/env"
)

// TestMain lets the power-loss test run this test binary as the agent
// (Mender-style): with FOSTER_TEST_AGENT_MAIN=1 it is foster-agent.
func TestMain(m *testing.M) {
	if os.Getenv("FOSTER_TEST_AGENT_MAIN") == "1" {
		// This test binary is not built with -tags fostertest: hand the
		// kill points to the agent's hooks here.
		fenv.AgentKillAt.Override(os.Getenv(killAtEnv))
		fenv.AgentKillTrace.Override(os.Getenv(killTraceEnv))
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// How runAgent hands kill points to the agent run by TestMain.
const killAtEnv, killTraceEnv = "FOSTER_AGENT_KILL_AT", "FOSTER_AGENT_KILL_TRACE"

// A power-loss scenario: the release the device is offered and how it ends.
type scenario struct {
	name, behaviour string
	outcome         string
}

var scenarios = []scenario{
	{"healthy release", clienttest.Healthy, attest.OutcomeCommitted},
	{"release failing its health check", clienttest.Unhealthy, attest.OutcomeRolledBack},
	{"release that does not boot", clienttest.Panics, attest.OutcomeRolledBack},
}

// killPoint is where one trial cuts the power: the n-th time the agent's
// run number `run` (counting from 0) passes point `name`.
type killPoint struct {
	scenario int
	run      int
	name     string
	n        int
}

// String names the point: agent run 0 downloads and installs, run 1 runs
// after the reboot (health check, commit or rollback), and so on.
func (k killPoint) String() string { return fmt.Sprintf("run %d: %s#%d", k.run, k.name, k.n) }

// plDevice is one simulated device with its own identity and agent.
type plDevice struct {
	t      *testing.T
	srv    *clienttest.Server
	sim    *clienttest.SimDevice
	state  string
	config string
	urn    string
	runs   int
	logs   bytes.Buffer
	// bundle, when set, makes runAgent run `install-bundle` of this file
	// instead of `run --once` (and the device never reaches the server).
	bundle string
}

const plImageSize = 384 << 10 // three 128 KiB download chunks, a checkpoint each

func newPLDevice(t *testing.T, srv *clienttest.Server, serial string) *plDevice {
	t.Helper()
	dir := t.TempDir()
	srv.AddToken("tok-"+serial, serial, "edge-gw")
	_, err := client.Enroll(context.Background(), client.EnrollConfig{
		StateDir: filepath.Join(dir, "state"), Server: srv.URL, Token: "tok-" + serial, Serial: serial, Model: "edge-gw",
		CARootPath:  clienttest.WriteFile(t, dir, "ca.pem", srv.PKI.RootPEM),
		TUFRootPath: clienttest.WriteFile(t, dir, "root.json", srv.Repo.RootJSON()),
	})
	if err != nil {
		t.Fatal(err)
	}
	sim := clienttest.NewSimDevice(t, filepath.Join(dir, "sim"), clienttest.SimImage("1.0.0", clienttest.Healthy, plImageSize))
	fc := client.FileConfig{Installer: "ab", AB: sim.ABConfig()}
	fc.HealthCheck.Command = sim.HealthCommand()
	fc.HealthCheck.Timeout = client.Duration(30 * time.Second)
	fc.Reboot.Command = sim.RebootCommand()
	fc.Reboot.BootIDFile = sim.BootIDFile
	fc.Download.CheckpointBytes = 64 << 10
	b, _ := json.MarshalIndent(fc, "", "  ")
	return &plDevice{
		t: t, srv: srv, sim: sim,
		state:  filepath.Join(dir, "state"),
		config: clienttest.WriteFile(t, dir, "config.json", b),
		urn:    "urn:foster:device:edge-gw:" + serial,
	}
}

// runAgent runs `foster-agent run --once` as a subprocess. killed reports a
// SIGKILL (a power cut, when kill is set).
func (d *plDevice) runAgent(kill string, trace string) (killed bool, err error) {
	args := []string{"run", "--once", "--config", d.config}
	if d.bundle != "" {
		args = []string{"install-bundle", "--config", d.config, d.bundle}
	}
	cmd := exec.Command(os.Args[0], append([]string{"--state-dir", d.state, "--log-level", "info"}, args...)...)
	cmd.Env = append(os.Environ(), "FOSTER_TEST_AGENT_MAIN=1", killAtEnv+"="+kill, killTraceEnv+"="+trace)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	d.runs++
	fmt.Fprintf(&d.logs, "--- agent run %d (kill %q)\n%s", d.runs-1, kill, out.Bytes())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true, nil
		}
	}
	return false, err
}

func (d *plDevice) status() *client.Status {
	st, err := client.ReadStatus(d.state, time.Now())
	if err != nil {
		d.t.Fatalf("status: %v\n%s", err, d.logs.String())
	}
	return st
}

func atRest(st *client.Status) bool {
	return (st.Phase == "idle" || st.Phase == "attested") && len(st.QueuedAttestations) == 0 && st.UnsignedAttestations == 0
}

// atRestOffline: an offline device is at rest with its attestation signed
// and queued for the next run that reaches fosterd.
func atRestOffline(st *client.Status) bool {
	return (st.Phase == "idle" || st.Phase == "attested") && len(st.QueuedAttestations) == 1 && st.UnsignedAttestations == 0
}

// lifecycle runs the agent until the device is at rest, power-cycling the
// simulated device after every kill and every reboot request. kills maps an
// agent run number to the point where that run loses power; traces maps run
// number to the kill points passed (when traceDir is set). killed counts the
// power cuts that happened.
func (d *plDevice) lifecycle(kills map[int]killPoint, traceDir string) (traces map[int][]string, killed int) {
	traces = map[int][]string{}
	for run := 0; run < 25; run++ {
		kill, trace := "", ""
		if kp, ok := kills[run]; ok {
			kill = fmt.Sprintf("%s#%d", kp.name, kp.n)
		}
		if traceDir != "" {
			trace = filepath.Join(traceDir, fmt.Sprintf("run-%d", run))
		}
		k, err := d.runAgent(kill, trace)
		if traceDir != "" {
			b, _ := os.ReadFile(trace)
			traces[run] = strings.Fields(string(b))
		}
		switch {
		case k:
			killed++
			if _, err := d.sim.Boot(); err != nil { // the power comes back
				d.t.Fatalf("after a power cut at %q in run %d: %v\n%s", kill, run, err, d.logs.String())
			}
			continue
		case d.sim.RebootRequested():
			if _, err := d.sim.Boot(); err != nil {
				d.t.Fatalf("reboot: %v\n%s", err, d.logs.String())
			}
			continue
		}
		if d.bundle != "" && atRestOffline(d.status()) {
			// Offline at rest. A bundle run after the install was complete
			// refuses the bundle's release as not above the installed one.
			if err != nil && !strings.Contains(d.logs.String(), "install rolled back") && !strings.Contains(d.logs.String(), "rolled back on this device before") &&
				!strings.Contains(d.logs.String(), "is not above the installed release") {
				d.t.Fatalf("agent failed at rest: %v\n%s", err, d.logs.String())
			}
			return traces, killed
		}
		if d.bundle == "" && atRest(d.status()) {
			// At rest, everything delivered. A failing run (the rollback is
			// reported as an error) is fine here; anything else is not.
			if err != nil && !strings.Contains(d.logs.String(), "install rolled back") {
				d.t.Fatalf("agent failed at rest: %v\n%s", err, d.logs.String())
			}
			return traces, killed
		}
	}
	d.t.Fatalf("device never came to rest (phase %s)\n%s", d.status().Phase, d.logs.String())
	return nil, killed
}

// check asserts the end state of one trial. outcome is what the release
// deserves, or "" when either is fine (several power cuts during a trial
// boot may exhaust the boot limit of a healthy release): then the
// attestation must agree with what runs.
func (d *plDevice) check(outcome string, img []byte, label string) {
	d.t.Helper()
	fail := func(format string, args ...any) {
		d.t.Helper()
		d.t.Fatalf("%s: %s\nenv %v\n%s", label, fmt.Sprintf(format, args...), d.sim.Env(), d.logs.String())
	}
	if len(d.sim.Violations) > 0 {
		fail("booted invalid images: %v", d.sim.Violations)
	}
	slot, running, err := d.sim.Booted()
	if err != nil {
		fail("%v", err)
	}
	if e := d.sim.Env(); e["upgrade_available"] != "0" || e["boot_part"] != slot {
		fail("bootloader not at rest on the running slot %s", slot)
	}
	st := d.status()
	var got []clienttest.Received
	for _, r := range d.srv.Received() {
		if r.Install.Device == d.urn {
			got = append(got, r)
		}
	}
	if len(got) != 1 {
		fail("%d attestations reached the server, want exactly 1", len(got))
	}
	in := got[0].Install
	if outcome == "" {
		outcome = in.Outcome
	}
	if in.Outcome != outcome || in.New.SHA256 != sha256hex(img) || in.Sequence != 1 {
		fail("attestation %s for %s (seq %d), want %s", in.Outcome, in.New.Name, in.Sequence, outcome)
	}
	switch outcome {
	case attest.OutcomeCommitted:
		if !bytes.Equal(running, img) || st.Installed == nil || st.Installed.SHA256 != sha256hex(img) {
			fail("committed, but running %q", firstLine(running))
		}
	default:
		if v, _ := clienttest.SimBehaviour(running); v != "1.0.0" || st.Installed != nil || !slices.Contains(st.RolledBack, sha256hex(img)) {
			fail("rolled back, but running %q (installed %v)", firstLine(running), st.Installed)
		}
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func firstLine(b []byte) string { l, _, _ := bytes.Cut(b, []byte("\n")); return string(l) }

// TestPowerLoss cuts the agent's power (SIGKILL) at every kill point it
// passes while installing on a simulated A/B device, across download,
// install, reboot, health check, commit, rollback and attestation, in
// seeded random trials. After every trial the device boots a valid image, is
// committed or rolled back as the release deserves, and exactly one
// attestation of that outcome reached the server.
//
//	FOSTER_POWERLOSS_TRIALS (default 210, 30 with -short), FOSTER_POWERLOSS_SEED (default 1)
func TestPowerLoss(t *testing.T) {
	trials, seed := 210, uint64(1)
	if testing.Short() {
		trials = 30
	}
	if v, err := strconv.Atoi(os.Getenv("FOSTER_POWERLOSS_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	if v, err := strconv.ParseUint(os.Getenv("FOSTER_POWERLOSS_SEED"), 10, 64); err == nil {
		seed = v
	}
	start := time.Now()
	srv := clienttest.NewServer(t, clienttest.NewRepo(t, "edge-gw"))
	images := make([][]byte, len(scenarios))
	for i, sc := range scenarios {
		images[i] = clienttest.SimImage(fmt.Sprintf("2.0.%d", i), sc.behaviour, plImageSize)
	}
	// Each scenario's release has its own counter; a device is offered only
	// its scenario's release (by hardware id).
	srv.Lock(func() {
		for i, sc := range scenarios {
			srv.Repo.AddTarget(t, fmt.Sprintf("edge-gw/2.0.%d/firmware.bin", i), images[i], clienttest.Custom{
				Model: "edge-gw", Version: fmt.Sprintf("2.0.%d", i), ReleaseCounter: int64(10 + i), HardwareIDs: []string{"hw-" + strconv.Itoa(i)}})
			_ = sc
		}
		srv.Repo.Publish(t)
	})
	newDev := func(sc int, serial string) *plDevice {
		d := newPLDevice(t, srv, serial)
		d.sim.AddValid(images[sc], scenarios[sc].behaviour)
		setHardware(t, d.state, "hw-"+strconv.Itoa(sc))
		return d
	}

	// Trace each scenario once without a power cut: the kill points passed
	// in each agent run are the points the trials cut at.
	var points []killPoint
	for i, sc := range scenarios {
		d := newDev(i, fmt.Sprintf("TRACE-%d", i))
		traces, _ := d.lifecycle(nil, t.TempDir())
		d.check(sc.outcome, images[i], "trace "+sc.name)
		for run, names := range traces {
			seen := map[string]int{}
			for _, n := range names {
				seen[n]++
				points = append(points, killPoint{scenario: i, run: run, name: n, n: seen[n]})
			}
		}
	}
	sort.Slice(points, func(a, b int) bool {
		return points[a].String()+strconv.Itoa(points[a].scenario) < points[b].String()+strconv.Itoa(points[b].scenario)
	})
	distinct := map[string]bool{}
	for _, p := range points {
		distinct[p.String()] = true
	}
	if len(distinct) < 20 {
		t.Fatalf("only %d distinct kill points traced: %v", len(distinct), distinct)
	}

	// Trials: every kill point at least once, then seeded random ones; a
	// quarter of the random ones lose power a second time, in a later run.
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var plan [][]killPoint
	for _, p := range points {
		plan = append(plan, []killPoint{p})
	}
	for len(plan) < trials {
		first := points[rng.IntN(len(points))]
		trial := []killPoint{first}
		if rng.IntN(4) == 0 {
			var later []killPoint
			for _, p := range points {
				if p.scenario == first.scenario && p.run > first.run {
					later = append(later, p)
				}
			}
			if len(later) > 0 {
				trial = append(trial, later[rng.IntN(len(later))])
			}
		}
		plan = append(plan, trial)
	}
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })

	var (
		mu       sync.Mutex
		killedAt = map[string]int{}
		runs     int
		cuts     int
		outcomes = map[string]int{}
	)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				kps := plan[i]
				kp := kps[0]
				sc := scenarios[kp.scenario]
				d := newDev(kp.scenario, fmt.Sprintf("PL-%d", i))
				kills := map[int]killPoint{}
				for _, k := range kps {
					kills[k.run] = k
				}
				_, killed := d.lifecycle(kills, "")
				label := fmt.Sprintf("trial %d (%s, power cut at %v)", i, sc.name, kps)
				if killed == 0 {
					t.Errorf("%s: the agent never reached its kill point\n%s", label, d.logs.String())
					continue
				}
				// The second cut's point was traced on an uninterrupted
				// device; after the first cut the run may take another path.
				want := sc.outcome
				if killed > 1 {
					want = ""
				}
				d.check(want, images[kp.scenario], label)
				st := d.srv.Received()
				mu.Lock()
				killedAt[kp.String()]++
				runs += d.runs
				cuts += killed
				for _, r := range st {
					if r.Install.Device == d.urn {
						outcomes[fmt.Sprintf("%s -> %s", sc.name, r.Install.Outcome)]++
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := range plan {
		work <- i
	}
	close(work)
	wg.Wait()
	names := make([]string, 0, len(killedAt))
	for n := range killedAt {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d trials (seed %d), %d agent runs, %d power cuts, %d distinct kill points, %s; outcomes %v; first cuts at:\n  %s",
		len(plan), seed, runs, cuts, len(killedAt), time.Since(start).Round(time.Second), outcomes, strings.Join(names, "\n  "))
	if len(killedAt) < 20 && !t.Failed() {
		t.Fatalf("only %d distinct kill points exercised", len(killedAt))
	}
	var resends int
	srv.Lock(func() { resends = srv.Resends })
	if resends > 0 {
		t.Logf("%d attestations were re-sent after a power cut between the server's answer and the outbox move (accepted idempotently)", resends)
	}
}

// setHardware sets the device's hardware id, as enrollment with --hardware-id would.
func setHardware(t *testing.T, state, hw string) {
	t.Helper()
	p := filepath.Join(state, "agent.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	json.Unmarshal(b, &cfg)
	cfg["hardware_id"] = hw
	b, _ = json.Marshal(cfg)
	os.WriteFile(p, b, 0o644)
}
