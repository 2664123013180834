package install

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/foster-ota/foster/client/internal/killpoint"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// U-Boot's boot-count variables (CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV):
// while upgrade_available=1 the bootloader increments bootcount on every
// boot and runs altbootcmd (boot the other slot) once bootcount > bootlimit.
const (
	VarUpgradeAvailable = "upgrade_available"
	VarBootCount        = "bootcount"
	VarBootLimit        = "bootlimit"
	// DefaultBootVar selects the slot to boot.
	DefaultBootVar = "boot_part"
)

// maxEnvSize bounds a bootloader environment read.
const maxEnvSize = 1 << 20 // bytes

// BootEnv is a bootloader environment.
type BootEnv interface {
	// Get returns every variable.
	Get(ctx context.Context) (map[string]string, error)
	// Set sets vars in one write where the backend allows it; "" unsets.
	Set(ctx context.Context, vars map[string]string) error
}

// EnvConfig selects and configures a bootloader environment backend.
type EnvConfig struct {
	// Backend is "uboot" (fw_printenv/fw_setenv), "grub" (grub-editenv) or
	// "file" (a name=value file, for tests and simulators).
	Backend string `json:"backend"`
	// File is the GRUB environment block (default /boot/grub/grubenv) or the plain file.
	File string `json:"file,omitempty"`
	// Printenv and Setenv are the U-Boot tools with their arguments
	// (default ["fw_printenv"] and ["fw_setenv"]; add "-c", "/etc/fw_env.config" as needed).
	Printenv []string `json:"fw_printenv,omitempty"`
	Setenv   []string `json:"fw_setenv,omitempty"`
	// Editenv is the grub-editenv tool (default "grub-editenv").
	Editenv string `json:"grub_editenv,omitempty"`
}

// NewBootEnv returns the configured backend.
func NewBootEnv(c EnvConfig, cmd Command) (BootEnv, error) {
	switch c.Backend {
	case "uboot":
		e := &UBootEnv{Printenv: c.Printenv, Setenv: c.Setenv, cmd: cmd}
		if len(e.Printenv) == 0 {
			e.Printenv = []string{"fw_printenv"}
		}
		if len(e.Setenv) == 0 {
			e.Setenv = []string{"fw_setenv"}
		}
		return e, nil
	case "grub":
		e := &GRUBEnv{Editenv: c.Editenv, File: c.File, cmd: cmd}
		if e.Editenv == "" {
			e.Editenv = "grub-editenv"
		}
		if e.File == "" {
			e.File = "/boot/grub/grubenv"
		}
		return e, nil
	case "file":
		if c.File == "" {
			return nil, configErrorf("boot env backend %q needs a file", c.Backend)
		}
		return &FileEnv{Path: c.File}, nil
	default:
		return nil, configErrorf("unknown boot env backend %q (want uboot, grub or file)", c.Backend)
	}
}

// parseEnv reads name=value lines; other lines are ignored.
func parseEnv(b []byte) map[string]string {
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxEnvSize)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && k != "" && !strings.ContainsAny(k, " \t") {
			vars[k] = v
		}
	}
	return vars
}

func validVar(k, v string) error {
	if k == "" || strings.ContainsAny(k, "= \t\n\r") {
		return fmt.Errorf("bad boot env variable name %q", k)
	}
	if strings.ContainsAny(v, "\n\r") {
		return fmt.Errorf("boot env variable %s: value contains a newline", k)
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// FileEnv is a bootloader environment in a plain name=value file, written
// atomically. Tests and the power-loss simulator use it with a simulated
// bootloader that honours the U-Boot variables.
type FileEnv struct{ Path string }

func (e *FileEnv) Get(context.Context) (map[string]string, error) {
	b, err := os.ReadFile(e.Path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) > maxEnvSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", e.Path, maxEnvSize)
	}
	return parseEnv(b), nil
}

func (e *FileEnv) Set(ctx context.Context, vars map[string]string) error {
	cur, err := e.Get(ctx)
	if err != nil {
		return err
	}
	for k, v := range vars {
		if err := validVar(k, v); err != nil {
			return err
		}
		if v == "" {
			delete(cur, k)
		} else {
			cur[k] = v
		}
	}
	var b strings.Builder
	for _, k := range sortedKeys(cur) {
		fmt.Fprintf(&b, "%s=%s\n", k, cur[k])
	}
	killpoint.Hit("bootenv-before-set")
	if err := atomicfile.WriteFile(e.Path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	killpoint.Hit("bootenv-set")
	return nil
}

// UBootEnv drives U-Boot's environment with fw_printenv and fw_setenv
// (u-boot-tools or libubootenv). Several variables are set with one
// `fw_setenv -s SCRIPT` call: with a redundant environment that is a single
// atomic write.
type UBootEnv struct {
	Printenv, Setenv []string
	cmd              Command
}

func (e *UBootEnv) Get(ctx context.Context) (map[string]string, error) {
	out, err := e.cmd.Output(ctx, e.Printenv)
	if err != nil {
		return nil, fmt.Errorf("reading U-Boot environment: %w", err)
	}
	return parseEnv(out), nil
}

func (e *UBootEnv) Set(ctx context.Context, vars map[string]string) error {
	var script strings.Builder
	for _, k := range sortedKeys(vars) {
		if err := validVar(k, vars[k]); err != nil {
			return err
		}
		if vars[k] == "" {
			script.WriteString(k + "\n") // a name alone deletes the variable
		} else {
			fmt.Fprintf(&script, "%s %s\n", k, vars[k])
		}
	}
	f, err := os.CreateTemp("", "foster-fw_setenv-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(script.String()); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	killpoint.Hit("bootenv-before-set")
	argv := append(slices.Clone(e.Setenv), "-s", f.Name())
	if _, err := e.cmd.Run(ctx, argv); err != nil {
		return fmt.Errorf("writing U-Boot environment: %w", err)
	}
	killpoint.Hit("bootenv-set")
	return nil
}

// GRUBEnv drives a GRUB environment block with grub-editenv. GRUB has no
// built-in boot counter: grub.cfg must implement the U-Boot semantics
// (docs/AGENT.md has the snippet).
type GRUBEnv struct {
	Editenv, File string
	cmd           Command
}

func (e *GRUBEnv) Get(ctx context.Context) (map[string]string, error) {
	out, err := e.cmd.Output(ctx, []string{e.Editenv, e.File, "list"})
	if err != nil {
		return nil, fmt.Errorf("reading GRUB environment: %w", err)
	}
	return parseEnv(out), nil
}

func (e *GRUBEnv) Set(ctx context.Context, vars map[string]string) error {
	set := []string{e.Editenv, e.File, "set"}
	unset := []string{e.Editenv, e.File, "unset"}
	for _, k := range sortedKeys(vars) {
		if err := validVar(k, vars[k]); err != nil {
			return err
		}
		if vars[k] == "" {
			unset = append(unset, k)
		} else {
			set = append(set, k+"="+vars[k])
		}
	}
	killpoint.Hit("bootenv-before-set")
	if len(set) > 3 {
		if _, err := e.cmd.Run(ctx, set); err != nil {
			return fmt.Errorf("writing GRUB environment: %w", err)
		}
	}
	if len(unset) > 3 {
		if _, err := e.cmd.Run(ctx, unset); err != nil {
			return fmt.Errorf("writing GRUB environment: %w", err)
		}
	}
	killpoint.Hit("bootenv-set")
	return nil
}

// BootedSlot finds the slot the running system booted from on the kernel
// command line: a KEY=SLOT argument (default foster.slot=; RAUC's
// rauc.slot= works too), or else root=DEVICE matched against the slot devices.
type BootedSlot struct {
	Cmdline string            // default /proc/cmdline
	Key     string            // default foster.slot
	Slots   map[string]string // slot name -> device
}

// Detect returns the booted slot's name.
func (b BootedSlot) Detect() (string, error) {
	path := cmdlinePath(b.Cmdline)
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading kernel command line: %w", err)
	}
	if len(raw) > 64<<10 {
		return "", fmt.Errorf("%s is implausibly large", path)
	}
	key := b.Key
	if key == "" {
		key = "foster.slot"
	}
	var root string
	for _, tok := range strings.Fields(string(raw)) {
		k, v, _ := strings.Cut(tok, "=")
		switch k {
		case key:
			if _, ok := b.Slots[v]; !ok {
				return "", fmt.Errorf("kernel command line says %s=%s, which is not a configured slot", key, v)
			}
			return v, nil
		case "root":
			root = v
		}
	}
	if root != "" {
		for name, dev := range b.Slots {
			if filepath.Clean(dev) == filepath.Clean(root) {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("cannot tell the booted slot: no %s= on the kernel command line and root=%q is not a slot", key, root)
}

func cmdlinePath(p string) string {
	if p == "" {
		return "/proc/cmdline"
	}
	return p
}
