package env

import (
	"fmt"
	"time"
)

// Now is the clock Foster's binaries make validity decisions with:
// certificate and token lifetimes, TUF expiries, the agent's wall clock.
// It is time.Now, shifted by the TestClockOffset hook in a test build (a
// production build has no such hook, so Now is time.Now). A bad offset
// counts as none here; binaries refuse it at startup with ClockOffset.
func Now() time.Time {
	off, _ := ClockOffset()
	return time.Now().Add(off)
}

// ClockOffset is the TestClockOffset hook's duration: 0 when unset, an
// error when it is not a Go duration.
func ClockOffset() (time.Duration, error) {
	v := TestClockOffset.Get()
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a Go duration such as 43800h or -500000h", TestClockOffset.Name(), v)
	}
	return d, nil
}
