//go:build !unix

package statedir

import "errors"

// ErrLocked is returned by Lock when another process holds the state dir.
var ErrLocked = errors.New("state dir is in use by another foster-agent process")

// Lock is a no-op where flock(2) does not exist.
func (l Layout) Lock() (unlock func(), err error) { return func() {}, nil }
