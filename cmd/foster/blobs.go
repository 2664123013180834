package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/foster-ota/foster/ota/blob"
)

// cmdBlobsCopy copies every object of one blob store into another: how an
// instance moves its TUF metadata and firmware from local files to S3 (or
// between buckets). It talks to the stores directly, not to fosterd: stop
// fosterd first, then start it with --blobs DST.
func cmdBlobsCopy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("blobs copy", "blobs copy --from URL --to URL", stderr)
	from := fs.String("from", "", "source blob store: file:PATH (e.g. file:./foster-data/blobs) or s3://bucket?... (required)")
	to := fs.String("to", "", "destination blob store: s3://bucket?endpoint=...&region=...&path-style=true or file:PATH (required)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return usageError(fs, "--from and --to are required")
	}
	if *from == *to {
		return usageError(fs, "--from and --to name the same store")
	}
	src, err := blob.Open(ctx, *from)
	if err != nil {
		return err
	}
	dst, err := blob.Open(ctx, *to)
	if err != nil {
		return err
	}
	if c, ok := dst.(interface{ Check(context.Context) error }); ok {
		if err := c.Check(ctx); err != nil {
			return fmt.Errorf("destination %s: %w", *to, err)
		}
	}
	keys, err := src.List(ctx, "")
	if err != nil {
		return fmt.Errorf("listing %s: %w", *from, err)
	}
	if !slices.Contains(keys, "tuf/1.root.json") {
		return fmt.Errorf("%s holds no TUF repository (no tuf/1.root.json): is it an instance's blob store?", *from)
	}
	// Firmware first, then metadata, timestamp.json last (copyRank).
	rank := copyRank
	slices.SortStableFunc(keys, func(a, b string) int { return rank(a) - rank(b) })
	var copied, skipped int
	var bytes int64
	for _, k := range keys {
		rc, info, err := src.Open(ctx, k)
		if err != nil {
			return fmt.Errorf("reading %s: %w", k, err)
		}
		if have, err := dst.Stat(ctx, k); err == nil && have.Size == info.Size && rank(k) == 0 {
			rc.Close()
			skipped++ // targets are content-addressed: same key and size, same bytes
			continue
		} else if err != nil && !errors.Is(err, blob.ErrNotFound) {
			rc.Close()
			return fmt.Errorf("destination %s: %w", k, err)
		}
		err = dst.Put(ctx, k, rc, info.Size)
		rc.Close()
		if err != nil {
			return fmt.Errorf("writing %s: %w", k, err)
		}
		copied++
		bytes += info.Size
	}
	fmt.Fprintf(stdout, "copied %d objects (%d bytes), %d already there; start fosterd with --blobs '%s'\n", copied, bytes, skipped, *to)
	return nil
}
