// Package blob is Foster's object store for TUF metadata and firmware
// targets: a small interface with a local-filesystem implementation (the
// embedded default) and an S3 one (AWS S3 or any S3-compatible server).
//
// Threat model: keys reach the store from HTTP paths and admin uploads, so
// every method validates its key with ValidKey before touching storage; a
// key can never name anything outside the store (no "..", no absolute paths,
// no backslashes or control characters). Writes are atomic: a reader, or a
// crash, sees either the previous object or the complete new one, which is
// what lets the TUF publisher (ota/tufrepo) make releases atomic for devices.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxKeyLength bounds keys (S3's own limit is 1024 bytes of UTF-8).
const MaxKeyLength = 1024 // bytes

var (
	// ErrNotFound is wrapped by errors for objects that do not exist.
	ErrNotFound = errors.New("blob not found")
	// ErrBadKey is wrapped by errors for keys that ValidKey rejects.
	ErrBadKey = errors.New("invalid blob key")
	// ErrSizeMismatch is wrapped when a Put body's length differs from the
	// size the caller declared.
	ErrSizeMismatch = errors.New("blob size mismatch")
)

// Store is Foster's blob store contract: TUF metadata and firmware targets.
// Implementations are safe for concurrent use. The shared contract test
// suite is ota/blob/blobtest.
type Store interface {
	// Put stores r under key atomically: readers see the old object or the
	// complete new one, never a partial one. size may be -1 if unknown; when
	// it is >= 0, a body of any other length is refused (ErrSizeMismatch) and
	// nothing is stored.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open returns the object for reading with seeking (for HTTP Range).
	// Returns an error wrapping ErrNotFound if missing. The caller closes it.
	Open(ctx context.Context, key string) (ReadSeekCloser, Info, error)
	// Stat returns the object's Info, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes key. Deleting a missing key is not an error (as in S3).
	Delete(ctx context.Context, key string) error
	// List returns the keys that start with prefix (a plain string prefix,
	// as in S3, not necessarily ending in "/"), sorted bytewise.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Copier is implemented by stores that copy an object without streaming it
// through the caller (FS: hard link; S3: CopyObject). Use the Copy function,
// which falls back to Open + Put for other stores.
type Copier interface {
	// Copy atomically makes dst an object with src's content.
	Copy(ctx context.Context, src, dst string) error
}

// ReadSeekCloser is an object opened for reading.
type ReadSeekCloser interface {
	io.ReadSeeker
	io.Closer
}

// Info describes a stored object.
type Info struct {
	Key     string
	Size    int64 // bytes
	ModTime time.Time
	// ETag is an opaque, unquoted validator that changes when the content
	// is replaced; the HTTP layer quotes it.
	ETag string
}

// ValidKey reports whether key is acceptable to every Store: a
// slash-separated relative path of non-empty segments, none of which is "."
// or ".." or starts with "." (the FS store's temporary files do), with no
// backslash, NUL or other control character, at most MaxKeyLength bytes of
// valid UTF-8. The error wraps ErrBadKey.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrBadKey)
	}
	if len(key) > MaxKeyLength {
		return fmt.Errorf("%w: longer than %d bytes", ErrBadKey, MaxKeyLength)
	}
	if err := checkChars(key); err != nil {
		return err
	}
	if strings.HasPrefix(key, "/") {
		return fmt.Errorf("%w: %q is absolute", ErrBadKey, key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" {
			return fmt.Errorf("%w: %q has an empty path segment", ErrBadKey, key)
		}
		if seg[0] == '.' {
			return fmt.Errorf("%w: %q has a segment starting with '.'", ErrBadKey, key)
		}
	}
	return nil
}

// ValidPrefix reports whether prefix is acceptable to List: empty, or the
// beginning of a valid key (it may end in "/" or in the middle of a
// segment). The error wraps ErrBadKey.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if len(prefix) > MaxKeyLength {
		return fmt.Errorf("%w: prefix longer than %d bytes", ErrBadKey, MaxKeyLength)
	}
	if err := checkChars(prefix); err != nil {
		return err
	}
	if strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("%w: prefix %q is absolute", ErrBadKey, prefix)
	}
	segs := strings.Split(prefix, "/")
	for i, seg := range segs {
		last := i == len(segs)-1
		if seg == "" && !last {
			return fmt.Errorf("%w: prefix %q has an empty path segment", ErrBadKey, prefix)
		}
		if seg != "" && seg[0] == '.' {
			return fmt.Errorf("%w: prefix %q has a segment starting with '.'", ErrBadKey, prefix)
		}
	}
	return nil
}

func checkChars(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: not valid UTF-8", ErrBadKey)
	}
	for i, r := range s {
		switch {
		case unicode.IsControl(r):
			return fmt.Errorf("%w: control character at byte %d", ErrBadKey, i)
		case r == '\\':
			return fmt.Errorf("%w: backslash at byte %d", ErrBadKey, i)
		}
	}
	return nil
}

// Copy makes dst an object with src's content, atomically for readers of
// dst. It uses the store's Copier when it has one, else streams Open + Put.
func Copy(ctx context.Context, s Store, src, dst string) error {
	if c, ok := s.(Copier); ok {
		return c.Copy(ctx, src, dst)
	}
	rc, info, err := s.Open(ctx, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := s.Put(ctx, dst, rc, info.Size); err != nil {
		return fmt.Errorf("copying %q to %q: %w", src, dst, err)
	}
	return nil
}

// Open opens the blob store named by url:
//
//	file:/abs/path, file:///abs/path, file:rel/path, or a plain path  -> FS
//	s3://bucket[/prefix][?endpoint=...&region=...&path-style=true]     -> S3 (see NewS3)
//
// Opening does not contact an S3 server; see (*S3).Check.
func Open(ctx context.Context, url string) (Store, error) {
	switch {
	case url == "":
		return nil, errors.New("empty blob store URL")
	case strings.HasPrefix(url, "file://"):
		rest := strings.TrimPrefix(url, "file://")
		if !strings.HasPrefix(rest, "/") {
			return nil, fmt.Errorf("blob store URL %q: file:// URLs must have an empty host (file:///abs/path)", url)
		}
		return asStore(NewFS(rest))
	case strings.HasPrefix(url, "file:"):
		return asStore(NewFS(strings.TrimPrefix(url, "file:")))
	case strings.HasPrefix(url, "s3://"):
		return asStore(NewS3(ctx, url))
	case strings.Contains(url, "://"):
		return nil, fmt.Errorf("unsupported blob store URL %q: want file: or s3://", url)
	default:
		return asStore(NewFS(url))
	}
}

// asStore keeps a failed constructor's nil pointer from becoming a non-nil
// Store.
func asStore[S Store](s S, err error) (Store, error) {
	if err != nil {
		return nil, err
	}
	return s, nil
}
