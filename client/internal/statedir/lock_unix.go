//go:build unix

package statedir

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrLocked is returned by Lock when another process holds the state dir.
var ErrLocked = errors.New("state dir is in use by another foster-agent process")

// Lock takes an exclusive advisory lock on the state dir so that two agents
// (a daemon and a manual run) never interleave journal writes. The lock dies
// with the process, so a crash never leaves it stale.
func (l Layout) Lock() (unlock func(), err error) {
	f, err := os.OpenFile(l.lockFile(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", l.Dir, ErrLocked)
		}
		return nil, fmt.Errorf("locking %s: %w", l.lockFile(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
