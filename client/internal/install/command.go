package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// CommandConfig configures the installers that hand the verified image to
// another program: rauc, swupdate and script.
type CommandConfig struct {
	// Install is the command that installs the image; {image} is replaced by
	// its path (also in $FOSTER_IMAGE). Defaults: rauc ["rauc", "install",
	// "{image}"], swupdate ["swupdate", "-i", "{image}"]; required for script.
	// It may be run again after a power cut and must cope with that.
	Install []string `json:"install,omitempty"`
	// Commit and Rollback run after the health check (optional; rauc defaults
	// to `rauc status mark-good` / `rauc status mark-bad`).
	Commit   []string `json:"commit,omitempty"`
	Rollback []string `json:"rollback,omitempty"`
	// Reboot: the new image runs only after a reboot (default true for rauc
	// and swupdate, false for script).
	Reboot *bool `json:"reboot,omitempty"`
	// Dir is where images are downloaded (default: the state dir's download/).
	Dir string `json:"download_dir,omitempty"`
	// Cmdline and SlotKey tell the booted slot from the kernel command line
	// (swupdate, script): when set, a rollback by the bootloader is noticed.
	// rauc asks `rauc status` instead.
	Cmdline string `json:"cmdline,omitempty"`
	SlotKey string `json:"slot_key,omitempty"`
}

// Commandline is an installer that runs external commands.
type Commandline struct {
	name             string
	install          []string
	commit, rollback []string
	reboot           bool
	dir              string
	booted           func(ctx context.Context) (string, error)
	cmd              Command
}

// NewCommand returns the rauc, swupdate or script installer.
func NewCommand(name string, c CommandConfig, defaultDir string, cmd Command) (*Commandline, error) {
	in := &Commandline{name: name, install: c.Install, commit: c.Commit, rollback: c.Rollback, dir: c.Dir, cmd: cmd}
	if in.dir == "" {
		in.dir = defaultDir
	}
	switch name {
	case "rauc":
		in.reboot = true
		if len(in.install) == 0 {
			in.install = []string{"rauc", "install", "{image}"}
		}
		if len(in.commit) == 0 {
			in.commit = []string{"rauc", "status", "mark-good"}
		}
		if len(in.rollback) == 0 {
			in.rollback = []string{"rauc", "status", "mark-bad"}
		}
		in.booted = in.raucBooted
	case "swupdate":
		in.reboot = true
		if len(in.install) == 0 {
			in.install = []string{"swupdate", "-i", "{image}"}
		}
	case "script":
		if len(in.install) == 0 {
			return nil, configErrorf("script installer needs an install command")
		}
	default:
		return nil, configErrorf("unknown command installer %q", name)
	}
	if c.Reboot != nil {
		in.reboot = *c.Reboot
	}
	if in.booted == nil && (c.Cmdline != "" || c.SlotKey != "") {
		bs := BootedSlot{Cmdline: c.Cmdline, Key: c.SlotKey}
		in.booted = func(context.Context) (string, error) { return bs.detectAny() }
	}
	if in.dir == "" {
		return nil, configErrorf("%s installer needs a download directory", name)
	}
	return in, nil
}

func (c *Commandline) Name() string  { return c.name }
func (c *Commandline) Reboots() bool { return c.reboot }

func (c *Commandline) Status(context.Context) (BootStatus, error) { return BootStatus{}, nil }

// Prepare downloads into the download dir; the verified image keeps the
// target's base name (bundle tools look at the extension, e.g. .raucb).
func (c *Commandline) Prepare(ctx context.Context) (Dest, error) {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return Dest{}, fmt.Errorf("%s installer: %w", c.name, err)
	}
	d := Dest{Path: filepath.Join(c.dir, "image.unverified"), Final: filepath.Join(c.dir, "image")}
	if c.booted != nil {
		from, err := c.booted(ctx)
		if err != nil {
			return Dest{}, err
		}
		d.From = from
	}
	return d, nil
}

// FinalName returns where Prepare's image goes for the target name.
func FinalName(d Dest, target string) Dest {
	if d.Final != "" {
		d.Final = filepath.Join(filepath.Dir(d.Final), path.Base(target))
	}
	return d
}

func (c *Commandline) Install(ctx context.Context, p Plan) error {
	if _, err := os.Stat(p.Image); err != nil {
		return fmt.Errorf("%s installer: %w", c.name, err)
	}
	if _, err := c.cmd.Run(ctx, expand(c.install, p), planEnv(p)...); err != nil {
		return fmt.Errorf("%s installer: %w", c.name, err)
	}
	return nil
}

// Running: without a reboot the new image runs once installed; with one, the
// booted slot tells (when it can be known), else the new image is assumed.
func (c *Commandline) Running(ctx context.Context, p Plan) (Running, error) {
	if !c.reboot || c.booted == nil || p.From == "" {
		return RunningNew, nil
	}
	b, err := c.booted(ctx)
	if err != nil {
		return RunningUnknown, err
	}
	if b == p.From {
		return RunningOld, nil
	}
	return RunningNew, nil
}

func (c *Commandline) Commit(ctx context.Context, p Plan) error {
	if len(c.commit) == 0 {
		return nil
	}
	if _, err := c.cmd.Run(ctx, expand(c.commit, p), planEnv(p)...); err != nil {
		return fmt.Errorf("%s installer: commit: %w", c.name, err)
	}
	return nil
}

func (c *Commandline) Rollback(ctx context.Context, p Plan) error {
	if len(c.rollback) == 0 {
		return nil
	}
	if _, err := c.cmd.Run(ctx, expand(c.rollback, p), planEnv(p)...); err != nil {
		return fmt.Errorf("%s installer: rollback: %w", c.name, err)
	}
	return nil
}

// Cleanup removes the downloaded image.
func (c *Commandline) Cleanup(p Plan) {
	if p.Image != "" && filepath.Dir(p.Image) == filepath.Clean(c.dir) {
		os.Remove(p.Image)
	}
	os.Remove(filepath.Join(c.dir, "image.unverified"))
}

// raucBooted asks RAUC which slot booted (`rauc status --output-format=json`, field "booted").
func (c *Commandline) raucBooted(ctx context.Context) (string, error) {
	out, err := c.cmd.Output(ctx, []string{"rauc", "status", "--output-format=json"})
	if err != nil {
		return "", fmt.Errorf("rauc status: %w", err)
	}
	var st struct {
		Booted string `json:"booted"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", fmt.Errorf("rauc status: %w", err)
	}
	if st.Booted == "" {
		return "", errors.New("rauc status does not name the booted slot")
	}
	return st.Booted, nil
}

// detectAny returns the value of the slot key (or root=) without a slot list.
func (b BootedSlot) detectAny() (string, error) {
	key := b.Key
	if key == "" {
		key = "root"
	}
	raw, err := os.ReadFile(cmdlinePath(b.Cmdline))
	if err != nil {
		return "", fmt.Errorf("reading kernel command line: %w", err)
	}
	for _, tok := range strings.Fields(string(raw)) {
		if k, v, ok := strings.Cut(tok, "="); ok && k == key {
			return v, nil
		}
	}
	return "", fmt.Errorf("no %s= on the kernel command line", key)
}
