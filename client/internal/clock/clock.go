// Package clock is the agent's trusted time: the reference time for TUF
// expiry checks, TLS certificate validity and the agent's own bookkeeping.
//
// Rule (docs/AGENT.md): the device never trusts its wall clock more than
// signed evidence.
//
//	floor F  the newest time the device has evidence for. It only grows, and only from
//	         - signed lower bounds: its certificate's and the server's TLS certificate's
//	           NotBefore (signed by the Foster CA), and every verified TUF timestamp's
//	           expiry minus the longest timestamp validity the repository uses (signed by
//	           the timestamp key);
//	         - elapsed uptime within one boot (time passed, whatever the clock says).
//	         Never from the wall clock, so a clock that runs ahead cannot drag F into the
//	         future and lock the device out later.
//	wall  W  the system clock.
//	reference R = W when F <= W <= F + MaxLead, else F.
//
// A clock behind F (a dead RTC reading 1970) is replaced by F, so expired
// metadata older than the evidence is refused. A clock more than MaxLead
// ahead of F (2099) is replaced by F too, so valid metadata is not refused as
// expired; F keeps advancing with each verified timestamp, so the device is
// never further behind the repository than one timestamp validity. Only a
// device whose clock is plausible gets the full freeze-attack defence of the
// wall clock; the others are protected from metadata older than the newest
// evidence they saw.
package clock

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/client/internal/journal"
)

// Defaults.
const (
	// DefaultMaxLead is how far the wall clock may run ahead of the newest
	// signed evidence before it is considered broken.
	DefaultMaxLead = 365 * 24 * time.Hour
	// DefaultTimestampValidity is the longest validity the repository gives
	// TUF timestamp metadata (fosterd signs for one day; a week of margin).
	DefaultTimestampValidity = 7 * 24 * time.Hour
)

// Basis says where a reference time came from.
type Basis string

const (
	BasisWall        Basis = "wall clock"
	BasisFloorBehind Basis = "signed evidence (the wall clock is behind it)"
	BasisFloorAhead  Basis = "signed evidence (the wall clock is implausibly far ahead of it)"
)

// Source reads the clocks. The zero value uses the system's.
type Source struct {
	Wall    func() time.Time
	MaxLead time.Duration
	// BootID identifies the current boot; Uptime is the time since boot.
	BootID func() string
	Uptime func() (time.Duration, bool)
}

func (s Source) wall() time.Time {
	if s.Wall != nil {
		return s.Wall().UTC()
	}
	return time.Now().UTC()
}

func (s Source) maxLead() time.Duration {
	if s.MaxLead > 0 {
		return s.MaxLead
	}
	return DefaultMaxLead
}

func (s Source) bootID() string {
	if s.BootID != nil {
		return s.BootID()
	}
	return SystemBootID("")
}

func (s Source) uptime() (time.Duration, bool) {
	if s.Uptime != nil {
		return s.Uptime()
	}
	return SystemUptime()
}

// Floor returns st's floor advanced by the uptime elapsed since it was
// recorded in this boot.
func (s Source) Floor(st journal.Clock) time.Time {
	f := st.Floor
	if f.IsZero() || st.BootID == "" || st.BootID != s.bootID() {
		return f
	}
	if up, ok := s.uptime(); ok {
		if d := up - time.Duration(st.Uptime*float64(time.Second)); d > 0 {
			f = f.Add(d)
		}
	}
	return f
}

// Reference returns the time trust decisions use, and why.
func (s Source) Reference(st journal.Clock) (time.Time, Basis) {
	f, w := s.Floor(st), s.wall()
	switch {
	case w.Before(f):
		return f, BasisFloorBehind
	case !f.IsZero() && w.After(f.Add(s.maxLead())):
		return f, BasisFloorAhead
	}
	return w, BasisWall
}

// Advance returns st with its floor raised to the newest evidence and the
// current boot and uptime recorded.
func (s Source) Advance(st journal.Clock, evidence ...time.Time) journal.Clock {
	f := s.Floor(st)
	for _, e := range evidence {
		if e.After(f) {
			f = e.UTC()
		}
	}
	out := journal.Clock{Floor: f}
	if f.IsZero() {
		return out
	}
	if id := s.bootID(); id != "" {
		if up, ok := s.uptime(); ok {
			out.BootID, out.Uptime = id, up.Seconds()
		}
	}
	return out
}

// SystemBootID reads the boot id (default /proc/sys/kernel/random/boot_id);
// "" when unknown.
func SystemBootID(path string) string {
	if path == "" {
		path = "/proc/sys/kernel/random/boot_id"
	}
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 256 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// SystemUptime reads /proc/uptime.
func SystemUptime() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	secs, err := strconv.ParseFloat(first, 64)
	if err != nil || secs < 0 {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}
