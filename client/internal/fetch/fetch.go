// Package fetch streams a firmware target to disk while checking it against
// its signed TUF length and hashes, so an image is never buffered whole in
// memory and never trusted before it is verified.
//
// Threat model: the transport (and the blob store behind the server) is not
// trusted for content; only the TUF-signed length and hashes are. An endless
// or oversized body is cut off one byte after the signed length; a short or
// altered body fails the length or hash check. On any failure the partial
// file is removed, so nothing unverified is ever left for an installer.
package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
)

// Verification failures. They name the attack they stop in the error text.
var (
	ErrHashMismatch   = errors.New("hash mismatch")
	ErrLengthMismatch = errors.New("length mismatch")
	// ErrStalled is the cause when no byte arrived for the stall timeout.
	ErrStalled = errors.New("download stalled")
)

// DefaultStallTimeout aborts a download when no byte arrives for this long.
const DefaultStallTimeout = 60 * time.Second

// Expected is what signed metadata says a target is.
type Expected struct {
	Name   string
	Length int64  // bytes
	SHA256 []byte // required
	SHA512 []byte // checked when set
}

func (e Expected) validate() error {
	if e.Length < 0 {
		return fmt.Errorf("target %q: negative signed length", e.Name)
	}
	if len(e.SHA256) != sha256.Size {
		return fmt.Errorf("target %q: signed metadata carries no sha256 hash", e.Name)
	}
	if e.SHA512 != nil && len(e.SHA512) != sha512.Size {
		return fmt.Errorf("target %q: malformed sha512 hash", e.Name)
	}
	return nil
}

// Doer sends HTTP requests; *http.Client satisfies it.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Downloader streams targets. Safe for concurrent use if Client is.
type Downloader struct {
	Client Doer
	// StallTimeout aborts a download when no byte arrives for this long;
	// default DefaultStallTimeout. There is deliberately no overall timeout:
	// a slow link must still be able to fetch a large image.
	StallTimeout time.Duration
}

// Download GETs url into dst (created 0600, replacing any leftover) and
// verifies it against want. On success dst is fsynced; on any error dst is
// removed.
func (d *Downloader) Download(ctx context.Context, url, dst string, want Expected) (err error) {
	if err := want.validate(); err != nil {
		return err
	}
	stall := d.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(stall, func() { cancel(fmt.Errorf("%w: no data for %s", ErrStalled, stall)) })
	defer timer.Stop()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		return withCause(ctx, fmt.Errorf("downloading target %q: %w", want.Name, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("downloading target %q: %w", want.Name, apierr.FromResponse(resp))
	}
	if cl := resp.Header.Get("Content-Length"); cl != "" {
		if n, perr := strconv.ParseInt(cl, 10, 64); perr == nil && n > want.Length {
			return fmt.Errorf("%w for target %q: server announces %d bytes, signed length is %d",
				ErrLengthMismatch, want.Name, n, want.Length)
		}
	}

	// O_EXCL after removing any leftover: never write through a planted symlink.
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale %s: %w", dst, err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", dst, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	v := newVerifier(want)
	body := &progressReader{r: resp.Body, onProgress: func() { timer.Reset(stall) }}
	// Read at most one byte more than signed: enough to detect an oversized body.
	if _, err := io.Copy(io.MultiWriter(f, v), io.LimitReader(body, want.Length+1)); err != nil {
		err = withCause(ctx, err)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w for target %q: connection closed after %d of %d bytes: %w",
				ErrLengthMismatch, want.Name, v.n, want.Length, err)
		}
		return fmt.Errorf("downloading target %q: %w", want.Name, err)
	}
	if err := v.check(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dst, err)
	}
	return nil
}

// VerifyFile checks the file at path against want (used to re-check a staged
// image after a restart, and an installed one).
func VerifyFile(path string, want Expected) error {
	if err := want.validate(); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return Verify(f, want)
}

// Verify reads r (at most one byte past the signed length) and checks it against want.
func Verify(r io.Reader, want Expected) error {
	if err := want.validate(); err != nil {
		return err
	}
	v := newVerifier(want)
	if _, err := io.Copy(v, io.LimitReader(r, want.Length+1)); err != nil {
		return err
	}
	return v.check()
}

type verifier struct {
	want   Expected
	n      int64
	sha256 hash.Hash
	sha512 hash.Hash
}

func newVerifier(want Expected) *verifier {
	v := &verifier{want: want, sha256: sha256.New()}
	if want.SHA512 != nil {
		v.sha512 = sha512.New()
	}
	return v
}

func (v *verifier) Write(p []byte) (int, error) {
	v.n += int64(len(p))
	v.sha256.Write(p)
	if v.sha512 != nil {
		v.sha512.Write(p)
	}
	return len(p), nil
}

func (v *verifier) check() error {
	switch {
	case v.n > v.want.Length:
		return fmt.Errorf("%w for target %q: more than the signed %d bytes (endless data?)",
			ErrLengthMismatch, v.want.Name, v.want.Length)
	case v.n < v.want.Length:
		return fmt.Errorf("%w for target %q: got %d bytes, signed length is %d",
			ErrLengthMismatch, v.want.Name, v.n, v.want.Length)
	}
	if got := v.sha256.Sum(nil); subtle.ConstantTimeCompare(got, v.want.SHA256) != 1 {
		return fmt.Errorf("%w for target %q: sha256 is %x, signed %x", ErrHashMismatch, v.want.Name, got, v.want.SHA256)
	}
	if v.sha512 != nil {
		if got := v.sha512.Sum(nil); subtle.ConstantTimeCompare(got, v.want.SHA512) != 1 {
			return fmt.Errorf("%w for target %q: sha512 is %x, signed %x", ErrHashMismatch, v.want.Name, got, v.want.SHA512)
		}
	}
	return nil
}

type progressReader struct {
	r          io.Reader
	onProgress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onProgress()
	}
	return n, err
}

// withCause replaces a bare context error with the cancellation cause (stall).
func withCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.Canceled) && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%w (%w)", cause, err)
	}
	return err
}
