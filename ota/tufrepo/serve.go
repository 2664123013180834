package tufrepo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrExpired: the metadata to serve has expired and could not be renewed.
var ErrExpired = errors.New("repository metadata expired")

// Metadata returns the current bytes of a metadata file as clients request
// it (the name after /tuf/: "timestamp.json", "N.snapshot.json",
// "N.root.json", "N.<role>.json" with the role name unescaped), with a strong
// ETag, from memory: devices poll timestamp.json, and the blob store is not
// read for it. ok is false for files that are not current (older versions:
// serve those from the store).
//
// Before serving timestamp.json it makes sure timestamp and snapshot do not
// expire within Options.ServeGuard, re-signing them at once if the periodic
// Refresh fell behind (a suspended host, a jumped clock): a running server
// never hands out metadata that is already expired. If they cannot be
// renewed the error wraps ErrExpired.
func (r *Repo) Metadata(ctx context.Context, file string) (data []byte, etag string, ok bool, err error) {
	if file == "timestamp.json" {
		st, err := r.fresh(ctx)
		if err != nil {
			return nil, "", false, err
		}
		return st.timestampRaw, st.timestampETag, true, nil
	}
	st := r.cur.Load()
	v, rest, found := strings.Cut(file, ".")
	name, isJSON := strings.CutSuffix(rest, ".json")
	n, perr := strconv.ParseInt(v, 10, 64)
	if !found || !isJSON || perr != nil || n <= 0 {
		return nil, "", false, nil
	}
	var raw []byte
	switch name {
	case metadata.ROOT:
		if st.root.Signed.Version == n {
			raw = st.rootRaw
		}
	case metadata.SNAPSHOT:
		if st.snapshot.Signed.Version == n {
			raw = st.snapshotRaw
		}
	default:
		if rl := st.roles[name]; rl != nil && rl.md.Signed.Version == n {
			raw = rl.raw
		}
	}
	if raw == nil {
		return nil, "", false, nil
	}
	return raw, etagOf(raw), true, nil
}

// fresh returns the current state, first renewing timestamp and snapshot
// if they expire within the serve guard.
func (r *Repo) fresh(ctx context.Context) (*state, error) {
	st := r.cur.Load()
	guard := r.opts.Now().Add(r.opts.ServeGuard)
	if st.timestamp.Signed.Expires.After(guard) && st.snapshot.Signed.Expires.After(guard) {
		return st, nil
	}
	err := r.locked(ctx, nil, func() error { return r.refreshLocked(ctx, guard) })
	st = r.cur.Load()
	now := r.opts.Now()
	if !st.timestamp.Signed.Expires.After(now) || !st.snapshot.Signed.Expires.After(now) {
		return nil, fmt.Errorf("%w: timestamp expires %s, snapshot %s: %w", ErrExpired,
			st.timestamp.Signed.Expires.Format(time.RFC3339), st.snapshot.Signed.Expires.Format(time.RFC3339), err)
	}
	return st, nil
}
