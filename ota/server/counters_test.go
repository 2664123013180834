package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"testing"

	"github.com/foster-ota/foster/pkg/store"
)

// TestReleaseCounterTypoCannotExhaustAModel: devices refuse any counter not
// above the one they run, so a counter once signed can never be taken back.
// `release add --counter 9223372036854775807` used to be signed, and the
// next automatic counter wrapped negative: the model could never be updated
// again. Counters stay in 1..2^53-1 and at most 1,000,000 above the latest;
// a model at 2^53-1 has no next release (refused, never wrapped).
func TestReleaseCounterTypoCannotExhaustAModel(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	before := f.repoSnapshot()
	refused := []struct {
		name    string
		counter string
	}{
		{"max int64", fmt.Sprint(int64(math.MaxInt64))},
		{"2^53", fmt.Sprint(int64(1) << 53)},
		{"first release more than a step above 0", fmt.Sprint(store.MaxReleaseCounterStep + 1)},
		{"beyond int64", "9223372036854775808"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r := f.do(f.admin, "POST", "/v1/releases?model=edge-gw&version=1.0.0&name=fw.bin&counter="+tt.counter, []byte("v1"))
			if r.status != 400 || r.code() != "counter_out_of_range" {
				t.Fatalf("counter %s: got %d %s, want 400 counter_out_of_range", tt.counter, r.status, r.body)
			}
			if after := f.repoSnapshot(); after != before {
				t.Fatalf("refused release changed the repository:\n%s\n->\n%s", before, after)
			}
		})
	}
	// A full step is allowed.
	r := f.do(f.admin, "POST", fmt.Sprintf("/v1/releases?model=edge-gw&version=1.0.0&name=fw.bin&counter=%d", store.MaxReleaseCounterStep), []byte("v1"))
	if r.status != 201 {
		t.Fatalf("a counter one step above 0: %d %s", r.status, r.body)
	}
	// A model that reached (near) the top, e.g. by many releases or from
	// before these bounds: 2^53-1 is the last counter it can take.
	ctx := context.Background()
	if _, err := f.in.Store.AddRelease(ctx, store.Release{Model: "edge-gw", Version: "1.5.0", Counter: store.MaxReleaseCounter - 10, TargetPath: "edge-gw/1.5.0/fw.bin", SHA256: "aa", Length: 2}, nil); err != nil {
		t.Fatal(err)
	}
	r = f.do(f.admin, "POST", fmt.Sprintf("/v1/releases?model=edge-gw&version=2.0.0&name=fw.bin&counter=%d", int64(store.MaxReleaseCounter)), []byte("v2"))
	if r.status != 201 {
		t.Fatalf("counter 2^53-1: %d %s", r.status, r.body)
	}
	var rel store.Release
	json.Unmarshal(r.body, &rel)
	if rel.Counter != store.MaxReleaseCounter {
		t.Fatalf("counter = %d", rel.Counter)
	}
	before = f.repoSnapshot()
	for _, q := range []string{"", fmt.Sprintf("&counter=%d", int64(1)<<53)} {
		r = f.do(f.admin, "POST", "/v1/releases?model=edge-gw&version=3.0.0&name=fw.bin"+q, []byte("v3"))
		if r.status != 400 || r.code() != "counter_out_of_range" {
			t.Fatalf("release after 2^53-1 (%q): got %d %s, want 400 counter_out_of_range", q, r.status, r.body)
		}
		if after := f.repoSnapshot(); after != before {
			t.Fatalf("refused release changed the repository:\n%s\n->\n%s", before, after)
		}
	}
	latest, err := f.in.Store.LatestRelease(ctx, "edge-gw")
	if err != nil || latest.Counter != store.MaxReleaseCounter {
		t.Fatalf("latest = %+v %v", latest, err)
	}
}

// TestStationWithoutModelsCannotEnrollEveryModel: a station created without
// a model list silently enrolled every model, present and future; the list
// is required, and every model is spelled out as ["*"].
func TestStationWithoutModelsCannotEnrollEveryModel(t *testing.T) {
	f := newFixtureWith(t, fixtureOpts{})
	for _, body := range []string{
		`{"name":"l1","quota":10}`,
		`{"name":"l1","quota":10,"models":[]}`,
		`{"name":"l1","quota":10,"models":["*","edge-gw"]}`,
		`{"name":"l1","quota":10,"models":["edge-gw"],"serial_pattern":"a)|(.*"}`,
	} {
		if r := f.do(f.admin, "POST", "/v1/stations", []byte(body)); r.status != 400 {
			t.Fatalf("%s: %d %s, want 400", body, r.status, r.body)
		}
	}
	var st struct{ Station store.Station }
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/stations", map[string]any{"name": "l1", "quota": 10, "models": []string{"*"}}, 201), &st)
	if !st.Station.AnyModel() || fmt.Sprint(st.Station.Models) != "[*]" {
		t.Fatalf("station = %+v", st.Station)
	}
}
