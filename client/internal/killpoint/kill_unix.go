//go:build unix

package killpoint

import (
	"os"
	"syscall"
	"time"
)

func kill() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	time.Sleep(time.Hour) // SIGKILL is asynchronous; never run past the point
}
