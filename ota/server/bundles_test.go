package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/offline"
)

// exportBundle posts a bundle request and returns the archive.
func (f *fixture) exportBundle(req map[string]any) (*offline.Archive, []byte) {
	f.t.Helper()
	b, _ := json.Marshal(req)
	r := f.do(f.admin, "POST", "/v1/bundles", b)
	if r.status != 200 {
		f.t.Fatalf("export: %d %s", r.status, r.body)
	}
	a, err := offline.ReadArchive(bytes.NewReader(r.body), int64(len(r.body)))
	if err != nil {
		f.t.Fatalf("reading the exported bundle: %v", err)
	}
	return a, r.body
}

func TestBundleExportCarriesEverythingAndPublishesNothing(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.release("1.0.0", []byte("firmware one"))
	rel := f.release("1.1.0", []byte("firmware two"))
	servedBefore, _, _, err := f.in.Repo.Metadata(context.Background(), "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, tsV := f.in.Repo.Versions()

	a, _ := f.exportBundle(map[string]any{"model": "edge-gw", "lifetime_seconds": 7 * 24 * 3600})
	m, err := a.Manifest()
	if err != nil || m == nil {
		t.Fatalf("manifest: %v", err)
	}
	if m.Target != rel.TargetPath || m.Version != "1.1.0" || m.ReleaseCounter != rel.Counter || m.SHA256 != rel.SHA256 {
		t.Fatalf("manifest %+v, want the newest release %+v", m, rel)
	}
	if m.Metadata.Timestamp != tsV {
		t.Fatalf("bundle timestamp version %d, current %d", m.Metadata.Timestamp, tsV)
	}
	if d := time.Until(m.Expires); d < 7*24*time.Hour-time.Minute || d > 7*24*time.Hour {
		t.Fatalf("bundle expires in %s, want 7 days", d)
	}
	for _, name := range []string{offline.ManifestName, "tuf/1.root.json", offline.TimestampName, offline.CAName, offline.CRLName, m.Image} {
		if _, ok := a.Open(name); !ok {
			t.Errorf("bundle lacks %s", name)
		}
	}
	img, _ := a.Open(m.Image)
	got := make([]byte, img.Size())
	img.ReadAt(got, 0)
	if string(got) != "firmware two" {
		t.Fatalf("image %q", got)
	}
	if served, _, _, _ := f.in.Repo.Metadata(context.Background(), "timestamp.json"); !bytes.Equal(served, servedBefore) {
		t.Fatal("fosterd serves the bundle's timestamp")
	}
	if _, _, _, v := f.in.Repo.Versions(); v != tsV {
		t.Fatalf("exporting published timestamp %d", v)
	}
	if !slices.ContainsFunc(f.auditActions(), func(s string) bool { return strings.HasPrefix(s, "bundle.export ") }) {
		t.Fatalf("no bundle.export in the audit trail: %v", f.auditActions())
	}

	// An auditor may export too; a device may not.
	aud := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "ann"})
	b, _ := json.Marshal(map[string]any{"model": "edge-gw", "version": "1.0.0"})
	if r := f.do(aud, "POST", "/v1/bundles", b); r.status != 200 {
		t.Fatalf("auditor export: %d %s", r.status, r.body)
	}
	dev, _ := f.enrolled("SN-1")
	if r := f.do(dev, "POST", "/v1/bundles", b); r.status != 403 {
		t.Fatalf("device export: %d %s", r.status, r.body)
	}
}

func TestBundleExportRefusesBadRequestsWithClearErrors(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw", "hardware_ids": []string{"rev-a", "rev-b"}}, 201)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "empty"}, 201)
	rel := f.release("1.0.0", []byte("firmware one"))
	f.heldRelease("2.0.0")
	f.release("3.0.0", []byte("firmware three"))
	f.mustJSON(f.admin, "POST", "/v1/releases/edge-gw/3.0.0/revoke", nil, 200)
	_ = rel
	tests := []struct {
		name   string
		req    string
		status int
		want   string
	}{
		{"unknown model", `{"model":"nope"}`, 404, "model nope not found"},
		{"model without releases", `{"model":"empty"}`, 404, "no published full image of empty"},
		{"unknown version", `{"model":"edge-gw","version":"9.9.9"}`, 404, "release edge-gw 9.9.9 not found"},
		{"hardware id of no model", `{"model":"edge-gw","hardware_id":"rev-z"}`, 400, "no hardware id"},
		{"held release", `{"model":"edge-gw","version":"2.0.0"}`, 409, "offered to no device"},
		{"revoked release", `{"model":"edge-gw","version":"3.0.0"}`, 409, "revoked"},
		{"lifetime too long", `{"model":"edge-gw","lifetime_seconds":99999999}`, 400, "lifetime"},
		{"lifetime too short", `{"model":"edge-gw","lifetime_seconds":60}`, 400, "lifetime"},
		{"negative lifetime", `{"model":"edge-gw","lifetime_seconds":-5}`, 400, "lifetime"},
		{"bad version", `{"model":"edge-gw","version":"latest"}`, 400, "semantic version"},
		{"unknown field", `{"model":"edge-gw","sign_with":"root"}`, 400, "unknown field"},
		{"not json", `model=edge-gw`, 400, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.admin, "POST", "/v1/bundles", []byte(tt.req))
			if r.status != tt.status || !strings.Contains(string(r.body), tt.want) {
				t.Fatalf("%d %s, want %d mentioning %q", r.status, r.body, tt.status, tt.want)
			}
		})
	}
}
