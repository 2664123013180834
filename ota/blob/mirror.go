package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// ErrConflict is wrapped by Mirror when the destination holds objects that
// are not the source's.
var ErrConflict = errors.New("destination holds different objects")

// MirrorOptions tune Mirror. The zero value copies every key in bytewise
// order and allows no object to differ.
type MirrorOptions struct {
	// Skip leaves keys out on both sides (uploads in flight).
	Skip func(key string) bool
	// Mutable keys may differ at the destination: they are overwritten.
	Mutable func(key string) bool
	// Rank orders the copy: lower ranks first, bytewise within a rank (so
	// what metadata references lands before the metadata).
	Rank func(key string) int
	// Progress, if not nil, hears of each object copied or checked.
	Progress func(done, total int, bytes int64)
}

// MirrorResult says what Mirror did.
type MirrorResult struct {
	Objects int   `json:"objects"`     // objects of the source
	Copied  int   `json:"copied"`      // copied now
	Already int   `json:"already"`     // found identical at the destination
	Bytes   int64 `json:"bytes"`       // bytes copied now
	Total   int64 `json:"total_bytes"` // bytes of the source
}

// Mirror makes dst hold every object of src, byte for byte, and verifies
// it: it refuses (ErrConflict, before writing anything) a destination that
// holds a key src lacks or, under the same key, other bytes (unless
// Mutable); copies what is missing or mutable; then reads back every object
// it copied and compares SHA-256 and size with what it read from src. It is
// safe to run again after an interruption: what was copied is found
// identical and not copied again. src must not change meanwhile.
func Mirror(ctx context.Context, src, dst Store, opts MirrorOptions) (MirrorResult, error) {
	var res MirrorResult
	keep := func(keys []string) []string {
		if opts.Skip == nil {
			return keys
		}
		return slices.DeleteFunc(keys, opts.Skip)
	}
	mutable := func(k string) bool { return opts.Mutable != nil && opts.Mutable(k) }
	srcKeys, err := src.List(ctx, "")
	if err != nil {
		return res, fmt.Errorf("listing the source: %w", err)
	}
	dstKeys, err := dst.List(ctx, "")
	if err != nil {
		return res, fmt.Errorf("listing the destination: %w", err)
	}
	srcKeys, dstKeys = keep(srcKeys), keep(dstKeys)
	res.Objects = len(srcKeys)
	inSrc := make(map[string]bool, len(srcKeys))
	for _, k := range srcKeys {
		inSrc[k] = true
	}
	var extra []string
	for _, k := range dstKeys {
		if !inSrc[k] {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		return res, fmt.Errorf("%w: it holds %d objects the source does not (%s): is it another instance's store? Use an empty bucket or prefix", ErrConflict, len(extra), examples(extra))
	}

	// What is there already must be the source's bytes.
	total := len(srcKeys)
	done := 0
	progress := func() {
		done++
		if opts.Progress != nil {
			opts.Progress(done, total, res.Bytes)
		}
	}
	same := map[string]bool{}
	var differ []string
	for _, k := range dstKeys {
		if mutable(k) {
			continue
		}
		ss, sn, err := Sum(ctx, src, k)
		if err != nil {
			return res, fmt.Errorf("reading the source: %w", err)
		}
		res.Total += sn
		ds, dn, err := Sum(ctx, dst, k)
		if err != nil {
			return res, fmt.Errorf("reading the destination: %w", err)
		}
		if ss != ds || sn != dn {
			differ = append(differ, k)
			continue
		}
		same[k] = true
		res.Already++
		progress()
	}
	if len(differ) > 0 {
		return res, fmt.Errorf("%w: %d objects differ from the source's under the same key (%s); nothing was copied", ErrConflict, len(differ), examples(differ))
	}

	rank := func(k string) int {
		if opts.Rank == nil {
			return 0
		}
		return opts.Rank(k)
	}
	todo := slices.DeleteFunc(slices.Clone(srcKeys), func(k string) bool { return same[k] })
	slices.SortStableFunc(todo, func(a, b string) int { return rank(a) - rank(b) })
	sums := make(map[string]string, len(todo))
	sizes := make(map[string]int64, len(todo))
	for _, k := range todo {
		sum, n, err := copyOne(ctx, src, dst, k)
		if err != nil {
			return res, err
		}
		sums[k], sizes[k] = sum, n
		res.Copied++
		res.Bytes += n
		res.Total += n
		progress()
	}
	for _, k := range todo {
		got, n, err := Sum(ctx, dst, k)
		if err != nil {
			return res, fmt.Errorf("verifying the copy: %w", err)
		}
		if got != sums[k] || n != sizes[k] {
			return res, fmt.Errorf("verifying the copy of %s: the destination holds %d bytes with SHA-256 %s, the source %d bytes with %s", k, n, got, sizes[k], sums[k])
		}
	}
	return res, nil
}

// copyOne copies key from src to dst and returns the SHA-256 (hex) and
// size of what it read.
func copyOne(ctx context.Context, src, dst Store, key string) (string, int64, error) {
	rc, info, err := src.Open(ctx, key)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", key, err)
	}
	defer rc.Close()
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(rc, h)}
	if err := dst.Put(ctx, key, cr, info.Size); err != nil {
		return "", 0, fmt.Errorf("writing %s: %w", key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), cr.n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Sum reads key from s and returns its SHA-256 (hex) and size.
func Sum(ctx context.Context, s Store, key string) (string, int64, error) {
	rc, _, err := s.Open(ctx, key)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", key, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func examples(keys []string) string {
	const show = 3
	if len(keys) <= show {
		return strings.Join(keys, ", ")
	}
	return strings.Join(keys[:show], ", ") + ", ..."
}
