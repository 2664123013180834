package e2e

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/store"
)

// TestCLIJSONRoundTripsTheAPIObjects runs every listing and show command of
// foster with --json against a real fosterd, plus the writes a walkthrough
// makes: each prints valid JSON on stdout, and where the output is an API
// object it decodes into that type with no unknown field and re-encodes to
// the same JSON (stable field names, nothing renamed or dropped on the way).
func TestCLIJSONRoundTripsTheAPIObjects(t *testing.T) {
	env := NewEnv(t)
	jsonOf := func(args ...string) []byte {
		t.Helper()
		out := env.Admin(append(args, "--json")...).Stdout
		if !json.Valid([]byte(out)) {
			t.Fatalf("foster %s --json: not JSON:\n%s", strings.Join(args, " "), out)
		}
		return []byte(out)
	}
	// roundTrip decodes out strictly into v and checks it re-encodes the same.
	roundTrip := func(name string, out []byte, v any) {
		t.Helper()
		dec := json.NewDecoder(bytes.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			t.Fatalf("foster %s --json does not decode into %T: %v\n%s", name, v, err, out)
		}
		again, _ := json.Marshal(v)
		var a, b any
		json.Unmarshal(out, &a)
		json.Unmarshal(again, &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("foster %s --json does not round-trip through %T:\n%s\nvs\n%s", name, v, out, again)
		}
	}

	var m store.Model
	roundTrip("model add", jsonOf("model", "add", "edge-gw", "--hardware-id", "rev-a"), &m)
	if m.Name != "edge-gw" {
		t.Fatalf("model add --json: %+v", m)
	}
	roundTrip("model update", jsonOf("model", "update", "edge-gw", "--add-hardware-id", "rev-b"), &store.Model{})
	var shown store.Model
	roundTrip("model show", jsonOf("model", "show", "edge-gw"), &shown)
	var models []store.Model
	roundTrip("model list", jsonOf("model", "list"), &models)
	if len(models) != 1 || !reflect.DeepEqual(models[0], shown) || len(shown.HardwareIDs) != 2 {
		t.Fatalf("model list and model show disagree: %+v vs %+v", models, shown)
	}

	var tok struct {
		Token string `json:"token"`
	}
	json.Unmarshal(jsonOf("token", "create", "--serial", "SN-J1", "--model", "edge-gw"), &tok)
	if !strings.HasPrefix(tok.Token, "fst_") {
		t.Fatalf("token create --json: no token: %+v", tok)
	}
	env.MustRun("foster-agent", append(env.NewDevice("SN-J1", "edge-gw").enrollArgs(tok.Token), "--hardware-id", "rev-a")...)

	fw, _ := writeFirmware(t, 4<<10)
	var rel server.Release
	roundTrip("release add", jsonOf("release", "add", "--model", "edge-gw", "--version", "1.0.1", "--hold", fw), &rel)
	roundTrip("release show", jsonOf("release", "show", "--model", "edge-gw", "--version", "1.0.1"), &server.Release{})
	roundTrip("release list", jsonOf("release", "list"), &[]server.Release{})

	var devs []store.Device
	roundTrip("device list", jsonOf("device", "list"), &devs)
	if len(devs) != 1 {
		t.Fatalf("device list --json: %d devices, want 1", len(devs))
	}
	var dev struct {
		store.Device
		Certificates []store.Certificate `json:"certificates"`
		Refusals     []store.Refusal     `json:"refusals"`
	}
	roundTrip("device show", jsonOf("device", "show", "SN-J1"), &dev)
	if dev.ID != devs[0].ID || len(dev.Certificates) == 0 {
		t.Fatalf("device show --json: %+v", dev)
	}
	jsonOf("device", "tag", "SN-J1", "lab")
	jsonOf("group", "create", "lab", "--tag", "lab")
	jsonOf("group", "show", "lab")
	jsonOf("group", "list")
	jsonOf("rollout", "create", "--model", "edge-gw", "--version", "1.0.1", "--group", "lab")
	jsonOf("rollout", "list")
	jsonOf("station", "list")
	jsonOf("admin", "list")
	jsonOf("tuf", "status")
	jsonOf("audit", "report")
	jsonOf("group", "create", "spare", "--tag", "spare")
	jsonOf("group", "delete", "spare")
	roundTrip("device revoke", jsonOf("device", "revoke", "SN-J1"), &store.Device{})
}
