package client

import (
	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/install"
)

// Expected is what signed metadata says a target is: name, length, hashes.
type Expected = fetch.Expected

// Installer puts a verified image in place (see client/internal/install:
// file, ab, rauc, swupdate, script). The agent streams the download into
// the Dest that Prepare returns, verifies it, journals that, and only then
// calls Install; every later step is idempotent and repeated after a crash.
type Installer = install.Installer

// InstallPlan is what an installer is told about one install.
type InstallPlan = install.Plan

// InstallDest is where an installer wants an image streamed.
type InstallDest = install.Dest

// Running says which image runs (for custom installers).
type Running = install.Running

// BootStatus is a bootloader's trial state (for custom installers).
type BootStatus = install.BootStatus

// Values of Running.
const (
	RunningUnknown = install.RunningUnknown
	RunningOld     = install.RunningOld
	RunningNew     = install.RunningNew
)
