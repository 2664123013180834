package install

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
)

// ABConfig configures the A/B installer.
type ABConfig struct {
	// Slots maps exactly two slot names (the values of BootVar) to their
	// devices or files, e.g. {"a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3"}.
	Slots map[string]string `json:"slots"`
	// Env is the bootloader environment.
	Env EnvConfig `json:"env"`
	// BootVar selects the slot the bootloader boots; default "boot_part".
	BootVar string `json:"boot_var,omitempty"`
	// BootLimit, when positive, is written as bootlimit when a trial is armed;
	// otherwise the bootloader's own bootlimit applies.
	BootLimit int64 `json:"bootlimit,omitempty"`
	// Cmdline and SlotKey tell the booted slot (see BootedSlot).
	Cmdline string `json:"cmdline,omitempty"`
	SlotKey string `json:"slot_key,omitempty"`
}

// AB writes the image to the slot that is not running and arms a one-time
// trial boot of it through the bootloader environment, with U-Boot's boot
// counting semantics: boot_var=<new> upgrade_available=1 bootcount=0. After
// the reboot the agent health-checks and commits (upgrade_available=0) or
// rolls back (boot_var=<old>). If the new image never comes up, the
// bootloader's boot counter exceeds bootlimit and it falls back on its own.
type AB struct {
	cfg    ABConfig
	env    BootEnv
	booted BootedSlot
}

// NewAB returns an A/B installer.
func NewAB(cfg ABConfig, cmd Command) (*AB, error) {
	if len(cfg.Slots) != 2 {
		return nil, configErrorf("ab installer needs exactly two slots, got %d", len(cfg.Slots))
	}
	for name, dev := range cfg.Slots {
		if name == "" || dev == "" {
			return nil, configErrorf("ab installer: slot names and devices must not be empty")
		}
		if err := validVar("slot", name); err != nil {
			return nil, configErrorf("ab installer: slot name %q: %v", name, err)
		}
	}
	if cfg.BootVar == "" {
		cfg.BootVar = DefaultBootVar
	}
	env, err := NewBootEnv(cfg.Env, cmd)
	if err != nil {
		return nil, err
	}
	return &AB{cfg: cfg, env: env, booted: BootedSlot{Cmdline: cfg.Cmdline, Key: cfg.SlotKey, Slots: cfg.Slots}}, nil
}

func (a *AB) Name() string  { return "ab" }
func (a *AB) Reboots() bool { return true }

func (a *AB) other(slot string) string {
	names := make([]string, 0, 2)
	for n := range a.cfg.Slots {
		names = append(names, n)
	}
	sort.Strings(names)
	if names[0] == slot {
		return names[1]
	}
	return names[0]
}

// Prepare picks the slot that is not running and makes sure the bootloader
// boots the running one, so the slot about to be overwritten is never booted
// half-written, even if an earlier trial was left armed.
func (a *AB) Prepare(ctx context.Context) (Dest, error) {
	booted, err := a.booted.Detect()
	if err != nil {
		return Dest{}, err
	}
	target := a.other(booted)
	dev := a.cfg.Slots[target]
	if fi, err := os.Stat(dev); err != nil {
		return Dest{}, fmt.Errorf("ab installer: slot %s: %w", target, err)
	} else if fi.IsDir() {
		return Dest{}, fmt.Errorf("ab installer: slot %s (%s) is a directory", target, dev)
	}
	if err := a.ensure(ctx, map[string]string{a.cfg.BootVar: booted, VarUpgradeAvailable: "0"}); err != nil {
		return Dest{}, err
	}
	return Dest{Path: dev, InPlace: true, From: booted, To: target}, nil
}

// ensure sets vars unless the environment already has them (so repeating a
// step does not reset the boot counter of a trial in progress).
func (a *AB) ensure(ctx context.Context, vars map[string]string) error {
	cur, err := a.env.Get(ctx)
	if err != nil {
		return err
	}
	change := map[string]string{}
	for k, v := range vars {
		if cur[k] != v && !(v == "0" && cur[k] == "") {
			change[k] = v
		}
	}
	if len(change) == 0 {
		return nil
	}
	return a.env.Set(ctx, change)
}

// Install arms the trial boot of the new slot.
func (a *AB) Install(ctx context.Context, p Plan) error {
	if p.To == "" || a.cfg.Slots[p.To] == "" || p.From == p.To {
		return fmt.Errorf("ab installer: bad plan from %q to %q", p.From, p.To)
	}
	cur, err := a.env.Get(ctx)
	if err != nil {
		return err
	}
	if cur[a.cfg.BootVar] == p.To && cur[VarUpgradeAvailable] == "1" {
		return nil // armed already; keep the boot counter running
	}
	vars := map[string]string{a.cfg.BootVar: p.To, VarUpgradeAvailable: "1", VarBootCount: "0"}
	if a.cfg.BootLimit > 0 {
		vars[VarBootLimit] = strconv.FormatInt(a.cfg.BootLimit, 10)
	}
	return a.env.Set(ctx, vars)
}

func (a *AB) Running(_ context.Context, p Plan) (Running, error) {
	booted, err := a.booted.Detect()
	if err != nil {
		return RunningUnknown, err
	}
	switch booted {
	case p.To:
		return RunningNew, nil
	case p.From:
		return RunningOld, nil
	}
	return RunningUnknown, nil
}

func (a *AB) Status(ctx context.Context) (BootStatus, error) {
	cur, err := a.env.Get(ctx)
	if err != nil {
		return BootStatus{}, err
	}
	st := BootStatus{Trial: cur[VarUpgradeAvailable] == "1"}
	st.BootCount, _ = strconv.ParseInt(cur[VarBootCount], 10, 64)
	st.BootLimit, _ = strconv.ParseInt(cur[VarBootLimit], 10, 64)
	return st, nil
}

// Commit makes the new slot permanent.
func (a *AB) Commit(ctx context.Context, p Plan) error {
	return a.ensure(ctx, map[string]string{a.cfg.BootVar: p.To, VarUpgradeAvailable: "0", VarBootCount: "0"})
}

// Rollback points the bootloader back at the old slot for good.
func (a *AB) Rollback(ctx context.Context, p Plan) error {
	if p.From == "" {
		return fmt.Errorf("ab installer: no previous slot recorded")
	}
	return a.ensure(ctx, map[string]string{a.cfg.BootVar: p.From, VarUpgradeAvailable: "0", VarBootCount: "0"})
}

// Cleanup keeps the slot: it is the image, or the next download's target.
func (a *AB) Cleanup(Plan) {}
