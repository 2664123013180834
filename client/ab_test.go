package client_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/pkg/attest"
)

// abDevice is an enrolled agent on a simulated A/B device.
type abDevice struct {
	*device
	sim        *clienttest.SimDevice
	health     []string
	maxReboots int
}

func newABDevice(t *testing.T, srv *clienttest.Server) *abDevice {
	t.Helper()
	d := newDevice(t, srv)
	sim := clienttest.NewSimDevice(t, filepath.Join(t.TempDir(), "sim"), clienttest.SimImage("1.0.0", clienttest.Healthy, 20000))
	return &abDevice{device: d, sim: sim, health: sim.HealthCommand()}
}

func (d *abDevice) agent() *client.Agent {
	d.t.Helper()
	fc := &client.FileConfig{Installer: "ab", AB: d.sim.ABConfig()}
	inst, err := fc.BuildInstaller(d.dir)
	if err != nil {
		d.t.Fatal(err)
	}
	a, err := client.New(client.Config{
		StateDir:      d.dir,
		Installer:     inst,
		Logger:        slog.New(slog.NewTextHandler(d.logs, nil)),
		StallTimeout:  2 * time.Second,
		HealthCheck:   d.health,
		RebootCommand: d.sim.RebootCommand(),
		BootIDFile:    d.sim.BootIDFile,
		MaxReboots:    d.maxReboots,
	})
	if err != nil {
		d.t.Fatal(err)
	}
	return a
}

func (d *abDevice) runOnce() (*client.Report, error) {
	d.t.Helper()
	return d.agent().RunOnce(context.Background())
}

// boot power-cycles the simulated device and returns the booted slot.
func (d *abDevice) boot() string {
	d.t.Helper()
	slot, err := d.sim.Boot()
	if err != nil {
		d.t.Fatalf("boot: %v\n%s", err, d.logs)
	}
	if len(d.sim.Violations) > 0 {
		d.t.Fatalf("booted an invalid image: %v", d.sim.Violations)
	}
	return slot
}

func (d *abDevice) publish(version, behaviour string, counter int64) (string, []byte) {
	d.t.Helper()
	img := clienttest.SimImage(version, behaviour, 30000)
	d.sim.AddValid(img, behaviour)
	return publish(d.t, d.srv, model, version, counter, img), img
}

func TestABInstallRebootHealthCheckCommit(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	name, img := d.publish("1.1.0", clienttest.Healthy, 1)

	rep, err := d.runOnce()
	if err != nil || !rep.Rebooting || rep.Phase != string(journal.PhaseRebooting) || !d.sim.RebootRequested() {
		t.Fatalf("install: %+v %v\n%s", rep, err, d.logs)
	}
	// The trial is armed the U-Boot way; the running slot is untouched.
	if env := d.sim.Env(); env["boot_part"] != "b" || env["upgrade_available"] != "1" || env["bootcount"] != "0" {
		t.Fatalf("env %v", env)
	}
	if len(srv.Received()) != 0 {
		t.Fatal("attested before the new image ran")
	}

	if slot := d.boot(); slot != "b" {
		t.Fatalf("booted %s", slot)
	}
	rep, err = d.runOnce()
	if err != nil || rep.Installed == nil || rep.Installed.Name != name || rep.Rebooting {
		t.Fatalf("after reboot: %+v %v\n%s", rep, err, d.logs)
	}
	if env := d.sim.Env(); env["boot_part"] != "b" || env["upgrade_available"] != "0" || env["bootcount"] != "0" {
		t.Fatalf("not committed: env %v", env)
	}
	got := srv.Received()
	if len(got) != 1 || got[0].Install.Outcome != attest.OutcomeCommitted || got[0].Install.BootCounter != 1 ||
		got[0].Install.New.SHA256 != sha256hex(img) {
		t.Fatalf("attestations %+v", got)
	}
	if st := d.state(); st.Phase != journal.PhaseAttested || st.Installed.Name != name {
		t.Fatalf("state %+v", st)
	}
	// Stays committed across reboots.
	if d.boot() != "b" {
		t.Fatal("did not stay on b")
	}
	if rep, err := d.runOnce(); err != nil || !rep.UpToDate {
		t.Fatalf("%+v %v", rep, err)
	}

	// The next release goes to slot a.
	d.publish("1.2.0", clienttest.Healthy, 2)
	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	if d.boot() != "a" {
		t.Fatal("second update not in slot a")
	}
	if rep, err := d.runOnce(); err != nil || rep.Installed == nil || rep.Previous == nil || rep.Previous.Name != name {
		t.Fatalf("%+v %v", rep, err)
	}
}

func TestABHealthCheckFailureRollsBack(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	name, img := d.publish("1.1.0", clienttest.Unhealthy, 1)

	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	d.boot()
	rep, err := d.runOnce()
	if err != nil || !rep.Rebooting || rep.Phase != string(journal.PhaseRolledBack) {
		t.Fatalf("health check: %+v %v\n%s", rep, err, d.logs)
	}
	if env := d.sim.Env(); env["boot_part"] != "a" || env["upgrade_available"] != "0" {
		t.Fatalf("env %v", env)
	}
	if d.boot() != "a" {
		t.Fatal("not back on a")
	}
	rep, err = d.runOnce()
	if !errors.Is(err, client.ErrRolledBack) || rep.RolledBack == nil || rep.RolledBack.Name != name {
		t.Fatalf("%+v %v", rep, err)
	}
	got := srv.Received()
	if len(got) != 1 || got[0].Install.Outcome != attest.OutcomeRolledBack || !strings.Contains(got[0].Install.Reason, "health check failed") ||
		got[0].Install.New.SHA256 != sha256hex(img) || got[0].Install.Previous != nil {
		t.Fatalf("attestations %+v", got[0].Install)
	}
	// The rolled-back image is not tried again; a fixed release is.
	if rep, err := d.runOnce(); err != nil || !rep.UpToDate {
		t.Fatalf("retried a rolled-back image: %+v %v", rep, err)
	}
	d.publish("1.1.1", clienttest.Healthy, 2)
	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	d.boot()
	if rep, err := d.runOnce(); err != nil || rep.Installed == nil {
		t.Fatalf("%+v %v", rep, err)
	}
	if got := srv.Received(); len(got) != 2 || got[1].Install.Outcome != attest.OutcomeCommitted || got[1].Install.Sequence != 2 {
		t.Fatalf("%d attestations", len(got))
	}
	if testing.Verbose() {
		t.Logf("agent logs:\n%s", d.logs)
	}
}

// An image that never comes up: the bootloader counts the failed boots and
// falls back; the agent, started by the old image, attests the rollback.
func TestABBootloaderFallsBackFromImageThatDoesNotBoot(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	d.publish("1.1.0", clienttest.Panics, 1)
	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	if slot := d.boot(); slot != "a" {
		t.Fatalf("booted %s", slot)
	}
	rep, err := d.runOnce()
	if !errors.Is(err, client.ErrRolledBack) || rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	got := srv.Received()
	if len(got) != 1 || got[0].Install.Outcome != attest.OutcomeRolledBack || !strings.Contains(got[0].Install.Reason, "did not come up") {
		t.Fatalf("%+v", got)
	}
	if env := d.sim.Env(); env["boot_part"] != "a" || env["upgrade_available"] != "0" || env["bootcount"] != "0" {
		t.Fatalf("env %v", env)
	}
}

// A bootloader without a fallback command: the agent notices the boot
// counter past the limit itself and rolls back.
func TestABBootCountOverflowRollsBack(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	d.sim.NoFallback = true
	d.publish("1.1.0", clienttest.Healthy, 1)
	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
	// Three power cuts before the agent ever ran in the new image.
	for range 3 {
		d.boot()
	}
	rep, err := d.runOnce()
	if err != nil || !rep.Rebooting || rep.Phase != string(journal.PhaseRolledBack) {
		t.Fatalf("%+v %v\n%s", rep, err, d.logs)
	}
	if d.boot() != "a" {
		t.Fatal("not back on a")
	}
	if _, err := d.runOnce(); !errors.Is(err, client.ErrRolledBack) {
		t.Fatal(err)
	}
	if got := srv.Received(); len(got) != 1 || !strings.Contains(got[0].Install.Reason, "boot count 3 exceeded the boot limit 2") {
		t.Fatalf("%+v", got[0].Install)
	}
}

// A reboot that is requested but never happens is asked for again, a
// bounded number of times; then the trial is disarmed.
func TestABRebootThatNeverHappens(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	d.maxReboots = 2
	d.publish("1.1.0", clienttest.Healthy, 1)
	for i := range 2 {
		if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
			t.Fatalf("run %d: %+v %v", i, rep, err)
		}
	}
	rep, err := d.runOnce()
	if !errors.Is(err, client.ErrRolledBack) {
		t.Fatalf("%+v %v\n%s", rep, err, d.logs)
	}
	if env := d.sim.Env(); env["boot_part"] != "a" || env["upgrade_available"] != "0" {
		t.Fatalf("trial still armed: %v", env)
	}
	if got := srv.Received(); len(got) != 1 || !strings.Contains(got[0].Install.Reason, "did not reboot") {
		t.Fatalf("%+v", got)
	}
	if d.boot() != "a" {
		t.Fatal("booted the new slot")
	}
}

// The slot being written is never bootable: an earlier trial left armed
// (say, by a technician) is disarmed before the download overwrites it.
func TestABDisarmsStaleTrialBeforeWritingSlot(t *testing.T) {
	srv := newEnv(t, false)
	d := newABDevice(t, srv)
	env := d.sim.Env()
	env["boot_part"], env["upgrade_available"] = "b", "1"
	var b bytes.Buffer
	for k, v := range env {
		b.WriteString(k + "=" + v + "\n")
	}
	clienttest.WriteFile(t, filepath.Dir(d.sim.EnvFile), filepath.Base(d.sim.EnvFile), b.Bytes())
	srv.Lock(func() {
		srv.Repo.AddTarget(t, model+"/1.1.0/firmware.bin", clienttest.SimImage("1.1.0", clienttest.Healthy, 30000),
			clienttest.Custom{Model: model, Version: "1.1.0", ReleaseCounter: 1})
		srv.Repo.Publish(t)
		srv.TargetHook = func(w http.ResponseWriter, r *http.Request, body []byte) {
			if e := d.sim.Env(); e["boot_part"] != "a" || e["upgrade_available"] != "0" {
				t.Errorf("slot b written while the bootloader would boot it: %v", e)
			}
			clienttest.ServeRange(w, r, body)
		}
	})
	d.sim.AddValid(clienttest.SimImage("1.1.0", clienttest.Healthy, 30000), clienttest.Healthy)
	if rep, err := d.runOnce(); err != nil || !rep.Rebooting {
		t.Fatalf("%+v %v", rep, err)
	}
}
