package store

import (
	"errors"
	"fmt"
)

// Release counter bounds. A device refuses any image whose signed counter is
// not above the one it has installed, so a counter, once signed, can never be
// taken back: a typo of 9223372036854775807 would leave a model no counter
// to release with (and the next automatic one would wrap negative). Counters
// therefore stay below 2^53 (exact in JSON numbers, the form devices read
// them in), and a release published through the API may jump at most
// MaxReleaseCounterStep above the model's latest (0 for its first release).
// The store enforces the bound and never wraps; the step is the API's rule
// (CheckReleaseCounter).
const (
	// MaxReleaseCounter is the highest release counter: 2^53-1.
	MaxReleaseCounter = 1<<53 - 1
	// MaxReleaseCounterStep is how far above the latest counter a release
	// may jump (its first release: at most this).
	MaxReleaseCounterStep = 1_000_000
)

// ErrCounterRange refuses a release counter outside the bounds above.
var ErrCounterRange = errors.New("release counter out of range")

// CheckReleaseCounter refuses counter for a model whose latest release
// counter is latest (0 if it has none): it must be above latest, at most
// MaxReleaseCounterStep above it, and at most MaxReleaseCounter.
func CheckReleaseCounter(counter, latest int64) error {
	switch {
	case latest >= MaxReleaseCounter:
		return fmt.Errorf("%w: the latest release counter is %d, the highest there is (%d): this model cannot be released again", ErrCounterRange, latest, int64(MaxReleaseCounter))
	case counter < 1 || counter > MaxReleaseCounter:
		return fmt.Errorf("%w: counter %d is not in 1..%d", ErrCounterRange, counter, int64(MaxReleaseCounter))
	case counter <= latest:
		return fmt.Errorf("%w: counter %d, latest is %d", ErrStale, counter, latest)
	case counter-latest > MaxReleaseCounterStep:
		return fmt.Errorf("%w: counter %d is more than %d above the latest (%d)", ErrCounterRange, counter, MaxReleaseCounterStep, latest)
	}
	return nil
}

// nextReleaseCounter is the counter a release takes when none is given:
// latest + 1, refused (never wrapped) when latest is the highest there is,
// e.g. one recorded before these bounds.
func nextReleaseCounter(latest int64) (int64, error) {
	if latest >= MaxReleaseCounter || latest < 0 {
		return 0, fmt.Errorf("%w: the latest release counter is %d, the highest there is (%d): this model cannot be released again", ErrCounterRange, latest, int64(MaxReleaseCounter))
	}
	return latest + 1, nil
}
