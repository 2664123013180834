package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
)

// An agent enrolled without a hardware id took every image of its model as
// its own, including one signed for another hardware revision. A model that
// declares hardware ids now enrolls only devices naming one of them, and
// the device record keeps it.
func TestDeviceWithoutHardwareIDCannotEnrollForModelThatDeclaresThem(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "gw-rev", "hardware_ids": []string{"rev-a", "rev-b"}}, 201)
	enroll := func(model, serial, hw string) apiResp {
		body := map[string]string{"token": f.token(serial, model), "serial": serial, "model": model, "csr": csrPEM(t, newKey(t), serial)}
		if hw != "" {
			body["hardware_id"] = hw
		}
		return f.do(f.anon, "POST", "/v1/enroll", []byte(js(body)))
	}
	before := f.issuedState()
	for _, tt := range []struct{ name, model, hw string }{
		{"no hardware id", "gw-rev", ""},
		{"hardware id the model does not declare", "gw-rev", "rev-z"},
		{"malformed hardware id", "gw-rev", "rev a/../"},
		{"hardware id for a model that declares none", "edge-gw", "rev-a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r := enroll(tt.model, "SN-HW", tt.hw); r.status != 400 || r.code() != "hardware_id" {
				t.Fatalf("got %d %s, want 400 hardware_id", r.status, r.body)
			}
		})
	}
	if !f.issuedState().equal(before) || f.deviceCount() != 0 {
		t.Fatal("a refused enrollment issued something")
	}
	if r := enroll("gw-rev", "SN-HW", "rev-a"); r.status != 201 {
		t.Fatalf("enrollment with the device's hardware id: %d %s", r.status, r.body)
	}
	var d store.Device
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/devices/urn:foster:device:gw-rev:SN-HW", nil, 200), &d)
	if d.HardwareID != "rev-a" {
		t.Fatalf("device record: %+v", d)
	}
}

// A model's hardware ids can grow (a new board revision) and shrink, by an
// admin only, audited; an enrollment naming a new id is accepted at once
// and bad input changes nothing.
func TestModelUpdateAddsHardwareIDsAdminOnlyAndAudited(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "gw-rev", "hardware_ids": []string{"rev-a"}}, 201)
	_, auditor := f.createAdmin("carol", "auditor")
	if r := f.do(auditor.client, "PATCH", "/v1/models/gw-rev", []byte(`{"add_hardware_ids":["rev-b"]}`)); r.status != 403 {
		t.Fatalf("auditor PATCH: %d %s", r.status, r.body)
	}
	for _, tt := range []struct {
		path, body string
		status     int
	}{
		{"/v1/models/gw-rev", `{}`, 400},
		{"/v1/models/gw-rev", `{"add_hardware_ids":["rev b/.."]}`, 400},
		{"/v1/models/gw-rev", `{"add_hardware_ids":["rev-b"],"extra":1}`, 400},
		{"/v1/models/nope", `{"add_hardware_ids":["rev-b"]}`, 404},
	} {
		if r := f.do(f.admin, "PATCH", tt.path, []byte(tt.body)); r.status != tt.status {
			t.Fatalf("PATCH %s %s: %d %s, want %d", tt.path, tt.body, r.status, r.body, tt.status)
		}
	}
	var m store.Model
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/models/gw-rev", nil, 200), &m)
	if len(m.HardwareIDs) != 1 {
		t.Fatalf("refused updates changed the model: %+v", m)
	}
	json.Unmarshal(f.mustJSON(f.admin, "PATCH", "/v1/models/gw-rev", map[string]any{"add_hardware_ids": []string{"rev-b"}}, 200), &m)
	if len(m.HardwareIDs) != 2 || m.HardwareIDs[1] != "rev-b" {
		t.Fatalf("after adding rev-b: %+v", m)
	}
	body := map[string]string{"token": f.token("SN-B", "gw-rev"), "serial": "SN-B", "model": "gw-rev", "csr": csrPEM(t, newKey(t), "SN-B"), "hardware_id": "rev-b"}
	if r := f.do(f.anon, "POST", "/v1/enroll", []byte(js(body))); r.status != 201 {
		t.Fatalf("enrollment with the added hardware id: %d %s", r.status, r.body)
	}
	if r := f.do(auditor.client, "GET", "/v1/models/gw-rev", nil); r.status != 200 {
		t.Fatalf("auditor GET: %d %s", r.status, r.body)
	}
	ev, _ := f.in.Store.ListAudit(context.Background())
	var found bool
	for _, e := range ev {
		found = found || (e.Action == "model.update" && strings.Contains(e.Detail, "+hardware_ids=rev-b"))
	}
	if !found {
		t.Fatalf("audit trail lacks model.update: %+v", ev)
	}
}
