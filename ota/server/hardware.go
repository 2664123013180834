package server

import (
	"net/http"
	"slices"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// checkHardwareID binds a device to its hardware at enrollment. A model
// that declares hardware ids has images built for some of them only (the
// signed target lists them), so a device of that model must say which one
// it is: an agent that knew none would take every image of its model as
// its own. The hardware id is recorded with the device; the agent keeps it
// and installs only images whose signed hardware ids list it.
func checkHardwareID(m store.Model, hw string) error {
	switch {
	case len(hw) > 64:
		return apierr.New(http.StatusBadRequest, apierr.CodeHardwareID, "hardware id longer than 64 bytes")
	case len(m.HardwareIDs) == 0 && hw != "":
		return apierr.New(http.StatusBadRequest, apierr.CodeHardwareID,
			"model %s declares no hardware ids: enroll without one (got %q)", m.Name, hw)
	case len(m.HardwareIDs) == 0:
		return nil
	case hw == "":
		return apierr.New(http.StatusBadRequest, apierr.CodeHardwareID,
			"model %s declares hardware ids %v: the enrollment must name the device's (foster-agent enroll --hardware-id ID)", m.Name, m.HardwareIDs)
	case identity.ValidName(hw) != nil || !slices.Contains(m.HardwareIDs, hw):
		return apierr.New(http.StatusBadRequest, apierr.CodeHardwareID,
			"hardware id %q is not one of model %s's (%v)", hw, m.Name, m.HardwareIDs)
	}
	return nil
}
