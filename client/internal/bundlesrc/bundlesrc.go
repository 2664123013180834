// Package bundlesrc makes an offline bundle (pkg/offline) look like a
// repository to the agent's ordinary update path: a Doer that answers the
// requests go-tuf and client/internal/fetch make (GET tuf/<file>, GET
// targets/<path> with Range) from a bundle file, an unpacked bundle in a
// directory (a mounted USB stick), or a plain HTTP mirror of the repository
// or of an unpacked bundle. The agent then verifies it exactly as it
// verifies fosterd: nothing here decides what to trust.
//
// Threat model: the bundle and the mirror are untrusted. This package only
// keeps a reader within bounds: member names are checked (pkg/offline) and
// resolved inside the directory (os.Root: no symlink or ".." escapes it),
// only regular files are served, every size is bounded before it is read,
// and the image is served as a window on the file, never loaded.
package bundlesrc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/offline"
)

// Base URLs a local source answers under (never sent on a network).
const (
	localBase   = "http://bundle.invalid/"
	MetadataURL = localBase + "tuf/"
	TargetsURL  = localBase + "targets/"
)

// Source is an opened bundle, directory or mirror. Safe for concurrent use.
type Source struct {
	// Name describes the source in messages.
	Name string
	// MetadataURL and TargetsURL are the base URLs to give the TUF client
	// and the downloader, with HTTP.
	MetadataURL, TargetsURL string
	HTTP                    Doer
	// Manifest names the release the bundle carries; nil for a plain copy
	// of a repository (the agent then picks as online).
	Manifest *offline.Manifest
	// Local: the source is on this device (file or directory), so reading
	// the image twice costs no network.
	Local bool
	close func() error
}

// Doer sends HTTP requests; *http.Client satisfies it.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Close releases the source's file handles.
func (s *Source) Close() error {
	if s.close == nil {
		return nil
	}
	return s.close()
}

// Open opens a bundle file, or a directory holding an unpacked bundle (or a
// copy of a repository: tuf/ and targets/), or a directory holding exactly
// one bundle file (*.tar: a USB stick with the exported file on it).
func Open(path string) (*Source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return openFile(path)
	}
	root, err := os.OpenRoot(path)
	if err != nil {
		return nil, err
	}
	if st, err := root.Stat(offline.TimestampName); err != nil || !st.Mode().IsRegular() {
		root.Close()
		tars, _ := filepath.Glob(filepath.Join(path, "*.tar"))
		if len(tars) == 1 {
			return openFile(tars[0])
		}
		return nil, fmt.Errorf("%s holds neither an unpacked bundle (%s) nor exactly one bundle file (*.tar; it has %d)", path, offline.TimestampName, len(tars))
	}
	d := &dirSource{root: root}
	s := &Source{Name: "directory " + path, MetadataURL: MetadataURL, TargetsURL: TargetsURL, HTTP: local{d.open}, Local: true, close: root.Close}
	if b, err := d.readSmall(offline.ManifestName); err == nil {
		if s.Manifest, err = offline.ParseManifest(b); err != nil {
			root.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		root.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func openFile(path string) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	a, err := offline.ReadArchive(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, err := a.Manifest()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	open := func(name string) (io.ReaderAt, int64, func() error, error) {
		r, ok := a.Open(name)
		if !ok {
			return nil, 0, nil, fs.ErrNotExist
		}
		return r, r.Size(), nil, nil
	}
	return &Source{Name: "bundle " + path, MetadataURL: MetadataURL, TargetsURL: TargetsURL, HTTP: local{open},
		Manifest: m, Local: true, close: f.Close}, nil
}

// dirSource reads members from a directory, confined to it.
type dirSource struct{ root *os.Root }

func (d *dirSource) open(name string) (io.ReaderAt, int64, func() error, error) {
	f, err := d.root.Open(filepath.FromSlash(name))
	if err != nil {
		return nil, 0, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, nil, fmt.Errorf("%w: %s is not a regular file", offline.ErrMalformed, name)
	}
	if fi.Size() > offline.SizeLimit(name) {
		f.Close()
		return nil, 0, nil, fmt.Errorf("%w: %s has %d bytes (at most %d)", offline.ErrMalformed, name, fi.Size(), offline.SizeLimit(name))
	}
	return f, fi.Size(), f.Close, nil
}

func (d *dirSource) readSmall(name string) ([]byte, error) {
	r, size, closeFn, err := d.open(name)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	b := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(r, 0, size), b); err != nil {
		return nil, err
	}
	return b, nil
}

// local answers GET requests for members, honouring "Range: bytes=N-"
// (the only form the downloader sends, to resume).
type local struct {
	open func(name string) (r io.ReaderAt, size int64, closeFn func() error, err error)
}

func (l local) Do(req *http.Request) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	resp := func(code int, body io.ReadCloser, size int64) *http.Response {
		return &http.Response{StatusCode: code, Status: strconv.Itoa(code) + " " + http.StatusText(code),
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: body, ContentLength: size, Request: req}
	}
	empty := func(code int) (*http.Response, error) { return resp(code, http.NoBody, 0), nil }
	if req.Method != http.MethodGet {
		return empty(http.StatusMethodNotAllowed)
	}
	name := strings.TrimPrefix(req.URL.Path, "/")
	if offline.ValidName(name) != nil || !(strings.HasPrefix(name, offline.MetadataDir) || strings.HasPrefix(name, offline.TargetsDir)) {
		return empty(http.StatusNotFound)
	}
	r, size, closeFn, err := l.open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return empty(http.StatusNotFound)
	}
	if err != nil {
		return nil, err
	}
	if closeFn == nil {
		closeFn = func() error { return nil }
	}
	var from int64
	if h := req.Header.Get("Range"); h != "" {
		spec, ok := strings.CutPrefix(h, "bytes=")
		n, err := strconv.ParseInt(strings.TrimSuffix(spec, "-"), 10, 64)
		if ok && strings.HasSuffix(spec, "-") && err == nil && n >= 0 {
			if n >= size && size > 0 {
				closeFn()
				r := resp(http.StatusRequestedRangeNotSatisfiable, http.NoBody, 0)
				r.Header.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
				return r, nil
			}
			from = n
		}
	}
	body := &readCloser{Reader: ctxReader{req.Context(), io.NewSectionReader(r, from, size-from)}, close: closeFn}
	if from > 0 {
		out := resp(http.StatusPartialContent, body, size-from)
		out.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, size-1, size))
		return out, nil
	}
	out := resp(http.StatusOK, body, size)
	out.Header.Set("Content-Length", strconv.FormatInt(size, 10))
	return out, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }

// ctxReader stops reading when the request's context ends (shutdown).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Mirror timeouts bound a mirror's connection setup and first response
// byte; a transfer has no overall timeout (the downloader's stall timeout
// applies), so a slow link still fetches a large image.
const (
	mirrorDialTimeout   = 30 * time.Second
	mirrorHeaderTimeout = 60 * time.Second
)

// Mirror opens a plain HTTP(S) mirror: BASE/tuf/..., BASE/targets/...,
// and BASE/bundle.json when it mirrors a bundle. client nil: a client
// with the system's roots and the timeouts above.
func Mirror(ctx context.Context, base string, client *http.Client) (*Source, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("mirror %q: want http://HOST/PATH/ or https://HOST/PATH/ without user info, query or fragment", base)
	}
	base = strings.TrimSuffix(u.String(), "/") + "/"
	if client == nil {
		tr := &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: mirrorDialTimeout}).DialContext,
			TLSHandshakeTimeout:   mirrorDialTimeout,
			ResponseHeaderTimeout: mirrorHeaderTimeout,
		}
		client = &http.Client{Transport: tr}
	}
	s := &Source{Name: "mirror " + base, MetadataURL: base + "tuf/", TargetsURL: base + "targets/", HTTP: client}
	ctx, cancel := context.WithTimeout(ctx, mirrorHeaderTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+offline.ManifestName, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mirror %s: %w", base, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		b, err := io.ReadAll(io.LimitReader(resp.Body, offline.MaxManifestSize+1))
		if err != nil {
			return nil, fmt.Errorf("mirror %s: reading %s: %w", base, offline.ManifestName, err)
		}
		if s.Manifest, err = offline.ParseManifest(b); err != nil {
			return nil, fmt.Errorf("mirror %s: %w", base, err)
		}
	case http.StatusNotFound:
		// A mirror of the repository itself: no manifest.
	default:
		return nil, fmt.Errorf("mirror %s: GET %s: %s", base, offline.ManifestName, resp.Status)
	}
	return s, nil
}
