package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// DefaultCommandTimeout bounds an installer command unless configured.
const DefaultCommandTimeout = 30 * time.Minute

// maxOutput is how much of a command's output is kept for errors and logs.
const maxOutput = 4 << 10 // bytes

// Command runs external programs with a timeout. The zero value is usable.
type Command struct {
	// Timeout bounds each run; default DefaultCommandTimeout.
	Timeout time.Duration
	// Env is added to the agent's environment.
	Env []string
}

// Run runs argv and returns its (bounded) combined output.
func (c Command) Run(ctx context.Context, argv []string, extraEnv ...string) (string, error) {
	return c.run(ctx, argv, nil, extraEnv)
}

func (c Command) run(ctx context.Context, argv []string, stdout *bytes.Buffer, extraEnv []string) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", errors.New("empty command")
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCommandTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), c.Env...), extraEnv...)
	tail := &tailBuffer{max: maxOutput}
	if stdout != nil {
		cmd.Stdout = &limitedWriter{w: stdout, n: 1 << 20}
		cmd.Stderr = tail
	} else {
		cmd.Stdout, cmd.Stderr = tail, tail
	}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	out := strings.TrimSpace(tail.String())
	if ctx.Err() == context.DeadlineExceeded {
		return out, fmt.Errorf("%s: timed out after %s", argv[0], timeout)
	}
	if err != nil {
		if out != "" {
			return out, fmt.Errorf("%s: %w: %s", argv[0], err, out)
		}
		return out, fmt.Errorf("%s: %w", argv[0], err)
	}
	return out, nil
}

// Output runs argv and returns its stdout (at most 1 MiB).
func (c Command) Output(ctx context.Context, argv []string, extraEnv ...string) ([]byte, error) {
	var out bytes.Buffer
	_, err := c.run(ctx, argv, &out, extraEnv)
	return out.Bytes(), err
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

type limitedWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.w.Len()+len(p) > l.n {
		return 0, fmt.Errorf("command output exceeds %d bytes", l.n)
	}
	return l.w.Write(p)
}
