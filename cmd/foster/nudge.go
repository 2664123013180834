package main

import (
	"context"
	"fmt"
	"io"

	"github.com/foster-ota/foster/ota/server"
)

// cmdNudge asks a model's devices, or one device, to check for updates now.
func cmdNudge(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("nudge", "nudge --model M [--serial SN] [--json]", stderr)
	asJSON := fs.Bool("json", false, "print the server's answer as JSON")
	model := fs.String("model", "", "model whose devices should check now (required)")
	serial := fs.String("serial", "", "nudge only this device of the model")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(fs, "unexpected argument %q", pos[0])
	}
	if *model == "" {
		return usageError(fs, "--model is required")
	}
	var resp server.NudgeResponse
	if err := c.postJSON(ctx, "/v1/nudge", server.NudgeRequest{Model: *model, Serial: *serial}, &resp); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, resp)
	}
	fmt.Fprintf(stdout, "nudged %s\n", resp.Topic)
	return nil
}
