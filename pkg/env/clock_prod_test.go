//go:build !fostertest

package env

import (
	"testing"
	"time"
)

// TestProductionBuildIgnoresClockOffsetVariable: in a build without
// -tags fostertest, FOSTER_TEST_CLOCK_OFFSET in the environment moves no
// clock, so nobody can age a production fosterd's certificates or make an
// agent accept expired metadata by setting a variable.
func TestProductionBuildIgnoresClockOffsetVariable(t *testing.T) {
	t.Setenv("FOSTER_TEST_CLOCK_OFFSET", "-500000h")
	if off, err := ClockOffset(); off != 0 || err != nil {
		t.Fatalf("ClockOffset() = %v, %v in a production build", off, err)
	}
	if d := time.Until(Now()); d < -time.Minute || d > time.Minute {
		t.Fatalf("Now() is %v away from time.Now in a production build", d)
	}
}
