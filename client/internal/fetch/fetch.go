// Package fetch streams a firmware target to disk while checking it against
// its signed TUF length and hashes, so an image is never buffered whole in
// memory and never trusted before it is verified.
//
// Threat model: the transport (and the blob store behind the server) is not
// trusted for content; only the TUF-signed length and hashes are. An endless
// or oversized body is cut off one byte after the signed length; a short
// body is kept and resumed with an HTTP Range request later (the final hash
// covers every byte, whichever attempt delivered it); a body that completes
// with the wrong hash is discarded whole. A server that sends slower than a
// configured minimum rate (slow retrieval) or not at all (stall) is
// abandoned; the partial download stays for the next attempt.
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
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/client/internal/killpoint"
	"github.com/foster-ota/foster/pkg/apierr"
)

// Verification failures. They name the attack they stop in the error text.
var (
	// ErrHashMismatch: the complete body is not the signed image (tampered or arbitrary software).
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrLengthMismatch: the body is longer than signed (endless data) or the
	// server contradicts the signed length.
	ErrLengthMismatch = errors.New("length mismatch")
	// ErrTruncated: the body ended before the signed length; resumable.
	ErrTruncated = errors.New("truncated download")
	// ErrStalled: no byte arrived for the stall timeout; resumable.
	ErrStalled = errors.New("download stalled")
	// ErrSlowRetrieval: fewer bytes than the minimum rate over a window; resumable.
	ErrSlowRetrieval = errors.New("slow retrieval")
	// ErrBadExpectation: the signed metadata does not say enough to verify the image.
	ErrBadExpectation = errors.New("unverifiable target")
)

// Resumable reports whether a failed download may be continued from its
// durable part later (network trouble, a stall, a slow or truncated body),
// as opposed to a verification failure that condemns what was received.
func Resumable(err error) bool {
	return err != nil && !errors.Is(err, ErrHashMismatch) && !errors.Is(err, ErrLengthMismatch) && !errors.Is(err, ErrBadExpectation)
}

// Defaults.
const (
	DefaultStallTimeout    = 60 * time.Second
	DefaultRateWindow      = 60 * time.Second
	DefaultCheckpointEvery = 4 << 20 // bytes
	DefaultProgressEvery   = 10 * time.Second
)

// Expected is what signed metadata says a target is.
type Expected struct {
	Name   string
	Length int64  // bytes
	SHA256 []byte // Foster targets always carry it
	SHA512 []byte // checked when set; one of the two is required
}

func (e Expected) validate() error {
	if e.Length < 0 {
		return fmt.Errorf("%w: target %q: negative signed length", ErrBadExpectation, e.Name)
	}
	if e.SHA256 == nil && e.SHA512 == nil {
		return fmt.Errorf("%w: target %q: signed metadata carries no sha256 hash", ErrBadExpectation, e.Name)
	}
	if e.SHA256 != nil && len(e.SHA256) != sha256.Size {
		return fmt.Errorf("%w: target %q: malformed sha256 hash", ErrBadExpectation, e.Name)
	}
	if e.SHA512 != nil && len(e.SHA512) != sha512.Size {
		return fmt.Errorf("%w: target %q: malformed sha512 hash", ErrBadExpectation, e.Name)
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
	// MinRate (bytes/second), when positive, abandons a download that
	// receives fewer than MinRate*RateWindow bytes in a RateWindow.
	MinRate    int64
	RateWindow time.Duration // default DefaultRateWindow
	// CheckpointEvery is how many bytes are written between fsyncs that
	// make the partial download durable (and resumable); default 4 MiB.
	CheckpointEvery int64
	// Log receives progress of long downloads (every ProgressEvery).
	Log           *slog.Logger
	ProgressEvery time.Duration
}

// Request is one download.
type Request struct {
	URL  string
	Want Expected
	// Dest receives the bytes. Unless InPlace, it is created 0600 (replacing
	// a leftover) and removed when the body turns out to be bad.
	Dest string
	// InPlace writes into an existing file or block device (an A/B slot):
	// never created or removed; a regular file is truncated to the image.
	InPlace bool
	// Offset is how many bytes of Dest an interrupted attempt made durable:
	// they are re-hashed from disk and the rest is requested with Range.
	Offset int64
	// Checkpoint is called with the durable length after each fsync.
	Checkpoint func(durable int64) error
}

// Download fetches req.URL into req.Dest and verifies it against req.Want.
// On success Dest is fsynced. On a Resumable error the durable part stays;
// on a verification failure a non-InPlace Dest is removed.
func (d *Downloader) Download(ctx context.Context, req Request) (err error) {
	want := req.Want
	if err := want.validate(); err != nil {
		return err
	}
	if req.Offset < 0 || req.Offset > want.Length {
		req.Offset = 0
	}
	f, regular, err := openDest(req)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", req.Dest, cerr)
		}
		if err != nil && !Resumable(err) && !req.InPlace {
			os.Remove(req.Dest)
		}
	}()

	v := newVerifier(want)
	defer v.close()
	if req.Offset > 0 {
		// Re-hash what is on disk: only durable bytes are trusted to be there.
		if err := v.copyFrom(io.NewSectionReader(f, 0, req.Offset), nil, req.Offset, nil); err != nil || v.n != req.Offset {
			v.reset()
			req.Offset = 0
		}
	}
	if regular {
		if err := f.Truncate(req.Offset); err != nil {
			return fmt.Errorf("truncating %s: %w", req.Dest, err)
		}
	}
	if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
		return fmt.Errorf("seeking %s: %w", req.Dest, err)
	}
	if v.n < want.Length {
		if err := d.fetch(ctx, req, f, v); err != nil {
			return err
		}
	}
	if err := v.check(); err != nil {
		return err
	}
	if regular {
		if err := f.Truncate(want.Length); err != nil {
			return fmt.Errorf("truncating %s: %w", req.Dest, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", req.Dest, err)
	}
	return nil
}

func openDest(req Request) (f *os.File, regular bool, err error) {
	if req.InPlace {
		f, err = os.OpenFile(req.Dest, os.O_RDWR, 0)
	} else if req.Offset > 0 {
		f, err = os.OpenFile(req.Dest, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			req.Offset = 0
			return openDest(req)
		}
	} else {
		// O_EXCL after removing any leftover: never write through a planted symlink.
		if err := os.Remove(req.Dest); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, false, fmt.Errorf("removing stale %s: %w", req.Dest, err)
		}
		f, err = os.OpenFile(req.Dest, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return nil, false, fmt.Errorf("opening %s: %w", req.Dest, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, err
	}
	return f, fi.Mode().IsRegular(), nil
}

// fetch requests the bytes from v.n on and streams them into f.
func (d *Downloader) fetch(ctx context.Context, req Request, f *os.File, v *verifier) error {
	want := req.Want
	stall := cmpOr(d.StallTimeout, DefaultStallTimeout)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var received atomic.Int64
	timer := time.AfterFunc(stall, func() { cancel(fmt.Errorf("%w: no data for %s", ErrStalled, stall)) })
	defer timer.Stop()
	if d.MinRate > 0 {
		window := cmpOr(d.RateWindow, DefaultRateWindow)
		stop := d.watchRate(window, &received, cancel)
		defer stop()
	}

	start := v.n
	resp, err := d.get(ctx, req.URL, start)
	if err != nil {
		return withCause(ctx, fmt.Errorf("downloading target %q: %w", want.Name, err))
	}
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && start > 0 {
		// The server disagrees about what we have: start over.
		resp.Body.Close()
		if err := restart(f, v); err != nil {
			return err
		}
		start = 0
		if resp, err = d.get(ctx, req.URL, 0); err != nil {
			return withCause(ctx, fmt.Errorf("downloading target %q: %w", want.Name, err))
		}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && start > 0:
		if err := checkContentRange(resp.Header.Get("Content-Range"), start, want); err != nil {
			return err
		}
		if d.Log != nil {
			d.Log.Info("resuming download", "target", want.Name, "from", start, "of", want.Length)
		}
	case resp.StatusCode == http.StatusOK:
		if start > 0 {
			// The server ignored Range: start over.
			if err := restart(f, v); err != nil {
				return err
			}
			start = 0
		}
		if cl := resp.Header.Get("Content-Length"); cl != "" {
			if n, perr := strconv.ParseInt(cl, 10, 64); perr == nil && n > want.Length {
				return fmt.Errorf("%w for target %q: server announces %d bytes, signed length is %d (endless data?)",
					ErrLengthMismatch, want.Name, n, want.Length)
			}
		}
	default:
		return fmt.Errorf("downloading target %q: %w", want.Name, apierr.FromResponse(resp))
	}

	every := cmpOr(d.CheckpointEvery, DefaultCheckpointEvery)
	progressEvery := cmpOr(d.ProgressEvery, DefaultProgressEvery)
	lastSync, lastLog, began := start, time.Now(), time.Now()
	body := &progressReader{r: resp.Body, onProgress: func(n int) {
		timer.Reset(stall)
		received.Add(int64(n))
	}}
	err = v.copyFrom(body, f, want.Length, func(n int64) error {
		if n-lastSync >= every && n <= want.Length {
			if err := f.Sync(); err != nil {
				return fmt.Errorf("syncing %s: %w", req.Dest, err)
			}
			lastSync = n
			killpoint.Hit("download-checkpoint")
			if req.Checkpoint != nil {
				if err := req.Checkpoint(n); err != nil {
					return err
				}
			}
		}
		if d.Log != nil && time.Since(lastLog) >= progressEvery {
			lastLog = time.Now()
			d.Log.Info("downloading", progressAttrs(want, start, n, time.Since(began))...)
		}
		return nil
	})
	if err != nil {
		err = withCause(ctx, err)
		if errors.Is(err, ErrLengthMismatch) {
			return err
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: target %q: connection closed after %d of %d bytes: %w",
				ErrTruncated, want.Name, v.n, want.Length, err)
		}
		return fmt.Errorf("downloading target %q: %w", want.Name, err)
	}
	if v.n < want.Length {
		return fmt.Errorf("%w: target %q: got %d bytes, signed length is %d", ErrTruncated, want.Name, v.n, want.Length)
	}
	return nil
}

func (d *Downloader) get(ctx context.Context, url string, from int64) (*http.Response, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if from > 0 {
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	}
	return d.Client.Do(hreq)
}

// progressAttrs describes a download in flight: bytes so far, percent of
// the signed length, the rate since this request began (bytes from resumed
// ones excluded) and the time left at that rate.
func progressAttrs(want Expected, start, n int64, took time.Duration) []any {
	rate := float64(n-start) / max(took.Seconds(), 1e-3) // bytes/s
	eta := "unknown"
	if rate > 0 {
		eta = time.Duration(float64(want.Length-n) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return []any{"target", want.Name, "bytes", n, "of", want.Length,
		"percent", fmt.Sprintf("%.1f", 100*float64(n)/float64(max(want.Length, 1))),
		"rate_kib_s", int64(rate / 1024), "eta", eta}
}

// restart forgets the partial download.
func restart(f *os.File, v *verifier) error {
	v.reset()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		return f.Truncate(0)
	}
	return nil
}

// watchRate cancels the download when a window brings fewer than
// MinRate*window bytes.
func (d *Downloader) watchRate(window time.Duration, received *atomic.Int64, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(window)
		defer t.Stop()
		last := received.Load()
		floor := int64(float64(d.MinRate) * window.Seconds())
		for {
			select {
			case <-done:
				return
			case <-t.C:
				cur := received.Load()
				if cur-last < floor {
					cancel(fmt.Errorf("%w: %d bytes in %s, below the minimum of %d bytes/s", ErrSlowRetrieval, cur-last, window, d.MinRate))
					return
				}
				last = cur
			}
		}
	}()
	return func() { close(done) }
}

// checkContentRange accepts "bytes START-END/TOTAL" for the requested start
// whose total (when given) is the signed length.
func checkContentRange(h string, start int64, want Expected) error {
	spec, ok := strings.CutPrefix(h, "bytes ")
	rng, total, ok2 := strings.Cut(spec, "/")
	first, _, ok3 := strings.Cut(rng, "-")
	n, err := strconv.ParseInt(first, 10, 64)
	if !ok || !ok2 || !ok3 || err != nil || n != start {
		return fmt.Errorf("downloading target %q: bad Content-Range %q for a request from byte %d", want.Name, h, start)
	}
	if total != "*" {
		if t, err := strconv.ParseInt(total, 10, 64); err != nil || t != want.Length {
			return fmt.Errorf("%w for target %q: server says %s bytes, signed length is %d", ErrLengthMismatch, want.Name, total, want.Length)
		}
	}
	return nil
}

func cmpOr[T int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// VerifyFile checks the file at path against want: exactly the signed
// length, nothing after it.
func VerifyFile(path string, want Expected) error { return verifyPath(path, want, false) }

// VerifyPrefix checks the first want.Length bytes of path (a slot that is
// larger than the image).
func VerifyPrefix(path string, want Expected) error { return verifyPath(path, want, true) }

func verifyPath(path string, want Expected, prefix bool) error {
	if err := want.validate(); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if prefix {
		return Verify(io.LimitReader(f, want.Length), want)
	}
	return Verify(f, want)
}

// Verify reads r (at most one byte past the signed length) and checks it against want.
func Verify(r io.Reader, want Expected) error {
	if err := want.validate(); err != nil {
		return err
	}
	v := newVerifier(want)
	defer v.close()
	if err := v.copyFrom(r, nil, want.Length, nil); err != nil && !errors.Is(err, ErrLengthMismatch) {
		return err
	}
	return v.check()
}

// Buffers: SHA-512, when signed, is computed on a second goroutine so that
// checking both hashes costs about as much wall time as SHA-256 alone on a
// multi-core device. Four 128 KiB buffers bound the memory used.
const (
	bufSize = 128 << 10
	nbuf    = 4
)

type verifier struct {
	want Expected
	n    int64
	// main is SHA-256 (SHA-512 when it is the only signed hash); side is
	// SHA-512 next to SHA-256, on its own goroutine.
	main, side hash.Hash
	free       chan []byte
	work       chan []byte
	done       chan struct{}
}

func newVerifier(want Expected) *verifier {
	v := &verifier{want: want, main: sha256.New()}
	bufs := 1
	switch {
	case want.SHA256 == nil:
		v.main = sha512.New()
	case want.SHA512 != nil:
		bufs = nbuf
		v.side = sha512.New()
	}
	v.free = make(chan []byte, bufs)
	for range bufs {
		v.free <- make([]byte, bufSize)
	}
	v.start()
	return v
}

func (v *verifier) start() {
	if v.side == nil {
		return
	}
	v.work = make(chan []byte, nbuf)
	v.done = make(chan struct{})
	go func(work <-chan []byte, done chan<- struct{}) {
		for b := range work {
			v.side.Write(b)
			v.free <- b[:cap(b)]
		}
		close(done)
	}(v.work, v.done)
}

// close waits for the side hash to catch up. Idempotent.
func (v *verifier) close() {
	if v.work != nil {
		close(v.work)
		<-v.done
		v.work = nil
	}
}

// reset forgets everything hashed (a server that ignored Range).
func (v *verifier) reset() {
	v.close()
	v.n = 0
	v.main.Reset()
	if v.side != nil {
		v.side.Reset()
	}
	v.start()
}

// copyFrom hashes r (and writes it to w when set), reading at most one byte
// past max, and calls after with the running total after each chunk.
func (v *verifier) copyFrom(r io.Reader, w io.Writer, max int64, after func(n int64) error) error {
	for {
		b := <-v.free
		lim := int64(len(b))
		if rest := max + 1 - v.n; rest < lim {
			lim = rest
		}
		n, rerr := fill(r, b[:lim])
		if n > 0 {
			if w != nil {
				if _, err := w.Write(b[:n]); err != nil {
					v.free <- b
					return fmt.Errorf("writing image: %w", err)
				}
			}
			v.n += int64(n)
			v.main.Write(b[:n])
			if v.work != nil {
				v.work <- b[:n]
			} else {
				v.free <- b
			}
			if v.n > max {
				return fmt.Errorf("%w for target %q: more than the signed %d bytes (endless data?)",
					ErrLengthMismatch, v.want.Name, max)
			}
			if after != nil {
				if err := after(v.n); err != nil {
					return err
				}
			}
		} else {
			v.free <- b
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// fill reads until b is full or r fails.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (v *verifier) check() error {
	v.close()
	switch {
	case v.n > v.want.Length:
		return fmt.Errorf("%w for target %q: more than the signed %d bytes (endless data?)",
			ErrLengthMismatch, v.want.Name, v.want.Length)
	case v.n < v.want.Length:
		return fmt.Errorf("%w: target %q: got %d bytes, signed length is %d", ErrTruncated, v.want.Name, v.n, v.want.Length)
	}
	if v.want.SHA256 == nil {
		if got := v.main.Sum(nil); subtle.ConstantTimeCompare(got, v.want.SHA512) != 1 {
			return fmt.Errorf("%w for target %q: sha512 is %x, signed %x", ErrHashMismatch, v.want.Name, got, v.want.SHA512)
		}
		return nil
	}
	if got := v.main.Sum(nil); subtle.ConstantTimeCompare(got, v.want.SHA256) != 1 {
		return fmt.Errorf("%w for target %q: sha256 is %x, signed %x", ErrHashMismatch, v.want.Name, got, v.want.SHA256)
	}
	if v.side != nil {
		if got := v.side.Sum(nil); subtle.ConstantTimeCompare(got, v.want.SHA512) != 1 {
			return fmt.Errorf("%w for target %q: sha512 is %x, signed %x", ErrHashMismatch, v.want.Name, got, v.want.SHA512)
		}
	}
	return nil
}

type progressReader struct {
	r          io.Reader
	onProgress func(n int)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.onProgress(n)
	}
	return n, err
}

// withCause replaces a bare context error with the cancellation cause (stall, slow retrieval).
func withCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.Canceled) && !errors.Is(cause, context.Canceled) {
		return fmt.Errorf("%w (%w)", cause, err)
	}
	return err
}
