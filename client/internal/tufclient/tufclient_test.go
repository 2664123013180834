package tufclient

import (
	"strings"
	"testing"
)

func TestCriteria(t *testing.T) {
	cr := Criteria{Model: "edge-gw", HardwareID: "rev-a", MinReleaseCounter: 3, InstalledVersion: "1.9.1"}
	tests := []struct {
		name string
		c    Custom
		ok   bool
	}{
		{"newer", Custom{Model: "edge-gw", ReleaseCounter: 4}, true},
		{"newer for our hardware", Custom{Model: "edge-gw", ReleaseCounter: 4, HardwareIDs: []string{"rev-b", "rev-a"}}, true},
		{"rollback to installed", Custom{Model: "edge-gw", ReleaseCounter: 3}, false},
		{"rollback below installed", Custom{Model: "edge-gw", ReleaseCounter: 1}, false},
		{"other model", Custom{Model: "edge-gw2", ReleaseCounter: 9}, false},
		{"other hardware", Custom{Model: "edge-gw", ReleaseCounter: 9, HardwareIDs: []string{"rev-b"}}, false},
		{"delta from an installed version", Custom{Model: "edge-gw", ReleaseCounter: 4, MinFromVersion: "1.2.0"}, true},
		{"delta from a newer version", Custom{Model: "edge-gw", ReleaseCounter: 4, MinFromVersion: "1.10.0"}, false},
		{"bad min_from_version", Custom{Model: "edge-gw", ReleaseCounter: 4, MinFromVersion: "one"}, false},
	}
	for _, tt := range tests {
		if got := cr.Qualifies(tt.c) == ""; got != tt.ok {
			t.Errorf("%s: qualifies = %v, want %v", tt.name, got, tt.ok)
		}
	}
	// A device that does not know its hardware id takes no hardware-specific
	// image for its own ("no hardware id" is not "any hardware"), only
	// images listing none.
	if why := (Criteria{Model: "edge-gw"}).Qualifies(Custom{Model: "edge-gw", ReleaseCounter: 1, HardwareIDs: []string{"x"}}); !strings.HasPrefix(why, "wrong hardware") {
		t.Errorf("device without a hardware id, hardware-specific image: %q, want wrong hardware", why)
	}
	if why := (Criteria{Model: "edge-gw"}).Qualifies(Custom{Model: "edge-gw", ReleaseCounter: 1, HardwareIDs: []string{}}); why != "" {
		t.Errorf("device without a hardware id, image for every hardware: %q", why)
	}
}

func TestCheckTargetName(t *testing.T) {
	for name, ok := range map[string]bool{
		"edge-gw/1.0.0/fw.bin": true,
		"fw.bin":               true,
		"/etc/passwd":          false,
		"edge-gw/../../x":      false,
		"edge-gw//fw":          false,
		"edge-gw/./fw":         false,
		"":                     false,
	} {
		if got := CheckTargetName(name) == nil; got != ok {
			t.Errorf("%q: ok = %v, want %v", name, got, ok)
		}
	}
}

// A delta image is not applied over an unknown base.
func TestMinFromVersionNeedsAKnownInstalledVersion(t *testing.T) {
	if why := (Criteria{Model: "m"}).Qualifies(Custom{Model: "m", ReleaseCounter: 1, MinFromVersion: "1.0.0"}); why == "" {
		t.Fatal("qualified without an installed version")
	}
}
