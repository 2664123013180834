package client

import (
	"context"
	"fmt"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/install"
)

// Expected is what signed metadata says a target is: name, length, hashes.
type Expected = fetch.Expected

// Installer puts a verified image in place. The agent downloads into
// StagingPath, verifies it, journals that, and only then calls Install.
type Installer interface {
	// Name identifies the installer in the journal ("file").
	Name() string
	// StagingPath is where the image is downloaded to before verification.
	StagingPath() string
	// Install promotes the verified image at staged. It must be atomic: after
	// a power cut either the old or the new image is in place.
	Install(ctx context.Context, staged string) error
	// Installed reports whether want is already in place; used to resume
	// after a crash between Install and the journal recording it.
	Installed(ctx context.Context, want Expected) (bool, error)
}

// InstallerNames lists the installers NewInstaller knows.
var InstallerNames = []string{"file"}

// NewInstaller returns the named installer. target is the file the "file"
// installer replaces.
func NewInstaller(name, target string) (Installer, error) {
	switch name {
	case "file":
		if target == "" {
			return nil, fmt.Errorf("installer %q needs a target path (--target)", name)
		}
		return install.NewFile(target)
	default:
		return nil, fmt.Errorf("unknown installer %q (available: %v)", name, InstallerNames)
	}
}
