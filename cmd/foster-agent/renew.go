package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"time"

	"github.com/foster-ota/foster/client"
	fenv "github.com/foster-ota/foster/pkg/env"
)

// renewCmd renews the device certificate now or when due. `run` also renews
// when due, so this is for operators and provisioning scripts.
func renewCmd() command {
	return command{
		name:    "renew",
		summary: "renew the device certificate if it is due (at ~2/3 of its life), or now with --force",
		usage:   "foster-agent --state-dir DIR renew [--force] [--json]",
		flags: func(fs *flag.FlagSet, g *globals) func(context.Context, *env) error {
			var force, asJSON bool
			var reqTimeout time.Duration
			fs.BoolVar(&force, "force", false, "renew now even if the certificate is not due")
			fs.BoolVar(&asJSON, "json", false, "print machine-readable JSON")
			fs.DurationVar(&reqTimeout, "request-timeout", client.DefaultRequestTimeout, "timeout of each request")
			return func(ctx context.Context, e *env) error {
				a, err := client.New(client.Config{StateDir: e.g.stateDir, Logger: e.log, RequestTimeout: reqTimeout, Now: fenv.Now})
				if err != nil {
					return err
				}
				res, err := a.Renew(ctx, force)
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(res)
				}
				switch {
				case res.Renewed && res.AfterExpiry:
					fmt.Fprintf(e.stdout, "renewed the expired certificate by proof of possession; valid until %s\n", res.NotAfter.UTC().Format(time.RFC3339))
				case res.Renewed:
					fmt.Fprintf(e.stdout, "renewed; certificate valid until %s\n", res.NotAfter.UTC().Format(time.RFC3339))
				default:
					fmt.Fprintf(e.stdout, "not due: certificate valid until %s, renewal due at %s\n",
						res.NotAfter.UTC().Format(time.RFC3339), res.DueAt.UTC().Format(time.RFC3339))
				}
				return nil
			}
		},
	}
}
