package env

import (
	"testing"
	"time"
)

// TestClockOffsetShiftsNowAndRefusesGarbage: the test clock moves Now by
// the hook's duration, both ways, and a value that is not a duration is an
// error (binaries refuse to start) rather than a silent real clock.
func TestClockOffsetShiftsNowAndRefusesGarbage(t *testing.T) {
	tests := []struct {
		value   string
		want    time.Duration
		wantErr bool
	}{
		{"", 0, false},
		{"43800h", 43800 * time.Hour, false},
		{"-500000h", -500000 * time.Hour, false},
		{"5 years", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			t.Cleanup(TestClockOffset.Override(tc.value))
			off, err := ClockOffset()
			if (err != nil) != tc.wantErr || off != tc.want {
				t.Fatalf("ClockOffset() = %v, %v; want %v, error %v", off, err, tc.want, tc.wantErr)
			}
			got := Now().Sub(time.Now().Add(tc.want))
			if got < -time.Minute || got > time.Minute {
				t.Fatalf("Now() is %v away from the shifted clock", got)
			}
		})
	}
}
