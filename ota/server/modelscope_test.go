package server_test

import (
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/store"
)

// enrolledAs enrolls serial as a device of model.
func (f *fixture) enrolledAs(serial, model string) *http.Client {
	key := newKey(f.t)
	var out struct{ Certificate string }
	json.Unmarshal(f.mustJSON(f.anon, "POST", "/v1/enroll", map[string]string{"token": f.token(serial, model), "serial": serial, "model": model, "csr": csrPEM(f.t, key, serial)}, 201), &out)
	var cert tls.Certificate
	for rest := []byte(out.Certificate); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	cert.PrivateKey = key
	return f.client(&cert)
}

// releaseOf publishes version of model and returns the release.
func (f *fixture) releaseOf(model, version string) store.Release {
	var rel store.Release
	r := f.do(f.admin, "POST", "/v1/releases?model="+model+"&version="+version+"&name=fw.bin", []byte(model+" firmware "+version))
	if r.status != 201 {
		f.t.Fatalf("release %s %s: %d %s", model, version, r.status, r.body)
	}
	json.Unmarshal(r.body, &rel)
	return rel
}

// modelFiles returns the /tuf/ paths of model's current delegated role and
// of one of its hashed bins, as a TUF client requests them (the role name
// escaped: 3.models%2Fedge-gw.json).
func (f *fixture) modelFiles(model string) (role, bin string) {
	for _, ri := range f.in.Repo.Roles() {
		file := "/tuf/" + fmt.Sprintf("%d.", ri.Version) + url.QueryEscape(ri.Name) + ".json"
		switch {
		case ri.Name == tufrepo.ModelRole(model):
			role = file
		case strings.HasPrefix(ri.Name, tufrepo.ModelRole(model)+"/bins-") && bin == "":
			bin = file
		}
	}
	if role == "" || bin == "" {
		f.t.Fatalf("model %s has no role or no bin: %+v", model, f.in.Repo.Roles())
	}
	return role, bin
}

// A device enrolled as one model must not be able to download another
// model's firmware or its delegated metadata (its role or its bins): only
// the top-level metadata and its own model's files.
func TestDeviceCannotFetchAnotherModelsFirmwareOrMetadata(t *testing.T) {
	f := newFixture(t)
	var latest = map[string]store.Release{}
	for _, m := range []string{"edge-gw", "cam-x"} {
		f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": m}, 201)
		// 33 releases: one more than the model role keeps, so the oldest
		// moves to a hashed bin.
		for i := 1; i <= 33; i++ {
			latest[m] = f.releaseOf(m, fmt.Sprintf("1.0.%d", i))
		}
	}
	gw := f.enrolledAs("GW-1", "edge-gw")
	gwRole, gwBin := f.modelFiles("edge-gw")
	camRole, camBin := f.modelFiles("cam-x")
	blobPath := func(rel store.Release) string {
		return "/" + tufrepo.TargetKey(rel.TargetPath, rel.SHA256)
	}
	_, targets, snapshot, _ := f.in.Repo.Versions()

	tests := []struct {
		name string
		path string
		want int
	}{
		{"timestamp", "/tuf/timestamp.json", 200},
		{"root", "/tuf/1.root.json", 200},
		{"snapshot", fmt.Sprintf("/tuf/%d.snapshot.json", snapshot), 200},
		{"top-level targets", fmt.Sprintf("/tuf/%d.targets.json", targets), 200},
		{"own model role", gwRole, 200},
		{"own model bin", gwBin, 200},
		{"own model firmware", blobPath(latest["edge-gw"]), 200},
		{"other model role", camRole, 403},
		{"other model role, older version", "/tuf/1.models%2Fcam-x.json", 403},
		{"other model bin", camBin, 403},
		{"other model firmware", blobPath(latest["cam-x"]), 403},
		{"model that does not exist", "/tuf/1.models%2Fnope.json", 403},
		{"role outside models/", "/tuf/1.other%2Frole.json", 403},
		{"prefix of own model name", "/tuf/1.models%2Fedge-gw.x.json", 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(gw, "GET", tt.path, nil)
			if r.status != tt.want {
				t.Fatalf("GET %s: %d %s, want %d", tt.path, r.status, r.body, tt.want)
			}
			if tt.want == 403 && (r.code() != "forbidden" || strings.Contains(string(r.body), "firmware "+"1.0")) {
				t.Fatalf("GET %s: %s", tt.path, r.body)
			}
		})
	}

	// The cam-x device reads its own model's files and not edge-gw's.
	cam := f.enrolledAs("CAM-1", "cam-x")
	for path, want := range map[string]int{camRole: 200, camBin: 200, blobPath(latest["cam-x"]): 200, gwRole: 403, gwBin: 403, blobPath(latest["edge-gw"]): 403} {
		if r := f.do(cam, "GET", path, nil); r.status != want {
			t.Fatalf("cam-x device GET %s: %d %s, want %d", path, r.status, r.body, want)
		}
	}
}

// The public repository serves every model's files to anyone: it is for
// fleets whose firmware is not secret (docs/TUF.md).
func TestPublicRepositoryServesEveryModel(t *testing.T) {
	f := newFixtureOverrides(t, instance.Overrides{PublicRepository: true})
	for _, m := range []string{"edge-gw", "cam-x"} {
		f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": m}, 201)
	}
	gw := f.enrolledAs("GW-1", "edge-gw")
	rel := f.releaseOf("cam-x", "1.0.0")
	role := ""
	for _, ri := range f.in.Repo.Roles() {
		if ri.Name == tufrepo.ModelRole("cam-x") {
			role = fmt.Sprintf("/tuf/%d.models%%2Fcam-x.json", ri.Version)
		}
	}
	for _, path := range []string{role, "/" + tufrepo.TargetKey(rel.TargetPath, rel.SHA256)} {
		for who, c := range map[string]*http.Client{"anonymous": f.anon, "edge-gw device": gw} {
			if r := f.do(c, "GET", path, nil); r.status != 200 {
				t.Fatalf("public GET %s as %s: %d %s", path, who, r.status, r.body)
			}
		}
	}
}
