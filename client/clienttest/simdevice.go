package clienttest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/foster-ota/foster/client/internal/install"
)

// Behaviour of a simulated firmware image once booted.
const (
	Healthy   = "healthy"   // boots, passes the health check
	Unhealthy = "unhealthy" // boots, fails the health check
	Panics    = "panics"    // does not come up (kernel panic, watchdog reset)
)

// SimImage returns a firmware image of size bytes that the simulated device
// recognises: its first line names the version and the behaviour.
func SimImage(version, behaviour string, size int) []byte {
	head := fmt.Sprintf("FOSTER-SIM-IMAGE v=%s b=%s\n", version, behaviour)
	b := make([]byte, max(size, len(head)))
	copy(b, head)
	for i := len(head); i < len(b); i++ {
		b[i] = byte(i*31 + len(version)*7)
	}
	return b
}

// SimBehaviour parses an image made by SimImage ("" if it is not one).
func SimBehaviour(img []byte) (version, behaviour string) {
	line, _, _ := bytes.Cut(img, []byte("\n"))
	rest, ok := strings.CutPrefix(string(line), "FOSTER-SIM-IMAGE ")
	if !ok {
		return "", ""
	}
	for _, f := range strings.Fields(rest) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			version = v
		}
		if b, ok := strings.CutPrefix(f, "b="); ok {
			behaviour = b
		}
	}
	return version, behaviour
}

// SimDevice is a simulated A/B device: two slot files, a bootloader
// environment file, and a bootloader that honours U-Boot's boot counting
// (while upgrade_available=1 every boot increments bootcount; past
// bootlimit it boots the other slot and clears upgrade_available). Booting
// writes the kernel command line (foster.slot=) and a new boot id. Safe for
// concurrent use by one test and the agent processes it runs (state is on
// disk; the mutex guards the in-memory record).
type SimDevice struct {
	Dir              string
	Slots            map[string]string
	EnvFile, Cmdline string
	BootIDFile       string
	RebootFlag       string
	BootLimit        int
	// NoFallback simulates a bootloader without altbootcmd (the agent must
	// notice the overflow itself).
	NoFallback bool

	mu         sync.Mutex
	valid      map[string]string // sha256 hex -> behaviour
	boots      int
	Violations []string
}

// NewSimDevice creates a device running factory from slot a; slot b holds
// garbage (never a valid image).
func NewSimDevice(t testing.TB, dir string, factory []byte) *SimDevice {
	t.Helper()
	d := &SimDevice{
		Dir:        dir,
		Slots:      map[string]string{"a": filepath.Join(dir, "slot-a"), "b": filepath.Join(dir, "slot-b")},
		EnvFile:    filepath.Join(dir, "bootenv"),
		Cmdline:    filepath.Join(dir, "cmdline"),
		BootIDFile: filepath.Join(dir, "boot_id"),
		RebootFlag: filepath.Join(dir, "reboot-requested"),
		BootLimit:  2,
		valid:      map[string]string{},
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, b := SimBehaviour(factory)
	d.AddValid(factory, b)
	must(t, os.WriteFile(d.Slots["a"], factory, 0o644))
	must(t, os.WriteFile(d.Slots["b"], bytes.Repeat([]byte{0xde, 0xad}, 1000), 0o644))
	must(t, os.WriteFile(d.EnvFile, []byte("boot_part=a\nbootlimit="+strconv.Itoa(d.BootLimit)+"\n"), 0o644))
	if _, err := d.Boot(); err != nil {
		t.Fatal(err)
	}
	return d
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// AddValid registers an image the bootloader can boot, with its behaviour.
func (d *SimDevice) AddValid(img []byte, behaviour string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sum := sha256.Sum256(img)
	d.valid[hex.EncodeToString(sum[:])] = behaviour
}

// ABConfig is the agent's A/B installer configuration for this device.
func (d *SimDevice) ABConfig() install.ABConfig {
	return install.ABConfig{
		Slots:   d.Slots,
		Env:     install.EnvConfig{Backend: "file", File: d.EnvFile},
		Cmdline: d.Cmdline,
	}
}

// Env reads the bootloader environment.
func (d *SimDevice) Env() map[string]string {
	b, _ := os.ReadFile(d.EnvFile)
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

func (d *SimDevice) writeEnv(env map[string]string) error {
	var b strings.Builder
	for _, k := range []string{"boot_part", "bootcount", "bootlimit", "upgrade_available"} {
		if v, ok := env[k]; ok {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	for k, v := range env {
		switch k {
		case "boot_part", "bootcount", "bootlimit", "upgrade_available":
		default:
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	tmp := d.EnvFile + ".boot"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, d.EnvFile)
}

// ErrBricked: no slot the bootloader would try can boot.
var ErrBricked = errors.New("device bricked")

// Boot powers the device on: the bootloader picks a slot (counting trial
// boots, falling back past the limit) and boots it. An image that panics
// resets the device (watchdog), which boots again. Booting an image that is
// not a valid one is recorded in Violations (and treated as a panic).
func (d *SimDevice) Boot() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	os.Remove(d.RebootFlag)
	for range 20 {
		env := d.Env()
		if env["upgrade_available"] == "1" {
			count, _ := strconv.Atoi(env["bootcount"])
			count++
			env["bootcount"] = strconv.Itoa(count)
			limit, err := strconv.Atoi(env["bootlimit"])
			if err != nil {
				limit = d.BootLimit
			}
			if count > limit && !d.NoFallback {
				// altbootcmd: boot the other slot for good.
				env["boot_part"] = other(env["boot_part"])
				env["upgrade_available"] = "0"
			}
			if err := d.writeEnv(env); err != nil {
				return "", err
			}
		}
		slot := env["boot_part"]
		if slot == "" {
			slot = "a"
		}
		img, err := os.ReadFile(d.Slots[slot])
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(img)
		behaviour, ok := d.valid[hex.EncodeToString(sum[:])]
		if !ok {
			d.Violations = append(d.Violations, fmt.Sprintf("boot %d: slot %s holds no valid image (%d bytes)", d.boots+1, slot, len(img)))
		}
		d.boots++
		if !ok || behaviour == Panics {
			if env["upgrade_available"] != "1" {
				return "", fmt.Errorf("%w: slot %s does not boot and no fallback is armed", ErrBricked, slot)
			}
			continue // watchdog reset
		}
		if err := os.WriteFile(d.Cmdline, []byte("console=ttyS0 root="+d.Slots[slot]+" foster.slot="+slot+"\n"), 0o644); err != nil {
			return "", err
		}
		if err := os.WriteFile(d.BootIDFile, []byte(fmt.Sprintf("sim-boot-%d\n", d.boots)), 0o644); err != nil {
			return "", err
		}
		return slot, nil
	}
	return "", fmt.Errorf("%w: boot loop", ErrBricked)
}

func other(slot string) string {
	if slot == "b" {
		return "a"
	}
	return "b"
}

// Booted returns the slot the running system booted from and its image.
func (d *SimDevice) Booted() (slot string, img []byte, err error) {
	b, err := os.ReadFile(d.Cmdline)
	if err != nil {
		return "", nil, err
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "foster.slot="); ok {
			slot = v
		}
	}
	img, err = os.ReadFile(d.Slots[slot])
	return slot, img, err
}

// RebootRequested reports whether the agent asked for a reboot since the last boot.
func (d *SimDevice) RebootRequested() bool {
	_, err := os.Stat(d.RebootFlag)
	return err == nil
}

// RebootCommand is the agent's reboot command for this device.
func (d *SimDevice) RebootCommand() []string {
	return []string{"/bin/sh", "-c", "touch '" + d.RebootFlag + "'"}
}

// HealthCommand is a health check that passes unless the running image is Unhealthy.
func (d *SimDevice) HealthCommand() []string {
	return []string{"/bin/sh", "-c", "! grep -q 'b=" + Unhealthy + "' \"$FOSTER_IMAGE\""}
}
