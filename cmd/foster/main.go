// Command foster is Foster's admin CLI: it talks to fosterd over mTLS with an
// admin (or auditor) certificate. No passwords.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		fmt.Fprintf(os.Stderr, "foster: %v\n", ee.err)
		os.Exit(ee.code)
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		if err != errUsage { // say which flag or argument was wrong, after the usage text
			fmt.Fprintf(os.Stderr, "foster: %v\n", err)
		}
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "foster: %v\n", err)
		os.Exit(1)
	}
}
