package clock

import (
	"testing"
	"time"

	"github.com/foster-ota/foster/client/internal/journal"
)

func TestReference(t *testing.T) {
	evidence := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	st := journal.Clock{Floor: evidence}
	tests := []struct {
		name  string
		wall  time.Time
		want  time.Time
		basis Basis
	}{
		{"plausible clock", evidence.Add(48 * time.Hour), evidence.Add(48 * time.Hour), BasisWall},
		{"dead RTC (1970)", time.Unix(0, 0), evidence, BasisFloorBehind},
		{"clock in 2099", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), evidence, BasisFloorAhead},
		{"offline for 11 months", evidence.Add(330 * 24 * time.Hour), evidence.Add(330 * 24 * time.Hour), BasisWall},
	}
	for _, tt := range tests {
		s := Source{Wall: func() time.Time { return tt.wall }, BootID: func() string { return "" }}
		got, basis := s.Reference(st)
		if !got.Equal(tt.want) || basis != tt.basis {
			t.Errorf("%s: Reference = %v (%s), want %v (%s)", tt.name, got, basis, tt.want, tt.basis)
		}
	}
	// No evidence at all: the wall clock is all there is.
	s := Source{Wall: func() time.Time { return time.Unix(0, 0) }, BootID: func() string { return "" }}
	if got, basis := s.Reference(journal.Clock{}); !got.Equal(time.Unix(0, 0)) || basis != BasisWall {
		t.Errorf("no evidence: %v %s", got, basis)
	}
}

// The floor only grows, from evidence and uptime within one boot, never from
// the wall clock.
func TestAdvance(t *testing.T) {
	boot, up := "boot-1", 100*time.Second
	s := Source{
		Wall:   func() time.Time { return time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC) },
		BootID: func() string { return boot },
		Uptime: func() (time.Duration, bool) { return up, true },
	}
	e1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := s.Advance(journal.Clock{}, e1)
	if !st.Floor.Equal(e1) || st.BootID != boot || st.Uptime != 100 {
		t.Fatalf("advance: %+v", st)
	}
	st = s.Advance(st, e1.Add(-time.Hour)) // older evidence does not lower it
	if !st.Floor.Equal(e1) {
		t.Fatalf("floor went back: %v", st.Floor)
	}
	up = 160 * time.Second // a minute later, same boot
	if f := s.Floor(st); !f.Equal(e1.Add(time.Minute)) {
		t.Fatalf("floor with uptime = %v", f)
	}
	boot = "boot-2" // after a reboot, uptime says nothing about the time off
	if f := s.Floor(st); !f.Equal(e1) {
		t.Fatalf("floor after reboot = %v", f)
	}
}
