package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// Staged rollouts with the real binaries (docs/ROLLOUTS.md). Agents are
// driven deterministically: `foster-agent run --once` per device, a few at
// a time, round after round until the condition holds or a deadline.

// rolloutJSON is what `foster rollout show --json` prints.
type rolloutJSON struct {
	ID          string  `json:"id"`
	State       string  `json:"state"`
	Wave        int     `json:"wave"`
	Percent     int     `json:"percent"`
	Share       int     `json:"share"`
	Seed        string  `json:"seed"`
	HaltReason  string  `json:"halt_reason"`
	HaltIndices []int64 `json:"halt_log_indices"`
	Health      struct {
		Eligible, Offered, Succeeded, Failed, Silent int
	} `json:"health"`
}

func (e *Env) rollout(id string) rolloutJSON {
	e.t.Helper()
	var r rolloutJSON
	if err := json.Unmarshal([]byte(e.Admin("rollout", "show", id, "--json").Stdout), &r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// signedTermsJSON are rollout terms as signed in a target's custom metadata.
type signedTermsJSON struct {
	ID     string   `json:"id"`
	Seed   string   `json:"seed"`
	Share  int      `json:"share"`
	Groups []string `json:"groups"`
	State  string   `json:"state"`
}

// signedTerms reads target's rollout terms as a stock go-tuf client sees
// them in the repository e serves (which must be public).
func (e *Env) signedTerms(target string) (signedTermsJSON, bool) {
	e.t.Helper()
	t, ok, err := e.trySignedTerms(target)
	if err != nil {
		e.t.Fatalf("%s: %v", target, err)
	}
	return t, ok
}

// trySignedTerms is signedTerms that returns the error of a target not
// (yet) in the repository: a replica serves another's publish only once it
// has reloaded the repository.
func (e *Env) trySignedTerms(target string) (signedTermsJSON, bool, error) {
	e.t.Helper()
	c := e.stockClient(nil)
	up := c.mustRefresh()
	info, err := up.GetTargetInfo(target)
	if err != nil {
		return signedTermsJSON{}, false, err
	}
	var custom struct {
		Rollout *signedTermsJSON `json:"rollout"`
	}
	if info.Custom != nil {
		if err := json.Unmarshal(*info.Custom, &custom); err != nil {
			e.t.Fatal(err)
		}
	}
	if custom.Rollout == nil {
		return signedTermsJSON{}, false, nil
	}
	return *custom.Rollout, true, nil
}

// awaitTerms waits until e serves terms of target that satisfy ok.
func (e *Env) awaitTerms(target string, within time.Duration, ok func(signedTermsJSON) bool) signedTermsJSON {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		t, _, err := e.trySignedTerms(target) // a replica may not have the target yet
		if err == nil && ok(t) {
			return t
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s serves terms %+v for %s after %v (%v)", e.URL, t, target, within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// bucket is the documented formula, computed here from the outside: the
// first 8 bytes of SHA-256(seed ‖ URN), big-endian, mod 10000.
func bucket(t *testing.T, seedHex, urn string) int {
	seed, err := hex.DecodeString(seedHex)
	if err != nil || len(seed) != 32 {
		t.Fatalf("signed seed %q is not 32 bytes of hex", seedHex)
	}
	sum := sha256.Sum256(append(seed, urn...))
	return int(binary.BigEndian.Uint64(sum[:8]) % 10000)
}

// fleet is a set of enrolled devices of one model.
type fleet struct {
	env  *Env
	devs []*Device
	// healthCheck, if set, is every device's health check command.
	healthCheck string
}

// enrollFleet enrolls n devices SN-<prefix>-<i>, a few at a time.
func enrollFleet(env *Env, prefix, model string, n int) *fleet {
	env.t.Helper()
	f := &fleet{env: env}
	for i := range n {
		f.devs = append(f.devs, env.NewDevice(fmt.Sprintf("SN-%s-%02d", prefix, i), model))
	}
	f.each(f.devs, func(d *Device) { d.Enroll(env.Token(d.Serial, d.Model)) })
	return f
}

// each runs fn for every device, at most 4 at a time.
func (f *fleet) each(devs []*Device, fn func(*Device)) {
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			fn(d)
		})
	}
	wg.Wait()
}

// runOnce runs one agent check on every device of devs; the agent's exit
// status is not judged (a rolled-back install exits non-zero), its
// outcome is read from the device's firmware file by the caller.
func (f *fleet) runOnce(devs []*Device) map[string]Result {
	var mu sync.Mutex
	out := map[string]Result{}
	f.each(devs, func(d *Device) {
		args := []string{"--state-dir", d.StateDir, "run", "--once", "--installer", "file", "--target", d.Firmware}
		if f.healthCheck != "" {
			args = append(args, "--health-check", f.healthCheck)
		}
		r := f.env.Run("foster-agent", args...)
		mu.Lock()
		out[d.Serial] = r
		mu.Unlock()
	})
	return out
}

// runs returns whether d's firmware file holds want.
func runs(d *Device, want []byte) bool {
	got, err := os.ReadFile(d.Firmware)
	return err == nil && bytes.Equal(got, want)
}

// installedBy lists the serials of devs running want.
func installedBy(devs []*Device, want []byte) []string {
	var s []string
	for _, d := range devs {
		if runs(d, want) {
			s = append(s, d.Serial)
		}
	}
	slices.Sort(s)
	return s
}

// runUntil runs rounds of checks on devs until done() or the deadline.
func (f *fleet) runUntil(t *testing.T, devs []*Device, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("after 120 s of agent checks: %s does not hold", what)
		}
		for serial, r := range f.runOnce(devs) {
			if strings.Contains(r.Stderr, "panic") {
				t.Fatalf("agent %s panicked:\n%s", serial, r.Stderr)
			}
		}
	}
}

func deviceURN(model, serial string) string { return "urn:foster:device:" + model + ":" + serial }

// startWave creates a rollout of model version with waves and the extra
// flags, and returns it with the devices its signed terms offer it to
// (bucket below the signed share, recomputed here). Should the random seed
// put every device or none in the wave, the rollout is aborted and made
// again (a new seed), so the test always sees some but not all.
func startWave(t *testing.T, env *Env, f *fleet, target string, args ...string) (rolloutJSON, signedTermsJSON, []*Device) {
	t.Helper()
	for range 10 {
		id := strings.TrimSpace(env.Admin(append([]string{"rollout", "create"}, args...)...).Stdout)
		terms := env.awaitTerms(target, 60*time.Second, func(st signedTermsJSON) bool { return st.ID == id })
		var in []*Device
		for _, d := range f.devs {
			if bucket(t, terms.Seed, deviceURN(d.Model, d.Serial)) < terms.Share {
				in = append(in, d)
			}
		}
		if len(in) > 0 && len(in) < len(f.devs) {
			return env.rollout(id), terms, in
		}
		env.Admin("rollout", "abort", id)
	}
	t.Fatal("10 seeds in a row put every device or none in the wave")
	return rolloutJSON{}, signedTermsJSON{}, nil
}

func serials(devs []*Device) []string {
	var s []string
	for _, d := range devs {
		s = append(s, d.Serial)
	}
	slices.Sort(s)
	return s
}

func without(all, some []*Device) []*Device {
	var out []*Device
	for _, d := range all {
		if !slices.Contains(some, d) {
			out = append(out, d)
		}
	}
	return out
}

// TestStagedRolloutOffersExactlyTheSignedWave: 14 devices. A release added
// with --hold is signed but offered to none. A rollout with waves 50,100
// offers it to exactly the devices whose bucket, recomputed here from the
// signed seed and each device's URN, is below the signed share: some, not
// all. Promoting it offers it to every device.
func TestStagedRolloutOffersExactlyTheSignedWave(t *testing.T) {
	env := NewEnvWith(t, []string{"--public-repository"})
	env.Admin("model", "add", "edge-gw")
	f := enrollFleet(env, "W", "edge-gw", 14)

	fw, body := writeFirmware(t, 64<<10)
	out := env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", "--hold", fw).Stdout
	if !strings.Contains(out, "held") {
		t.Fatalf("release add --hold does not say the release is held:\n%s", out)
	}
	const target = "edge-gw/1.0.0/fw.bin"
	if terms, ok := env.signedTerms(target); !ok || terms.Share != 0 || terms.State != "held" {
		t.Fatalf("held release signed with terms %+v (present %v), want share 0", terms, ok)
	}
	for serial, r := range f.runOnce(f.devs) {
		if r.Code != 0 {
			t.Fatalf("agent %s on a held release: exit %d\n%s", serial, r.Code, r.Stderr)
		}
	}
	if got := installedBy(f.devs, body); len(got) != 0 {
		t.Fatalf("a held release was installed by %v", got)
	}

	ro, terms, wave := startWave(t, env, f, target, "--model", "edge-gw", "--version", "1.0.0", "--waves", "50,100")
	if terms.Share != 5000 || ro.State != "running" || ro.Seed != terms.Seed {
		t.Fatalf("rollout %+v signed %+v, want share 5000 and the rollout's seed", ro, terms)
	}
	t.Logf("signed wave: %d of %d devices (%v)", len(wave), len(f.devs), serials(wave))
	// Every device checks until the wave has installed, then once more.
	f.runUntil(t, f.devs, "every device of the signed wave runs 1.0.0", func() bool {
		return len(installedBy(wave, body)) == len(wave)
	})
	f.runOnce(f.devs)
	if got, want := installedBy(f.devs, body), serials(wave); !slices.Equal(got, want) {
		t.Fatalf("installed by %v, want exactly the signed wave %v", got, want)
	}
	st := env.rollout(ro.ID)
	if st.Health.Eligible != len(f.devs) || st.Health.Offered != len(wave) || st.Health.Succeeded != len(wave) || st.Health.Failed != 0 {
		t.Fatalf("rollout health %+v, want %d eligible, %d offered and succeeded, 0 failed", st.Health, len(f.devs), len(wave))
	}

	env.Admin("rollout", "promote", ro.ID)
	env.awaitTerms(target, 60*time.Second, func(st signedTermsJSON) bool { return st.Share == 10000 })
	f.runUntil(t, f.devs, "every device runs 1.0.0 after the promotion", func() bool {
		return len(installedBy(f.devs, body)) == len(f.devs)
	})
	st = env.rollout(ro.ID)
	if st.State != "running" || st.Percent != 100 || st.Health.Succeeded != len(f.devs) || st.Health.Failed != 0 {
		t.Fatalf("after promotion: state %s at %d%%, health %+v", st.State, st.Percent, st.Health)
	}
	// Promoting the last wave completes the rollout; the whole share stays signed.
	env.Admin("rollout", "promote", ro.ID)
	if st := env.rollout(ro.ID); st.State != "completed" || st.Share != 10000 {
		t.Fatalf("promoting the last wave: %s, share %d", st.State, st.Share)
	}
}

// TestFailingWaveHaltsTheRolloutAutomatically: every device's health check
// fails. The devices of the first wave install, roll back and attest; as
// soon as the failures reach the rollout's min-sample, fosterd halts it by
// itself:
// the terms are re-signed with share 0, the halt record names the log
// indices of the failures, and the other devices, checking after the
// halt, are never offered the release (nor can it be promoted).
func TestFailingWaveHaltsTheRolloutAutomatically(t *testing.T) {
	env := NewEnvWith(t, []string{"--public-repository"})
	env.Admin("model", "add", "edge-gw")
	f := enrollFleet(env, "H", "edge-gw", 12)
	f.healthCheck = "exit 1"
	fw, body := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", "--hold", fw)
	const target = "edge-gw/1.0.0/fw.bin"

	// One failure in a wave of failures is above a 0.5 threshold, and
	// min-sample 1 lets it count: the first rollback halts the rollout.
	ro, _, wave := startWave(t, env, f, target, "--model", "edge-gw", "--version", "1.0.0", "--waves", "50,100",
		"--max-failure-rate", "0.5", "--min-sample", "1")
	t.Logf("first wave: %d of %d devices (%v)", len(wave), len(f.devs), serials(wave))

	// Only the wave's devices check, until the rollout has halted.
	var st rolloutJSON
	f.runUntil(t, wave, "the rollout halted after the wave's rollbacks", func() bool {
		st = env.rollout(ro.ID)
		return st.State == "halted"
	})
	if got := installedBy(f.devs, body); len(got) != 0 {
		t.Fatalf("devices %v kept a release whose health check fails", got)
	}
	failed := st.Health.Failed
	// The halt record names the failures that crossed the threshold;
	// rollbacks already in flight may be counted after it.
	if failed < 1 || failed > len(wave) || st.HaltReason == "" || len(st.HaltIndices) < 1 || len(st.HaltIndices) > failed || st.Share != 0 {
		t.Fatalf("halt record: reason %q, log indices %v, %d failed of a wave of %d, share %d", st.HaltReason, st.HaltIndices, failed, len(wave), st.Share)
	}
	show := env.Admin("rollout", "show", ro.ID).Stdout
	if !strings.Contains(show, "halted") || !strings.Contains(show, fmt.Sprint(st.HaltIndices[0])) {
		t.Fatalf("rollout show does not show the halt and its log indices:\n%s", show)
	}
	env.awaitTerms(target, 60*time.Second, func(t signedTermsJSON) bool { return t.ID == ro.ID && t.Share == 0 && t.State == "halted" })
	env.MustFail("halted", "foster", "--instance", env.DataDir, "rollout", "promote", ro.ID)

	// Everyone checks after the halt: nobody is offered the release.
	rest := without(f.devs, wave)
	for range 2 {
		for serial, r := range f.runOnce(f.devs) {
			if r.Code != 0 && slices.Contains(serials(rest), serial) {
				t.Fatalf("agent %s after the halt: exit %d\n%s", serial, r.Code, r.Stderr)
			}
		}
	}
	if got := installedBy(f.devs, body); len(got) != 0 {
		t.Fatalf("devices %v installed a halted release", got)
	}
	if st := env.rollout(ro.ID); st.Health.Failed != failed || st.Health.Succeeded != 0 || st.State != "halted" {
		t.Fatalf("after the halt: %s, health %+v, want the %d failures before it and nothing since", st.State, st.Health, failed)
	}
}

// TestRolloutPromotedOnOneReplicaIsInForceOnTheOther: two fosterd share
// one PostgreSQL database and one bucket. A rollout promoted through A is
// shown by B's API and signed in the repository B serves; a failing
// device attesting to B halts it, and A shows the halt and serves share 0.
func TestRolloutPromotedOnOneReplicaIsInForceOnTheOther(t *testing.T) {
	db := storetest.PostgresDSN(t)
	bucket := s3test.StartServer(t).NewBucket(t)
	const follow = "FOSTER_TEST_SYNC_INTERVAL=250ms"
	a := NewEnvWith(t, []string{"--db", db, "--blobs", bucket, "--public-repository"}, follow)
	b := a.Replica([]string{"--public-repository"}, follow)

	a.Admin("model", "add", "edge-gw")
	dev := a.NewDevice("SN-REP-R", "edge-gw")
	dev.Enroll(a.Token("SN-REP-R", "edge-gw"))
	agentJSON := filepath.Join(dev.StateDir, "agent.json")
	editJSON(t, agentJSON, agentJSON, func(m map[string]any) { m["server"] = b.URL })
	fw, body := writeFirmware(t, 64<<10)
	a.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", "--hold", fw)
	const target = "edge-gw/1.0.0/fw.bin"

	id := strings.TrimSpace(a.Admin("rollout", "create", "--model", "edge-gw", "--version", "1.0.0", "--waves", "1,100",
		"--max-failure-rate", "0.5", "--min-sample", "1").Stdout)
	a.Admin("rollout", "promote", id)
	if st := b.rollout(id); st.State != "running" || st.Percent != 100 || st.Share != 10000 {
		t.Fatalf("B shows the rollout promoted through A as %+v", st)
	}
	b.awaitTerms(target, 60*time.Second, func(st signedTermsJSON) bool { return st.ID == id && st.Share == 10000 })

	// The device (pointed at B) installs, fails its health check and
	// attests to B; B halts the rollout.
	f := &fleet{env: b, devs: []*Device{dev}, healthCheck: "exit 1"}
	f.runUntil(t, f.devs, "the device reported its rollback to B", func() bool { return b.rollout(id).Health.Failed == 1 })
	if runs(dev, body) {
		t.Fatal("the device kept a release whose health check fails")
	}
	deadline := time.Now().Add(60 * time.Second)
	for a.rollout(id).State != "halted" {
		if time.Now().After(deadline) {
			t.Fatalf("A shows the rollout %s 60 s after the failure attested to B", a.rollout(id).State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.awaitTerms(target, 60*time.Second, func(st signedTermsJSON) bool { return st.ID == id && st.Share == 0 && st.State == "halted" })
	b.awaitTerms(target, 60*time.Second, func(st signedTermsJSON) bool { return st.ID == id && st.Share == 0 })
}
