package tufrepo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Bounds on upload input.
const (
	MaxTargetPathLength = 512 // bytes
	// MaxTargetPathSegment leaves room for a 128-hex-digit hash prefix
	// (SHA-512, as repositories signed before SHA-256-only may hold) within
	// a 255-byte file name.
	MaxTargetPathSegment = 120      // bytes
	MaxCustomSize        = 16 << 10 // bytes of custom metadata JSON
)

// Target is a published firmware image as recorded in signed targets metadata.
type Target struct {
	Path   string          // TUF target path, "<model>/<version>/<file>" in Foster
	Length int64           // bytes
	SHA256 string          // hex; the only hash fosterd signs
	Custom json.RawMessage // signed custom metadata (docs/CONTRACTS.md), nil if none
}

// TargetKey is the blob key of the target at targetPath under the hex hash
// hashHex (consistent-snapshot naming): "a/b/fw.bin" -> "targets/a/b/<hash>.fw.bin".
func TargetKey(targetPath, hashHex string) string {
	dir, base := path.Split(targetPath)
	return "targets/" + dir + hashHex + "." + base
}

// ValidTargetPath checks a target path: non-empty "/"-separated segments of
// ASCII letters, digits and . _ - + ~, none starting with "." (so no "." or
// ".."), no leading or trailing "/", at most MaxTargetPathLength bytes and
// MaxTargetPathSegment per segment. The character set is narrow because
// go-tuf builds download URLs from target paths without escaping them.
// The error wraps ErrInvalidTarget.
func ValidTargetPath(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty path", ErrInvalidTarget)
	}
	if len(p) > MaxTargetPathLength {
		return fmt.Errorf("%w: path longer than %d bytes", ErrInvalidTarget, MaxTargetPathLength)
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("%w: path %q has an empty segment (leading, trailing or double '/')", ErrInvalidTarget, p)
		case len(seg) > MaxTargetPathSegment:
			return fmt.Errorf("%w: path segment longer than %d bytes", ErrInvalidTarget, MaxTargetPathSegment)
		case seg[0] == '.':
			return fmt.Errorf("%w: path %q has a segment starting with '.'", ErrInvalidTarget, p)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._-+~", c) >= 0) {
				return fmt.Errorf("%w: path %q contains %q (allowed: letters, digits, . _ - + ~)", ErrInvalidTarget, p, c)
			}
		}
	}
	return nil
}

// normalizeCustom checks custom metadata (a JSON object of at most
// MaxCustomSize bytes whose numbers are integers, as TUF's canonical JSON
// requires) and re-encodes it, so that duplicate keys cannot make the
// published bytes say something other than what was signed.
func normalizeCustom(c json.RawMessage) (json.RawMessage, error) {
	if len(c) == 0 {
		return nil, nil
	}
	if len(c) > MaxCustomSize {
		return nil, fmt.Errorf("%w: custom metadata is %d bytes, max %d", ErrTooLarge, len(c), MaxCustomSize)
	}
	dec := json.NewDecoder(bytes.NewReader(c))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: custom metadata: %w", ErrInvalidTarget, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: custom metadata: trailing data after the JSON object", ErrInvalidTarget)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("%w: custom metadata must be a JSON object", ErrInvalidTarget)
	}
	if err := integersOnly(v); err != nil {
		return nil, fmt.Errorf("%w: custom metadata: %w", ErrInvalidTarget, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: custom metadata: %w", ErrInvalidTarget, err)
	}
	return out, nil
}

func integersOnly(v any) error {
	switch v := v.(type) {
	case json.Number:
		if _, err := v.Int64(); err != nil {
			return fmt.Errorf("number %s is not a 64-bit integer (TUF canonical JSON has no floats)", v)
		}
	case []any:
		for _, e := range v {
			if err := integersOnly(e); err != nil {
				return err
			}
		}
	case map[string]any:
		for _, e := range v {
			if err := integersOnly(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// Upload is a target to publish.
type Upload struct {
	// Path is the TUF target path, <model>/<version>/<file>.
	Path string
	Body io.Reader
	// Length is the declared body length in bytes, or -1 if unknown.
	Length int64
	// SHA256 is the declared SHA-256 (hex) of the body, or "" for none.
	SHA256 string
	// Custom is the signed custom metadata: a JSON object, or nil.
	Custom json.RawMessage
}

// Pending is an uploaded target, stored under its hash names but not yet
// published. Commit publishes it; Discard deletes its blobs.
type Pending struct {
	t         Target
	committed bool
}

// SetCustom replaces the custom metadata the target will be published with
// (a server fixes the release counter only under its release lock).
func (p *Pending) SetCustom(custom json.RawMessage) error {
	c, err := normalizeCustom(custom)
	if err != nil {
		return err
	}
	p.t.Custom = c
	return nil
}

// Target is what Commit would publish.
func (p *Pending) Target() Target { return p.t }

// AddTarget uploads and publishes a target in one step (Upload + Commit;
// the blobs are removed if publishing is refused). length is the declared
// body length, or -1 if unknown; custom is a JSON object or nil.
func (r *Repo) AddTarget(ctx context.Context, targetPath string, body io.Reader, length int64, custom json.RawMessage) (Target, error) {
	p, err := r.Upload(ctx, Upload{Path: targetPath, Body: body, Length: length, Custom: custom})
	if err != nil {
		return Target{}, err
	}
	defer r.Discard(ctx, p)
	return r.Commit(ctx, p)
}

// Upload streams u.Body to the store while hashing it (SHA-256, the only
// hash signed; never buffered whole) and stores it at TargetKey(path,
// sha256). Nothing is published: clients see nothing until
// Commit. Uploads run in parallel with each other and with publishing.
//
// It refuses, storing nothing: an invalid path (not <model>/<version>/<file>)
// or custom metadata, an empty body, a body whose length differs from
// u.Length (ErrLengthMismatch) or exceeds Options.MaxTargetLength
// (ErrTooLarge), a body whose SHA-256 differs from u.SHA256
// (ErrHashMismatch), and a path already published (ErrTargetExists: a
// release is immutable).
func (r *Repo) Upload(ctx context.Context, u Upload) (*Pending, error) {
	if _, err := ModelOf(u.Path); err != nil {
		return nil, err
	}
	if rollout.IsMembershipPath(u.Path) {
		return nil, fmt.Errorf("%w: %s is reserved for a group membership record", ErrInvalidTarget, u.Path)
	}
	custom, err := normalizeCustom(u.Custom)
	if err != nil {
		return nil, err
	}
	switch length := u.Length; {
	case length == 0:
		return nil, fmt.Errorf("%w: empty body", ErrInvalidTarget)
	case length > r.opts.MaxTargetLength:
		return nil, fmt.Errorf("%w: target is %d bytes, max %d", ErrTooLarge, length, r.opts.MaxTargetLength)
	case length < -1:
		return nil, fmt.Errorf("%w: negative length %d", ErrInvalidTarget, length)
	}
	if u.SHA256 != "" {
		if b, err := hex.DecodeString(u.SHA256); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%w: declared sha256 %q is not 64 hex digits", ErrInvalidTarget, u.SHA256)
		}
	}
	if k := r.sig.Load().keys; k.Snapshot == nil || k.Timestamp == nil {
		return nil, fmt.Errorf("adding target: snapshot and timestamp keys needed: %w", ErrKeyUnavailable)
	}
	if _, _, ok := r.Lookup(u.Path); ok { // cheap early refusal; checked again when publishing
		return nil, fmt.Errorf("%w: %s", ErrTargetExists, u.Path)
	}
	t, err := r.upload(ctx, u.Path, u.Body, u.Length, strings.ToLower(u.SHA256))
	if err != nil {
		return nil, err
	}
	t.Custom = custom
	return &Pending{t: t}, nil
}

// Commit publishes an uploaded target into its model's role (creating the
// role's delegation first if needed, which takes the targets key), then
// snapshot and timestamp. If writing fails midway, clients and r keep the
// previous repository; the call can be retried.
func (r *Repo) Commit(ctx context.Context, p *Pending) (Target, error) {
	return r.CommitLeased(ctx, p, nil)
}

// CommitLeased is Commit for a caller that holds the Arbiter's lock (lease:
// e.g. the store transaction that records the release): the publish is
// recorded through lease. A nil lease, or a Repo without an Arbiter, is
// Commit.
func (r *Repo) CommitLeased(ctx context.Context, p *Pending, lease Lease) (Target, error) {
	if p.committed {
		return Target{}, fmt.Errorf("%w: %s", ErrTargetExists, p.t.Path)
	}
	err := r.locked(ctx, lease, func() error {
		t := r.begin(ctx)
		if err := t.addTarget(p.t.Path, toTargetFiles(p.t)); err != nil {
			return err
		}
		if err := t.commit(); err != nil {
			return fmt.Errorf("publishing %s: %w", p.t.Path, err)
		}
		p.committed = true
		return nil
	})
	if err != nil {
		return Target{}, err
	}
	return p.t, nil
}

// Discard deletes the blobs of an upload that was not committed. It is a
// no-op after Commit succeeded.
func (r *Repo) Discard(ctx context.Context, p *Pending) {
	if p == nil || p.committed {
		return
	}
	if pub, _, ok := r.Lookup(p.t.Path); ok && pub.SHA256 == p.t.SHA256 {
		return // published by an earlier, identical upload: the blobs are in use
	}
	ctx = context.WithoutCancel(ctx)
	r.store.Delete(ctx, TargetKey(p.t.Path, p.t.SHA256))
}

// upload streams body into a staging object, then copies it (a hard link on
// the file store) to its sha256-named key. The blobs are content
// addressed, so leftovers of a failed publish are harmless and are reused
// by a retry; nothing references them until timestamp.json is written.
func (r *Repo) upload(ctx context.Context, targetPath string, body io.Reader, length int64, wantSHA256 string) (Target, error) {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return Target{}, err
	}
	staging := StagingPrefix + hex.EncodeToString(rnd[:])
	defer r.store.Delete(context.WithoutCancel(ctx), staging)

	limit := r.opts.MaxTargetLength
	if length >= 0 {
		limit = length
	}
	hr := &hashingReader{
		r: io.LimitReader(body, limit+1), limit: limit, declared: length,
		h256: sha256.New(), want256: wantSHA256,
	}
	putErr := r.store.Put(ctx, staging, hr, length)
	if hr.err != nil { // the typed reason wins over the store's wrapping of it
		return Target{}, hr.err
	}
	if putErr != nil {
		return Target{}, fmt.Errorf("storing upload of %s: %w", targetPath, putErr)
	}
	if length >= 0 {
		// A store given the size may stop reading at it without seeing EOF.
		if n, _ := io.ReadFull(hr, make([]byte, 1)); n > 0 || (hr.err != nil && !errors.Is(hr.err, ErrHashMismatch)) {
			return Target{}, fmt.Errorf("%w: body is longer than the declared %d bytes", ErrLengthMismatch, length)
		}
		if hr.err != nil {
			return Target{}, hr.err
		}
	}
	if hr.n == 0 {
		return Target{}, fmt.Errorf("%w: empty body", ErrInvalidTarget)
	}
	info, err := r.store.Stat(ctx, staging)
	if err != nil {
		return Target{}, fmt.Errorf("storing upload of %s: %w", targetPath, err)
	}
	if info.Size != hr.n {
		return Target{}, fmt.Errorf("storing upload of %s: store kept %d of %d bytes", targetPath, info.Size, hr.n)
	}
	t := Target{
		Path:   targetPath,
		Length: hr.n,
		SHA256: hex.EncodeToString(hr.h256.Sum(nil)),
	}
	if wantSHA256 != "" && t.SHA256 != wantSHA256 {
		return Target{}, fmt.Errorf("%w: body has sha256 %s, declared %s", ErrHashMismatch, t.SHA256, wantSHA256)
	}
	if err := blob.Copy(ctx, r.store, staging, TargetKey(targetPath, t.SHA256)); err != nil {
		return Target{}, fmt.Errorf("storing %s: %w", targetPath, err)
	}
	return t, nil
}

// hashingReader hashes and counts a body as the store reads it, and fails
// the read (so the store keeps nothing) on an empty, too long or too short body.
type hashingReader struct {
	r        io.Reader // limited to limit+1 bytes
	limit    int64
	declared int64 // -1 if unknown
	n        int64
	h256     hash.Hash
	want256  string // declared sha256 hex, or ""
	err      error  // why the body was refused
}

func (h *hashingReader) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	n, err := h.r.Read(p)
	if n > 0 {
		if h.n+int64(n) > h.limit {
			if h.declared >= 0 {
				h.err = fmt.Errorf("%w: body is longer than the declared %d bytes", ErrLengthMismatch, h.declared)
			} else {
				h.err = fmt.Errorf("%w: target body exceeds %d bytes", ErrTooLarge, h.limit)
			}
			return 0, h.err
		}
		h.n += int64(n)
		h.h256.Write(p[:n])
	}
	if errors.Is(err, io.EOF) {
		switch {
		case h.n == 0:
			h.err = fmt.Errorf("%w: empty body", ErrInvalidTarget)
		case h.declared >= 0 && h.n != h.declared:
			h.err = fmt.Errorf("%w: body has %d bytes, declared %d", ErrLengthMismatch, h.n, h.declared)
		case h.want256 != "":
			// Fail the store's read, so a multipart upload is aborted rather
			// than completed with the wrong bytes.
			if got := hex.EncodeToString(h.h256.Sum(nil)); got != h.want256 {
				h.err = fmt.Errorf("%w: body has sha256 %s, declared %s", ErrHashMismatch, got, h.want256)
			}
		}
		if h.err != nil {
			return n, h.err
		}
	}
	return n, err
}

func toTargetFiles(t Target) *metadata.TargetFiles {
	s256, _ := hex.DecodeString(t.SHA256)
	tf := &metadata.TargetFiles{
		Path:   t.Path,
		Length: t.Length,
		Hashes: metadata.Hashes{"sha256": s256},
	}
	if t.Custom != nil {
		c := json.RawMessage(clone(t.Custom))
		tf.Custom = &c
	}
	return tf
}

// fromTargetFiles reads signed target metadata. Hashes other than sha256
// (SHA-512, signed by Foster before it signed SHA-256 only) are ignored, so
// older repositories stay readable; clients still verify every signed hash.
func fromTargetFiles(p string, tf *metadata.TargetFiles) Target {
	t := Target{
		Path:   p,
		Length: tf.Length,
		SHA256: hex.EncodeToString(tf.Hashes["sha256"]),
	}
	if tf.Custom != nil {
		t.Custom = clone(*tf.Custom)
	}
	return t
}

// Targets returns every published release target (top-level, model roles
// and bins), sorted by path: not the group membership records (rollout.go).
func (r *Repo) Targets(ctx context.Context) ([]Target, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := r.cur.Load()
	var out []Target
	for _, rl := range st.roles {
		for p, tf := range rl.md.Signed.Targets {
			if rollout.IsMembershipPath(p) {
				continue
			}
			out = append(out, fromTargetFiles(p, tf))
		}
	}
	slices.SortFunc(out, func(a, b Target) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}
