// Package install holds the device agent's installers: what happens to a
// verified image. An installer never sees an unverified byte: the agent
// streams the download into the Dest the installer chose, verifies it,
// journals that, and only then calls Install.
//
// Every method that changes the device is idempotent, because after a power
// cut the agent repeats the step it journalled but cannot know whether the
// step finished:
//
//	Prepare   choose where the image goes and make that safe (A/B: the slot being
//	          overwritten can never be booted while it is written)
//	Install   activate the verified image (A/B: arm a one-time trial boot of the new slot)
//	Running   which image runs now: the old one, the new one, or unknown
//	Commit    keep the new image for good
//	Rollback  return to the old image (a reboot follows when Reboots() and the new one runs)
//
// Installers are not safe for concurrent use; the agent runs one at a time.
package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/foster-ota/foster/client/internal/fetch"
)

// Dest is where a download is streamed.
type Dest struct {
	// Path receives the streamed bytes.
	Path string
	// Final, when set, is where the verified image is renamed to (a bundle
	// tool may insist on a file name); otherwise the image stays at Path.
	Final string
	// InPlace marks Path as a slot (a partition) that is overwritten in place:
	// never created, truncated or removed.
	InPlace bool
	// From and To name what runs now and what will run (A/B slots).
	From, To string
}

// Image returns where the verified image is.
func (d Dest) Image() string {
	if d.Final != "" {
		return d.Final
	}
	return d.Path
}

// Plan is what the journal remembers of one install.
type Plan struct {
	// Image is the verified image (a file, or the slot it was written to).
	Image string
	// Name and Version describe the target (passed to commands).
	Name, Version string
	Want          fetch.Expected
	// From and To are Dest.From and Dest.To.
	From, To string
}

// Running says which image runs.
type Running int

const (
	RunningUnknown Running = iota
	RunningOld
	RunningNew
)

func (r Running) String() string {
	return [...]string{"unknown", "old", "new"}[r]
}

// BootStatus is what a bootloader says about a trial boot.
type BootStatus struct {
	// Trial is true while the bootloader counts boots of an uncommitted slot.
	Trial bool
	// BootCount and BootLimit are the bootloader's counters (0 when unknown).
	BootCount, BootLimit int64
}

// Overflow reports whether the trial exceeded its boot limit: the new image
// kept failing to come up (the bootloader should have fallen back already).
func (b BootStatus) Overflow() bool {
	return b.Trial && b.BootLimit > 0 && b.BootCount > b.BootLimit
}

// Installer puts verified images in place.
type Installer interface {
	// Name identifies the installer in the journal ("file", "ab", ...).
	Name() string
	// Prepare returns where to stream the next image.
	Prepare(ctx context.Context) (Dest, error)
	// Install activates the verified image.
	Install(ctx context.Context, p Plan) error
	// Reboots reports whether the new image runs only after a reboot.
	Reboots() bool
	// Running reports which image runs now.
	Running(ctx context.Context, p Plan) (Running, error)
	// Status reports the bootloader's trial state (zero if it has none).
	Status(ctx context.Context) (BootStatus, error)
	// Commit keeps the new image.
	Commit(ctx context.Context, p Plan) error
	// Rollback returns to the old image.
	Rollback(ctx context.Context, p Plan) error
	// Cleanup removes what the install left behind (downloaded bundles).
	Cleanup(p Plan)
}

// ErrConfig marks an installer configuration mistake.
var ErrConfig = errors.New("installer configuration")

func configErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

// expand replaces {image}, {target}, {version} and {slot} in argv.
func expand(argv []string, p Plan) []string {
	r := strings.NewReplacer("{image}", p.Image, "{target}", p.Name, "{version}", p.Version, "{slot}", p.To)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = r.Replace(a)
	}
	return out
}

// planEnv is the environment commands see.
func planEnv(p Plan) []string {
	return []string{
		"FOSTER_IMAGE=" + p.Image,
		"FOSTER_TARGET=" + p.Name,
		"FOSTER_VERSION=" + p.Version,
		"FOSTER_SLOT=" + p.To,
		"FOSTER_PREVIOUS_SLOT=" + p.From,
	}
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}
