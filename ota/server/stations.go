package server

import (
	"slices"

	"github.com/foster-ota/foster/pkg/store"
)

// checkStationModels requires a station's model list: a station that may
// enroll every model, present and future, says so with ["*"] alone; an
// empty list (which used to mean the same, silently) is refused.
func checkStationModels(models []string) error {
	switch {
	case len(models) == 0:
		return badRequest(`models is required: name the models the station may enroll, or ["*"] for every model, present and future`)
	case slices.Contains(models, store.AllModels) && len(models) > 1:
		return badRequest(`models: "*" (every model) stands alone`)
	}
	return nil
}
