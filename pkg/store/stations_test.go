package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

// TestStationSerialPatternCannotBeMatchedBySubstring: a station's pattern
// used to be matched anywhere in the serial, so SN-[0-9]{4} accepted
// ZZ-SN-1234-x. It is evaluated anchored, also for stations created before
// (whose pattern is stored as written), and a pattern cannot close the
// anchoring group to escape it.
func TestStationSerialPatternCannotBeMatchedBySubstring(t *testing.T) {
	now := time.Now()
	st := store.Station{Name: "line-1", Status: store.StationActive, Quota: 10, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		Models: []string{"edge-gw"}, SerialPattern: "SN-[0-9]{4}"}
	tests := []struct {
		serial string
		want   error
	}{
		{"SN-1234", nil},
		{"ZZ-SN-1234-x", store.ErrStationPolicy},
		{"SN-12345", store.ErrStationPolicy},
		{"xSN-1234", store.ErrStationPolicy},
	}
	for _, tt := range tests {
		if err := st.Permits(tt.serial, "edge-gw", now); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Errorf("serial %q: %v, want %v", tt.serial, err, tt.want)
		}
	}
	alt := st
	alt.SerialPattern = "SN-1|SN-2"
	for serial, ok := range map[string]bool{"SN-1": true, "SN-2": true, "SN-12": false, "XSN-2": false} {
		if err := alt.Permits(serial, "edge-gw", now); (err == nil) != ok {
			t.Errorf("pattern %q, serial %q: %v", alt.SerialPattern, serial, err)
		}
	}
	for _, p := range []string{"a)|(.*", "((", ".*)|("} {
		if err := store.ValidSerialPattern(p); err == nil {
			t.Errorf("pattern %q accepted", p)
		}
	}
}

// TestStationModelsEveryModelOnlyWhenSpelledOut: "*" lets a station enroll
// every model; a list lets it enroll those only.
func TestStationModelsEveryModelOnlyWhenSpelledOut(t *testing.T) {
	now := time.Now()
	st := store.Station{Name: "line-1", Status: store.StationActive, Quota: 10, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), Models: []string{"edge-gw"}}
	if err := st.Permits("SN-1", "cam", now); !errors.Is(err, store.ErrStationPolicy) {
		t.Fatalf("other model: %v", err)
	}
	st.Models = []string{store.AllModels}
	if err := st.Permits("SN-1", "cam", now); err != nil {
		t.Fatalf("every model: %v", err)
	}
}
