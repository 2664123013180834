// Command foster-agent is Foster's device agent: it enrolls the device,
// keeps its firmware patched from a TUF-secured fosterd and attests every
// install. See `foster-agent --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
