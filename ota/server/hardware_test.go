package server_test

import (
	"encoding/json"
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
