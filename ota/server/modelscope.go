package server

import (
	"net/http"
	"strings"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/identity"
)

// A device reads the top-level metadata (root, timestamp, snapshot,
// targets: the list of models) and, of the per-model files, only its own
// model's: the delegated role models/<model>, that role's hashed bins
// models/<model>/bins-<hex>, and target blobs under targets/<model>/. Any
// other model's role, bins or firmware gets 403, whether it exists or not,
// so a device learns nothing of other models beyond the model names the
// top-level targets role already lists. With Distribution.Public there is
// no caller to scope and everything is served to anyone (docs/TUF.md).

// metadataModel returns the model whose delegated metadata file is (the
// unescaped name after /tuf/: "3.models/edge-gw.json",
// "3.models/edge-gw/bins-1f.json") and whether file is model-specific at
// all. Every file naming a delegated role (a "/" in its name) is
// model-specific; one that is not models/<model>[/...] belongs to no model
// (model ""), which no device may read.
func metadataModel(file string) (model string, scoped bool) {
	if !strings.Contains(file, "/") {
		return "", false // timestamp.json, N.root.json, N.snapshot.json, N.targets.json
	}
	_, name, _ := strings.Cut(file, ".") // drop the consistent-snapshot version
	name = strings.TrimSuffix(name, ".json")
	rest, ok := strings.CutPrefix(name, tufrepo.ModelRole(""))
	if !ok {
		return "", true
	}
	model, _, _ = strings.Cut(rest, "/")
	return model, true
}

// targetModel returns the model of a target blob path below /targets/
// (<model>/<version>/<sha256>.<file>): its first segment.
func targetModel(path string) string {
	model, _, _ := strings.Cut(path, "/")
	return model
}

// checkModelScope refuses a device caller model-specific files of another
// model. Callers without a principal (Distribution.Public) are not scoped.
func checkModelScope(r *http.Request, model string) error {
	p, _ := principalFrom(r.Context())
	if p.Role != identity.RoleDevice {
		return nil
	}
	if model == "" || model != p.Model {
		return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "device of model %s may not read %s: a device reads only its own model's role and firmware", p.Model, r.URL.Path)
	}
	return nil
}
