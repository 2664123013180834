package logreport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// Source is where the evidence comes from: fosterd's API (HTTPSource) or a
// log export (DirSource). Nothing a Source returns is trusted: Build
// verifies all of it.
type Source interface {
	// String names the source in reports and errors.
	String() string
	// Checkpoint returns the log's signed checkpoint.
	Checkpoint(ctx context.Context) ([]byte, error)
	// Entries calls fn with the leaves start, start+1, ... up to end
	// (exclusive), in order, and stops at fn's first error. A source
	// holding fewer leaves ends early without error (Build tells); one
	// holding more than end says so with ErrExtraEntries.
	Entries(ctx context.Context, start, end int64, fn func(leaf []byte) error) error
	// TUF returns a go-tuf fetcher of the repository's metadata and the
	// base URL it serves the metadata files under.
	TUF() (fetcher.Fetcher, string)
}

// ErrExtraEntries: the source holds entries beyond the checkpoint, which
// no signed checkpoint covers.
var ErrExtraEntries = errors.New("entries not covered by the checkpoint")

// Export directory layout (`foster audit export-log --out DIR`).
const (
	// CheckpointFile is the signed checkpoint the export covers.
	CheckpointFile = "checkpoint"
	// EntriesFile holds the log's leaves, one a line, in index order: each
	// leaf is compact JSON (docs/ATTESTATIONS.md), so it holds no newline.
	EntriesFile = "entries.jsonl"
	// TUFDir holds the repository's metadata files, named as served.
	TUFDir = "tuf"
)

// HTTPSource reads fosterd's log and TUF APIs. Entries need an admin or
// auditor certificate in Client.
type HTTPSource struct {
	Base   *url.URL
	Client *http.Client
}

func (s *HTTPSource) String() string { return s.Base.String() }

// Checkpoint fetches GET /v1/log/checkpoint.
func (s *HTTPSource) Checkpoint(ctx context.Context) ([]byte, error) {
	return s.get(ctx, "/v1/log/checkpoint", "", tlogverify.MaxCheckpointSize)
}

// maxPageBytes bounds one answer of GET /v1/log/entries: fosterd sends at
// most 8 MiB of leaves, which base64 and JSON make about 11 MiB.
const maxPageBytes = 16 << 20

// Entries pages through GET /v1/log/entries, fetching the next page while
// fn works on this one.
func (s *HTTPSource) Entries(ctx context.Context, start, end int64, fn func(leaf []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type page struct {
		entries [][]byte
		err     error
	}
	pages := make(chan page, 2)
	go func() {
		defer close(pages)
		for next := start; next < end; {
			raw, err := s.get(ctx, "/v1/log/entries", fmt.Sprintf("start=%d&end=%d", next, end), maxPageBytes)
			var resp struct {
				Start   int64    `json:"start"`
				Entries [][]byte `json:"entries"`
			}
			if err == nil {
				if err = json.Unmarshal(raw, &resp); err != nil {
					err = fmt.Errorf("entries from %d: %w", next, err)
				} else if resp.Start != next || len(resp.Entries) == 0 {
					err = fmt.Errorf("entries from %d: the server answered %d entries from %d", next, len(resp.Entries), resp.Start)
				}
			}
			if err != nil {
				select {
				case pages <- page{err: err}:
				case <-ctx.Done():
				}
				return
			}
			if over := next + int64(len(resp.Entries)) - end; over > 0 {
				resp.Entries = resp.Entries[:int64(len(resp.Entries))-over]
			}
			next += int64(len(resp.Entries))
			select {
			case pages <- page{entries: resp.Entries}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for p := range pages {
		if p.err != nil {
			return p.err
		}
		for _, e := range p.entries {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// TUF reads /tuf/ with the same client.
func (s *HTTPSource) TUF() (fetcher.Fetcher, string) {
	f := fetcher.NewDefaultFetcher()
	f.SetHTTPClient(s.Client)
	return f, s.Base.JoinPath("tuf").String()
}

func (s *HTTPSource) get(ctx context.Context, path, query string, limit int64) ([]byte, error) {
	u := s.Base.JoinPath(path)
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("contacting %s: %w", s.Base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %w", path, apierr.FromResponse(resp))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: answer larger than %d bytes", path, limit)
	}
	return b, nil
}

// DirSource reads a log export (the layout above): the auditor needs no
// access to the operator's systems.
type DirSource struct {
	Dir string
}

func (s *DirSource) String() string { return s.Dir }

// Checkpoint reads DIR/checkpoint.
func (s *DirSource) Checkpoint(context.Context) ([]byte, error) {
	b, err := readBounded(filepath.Join(s.Dir, CheckpointFile), tlogverify.MaxCheckpointSize)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a log export (no %s): %w", s.Dir, CheckpointFile, err)
	}
	return b, err
}

// Entries streams DIR/entries.jsonl.
func (s *DirSource) Entries(ctx context.Context, start, end int64, fn func(leaf []byte) error) error {
	f, err := os.Open(filepath.Join(s.Dir, EntriesFile))
	if err != nil {
		return fmt.Errorf("%s is not a log export: %w", s.Dir, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(bufio.NewReaderSize(f, 1<<20))
	sc.Buffer(make([]byte, 0, 64<<10), bundle.MaxEntrySize+1)
	for i := int64(0); sc.Scan(); i++ {
		if i >= end {
			return fmt.Errorf("%w: %s holds more than the %d entries of its checkpoint", ErrExtraEntries, EntriesFile, end)
		}
		if i%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if i < start {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%w: %s: a line longer than %d bytes (entry limit)", bundle.ErrMalformed, EntriesFile, bundle.MaxEntrySize)
		}
		return fmt.Errorf("reading %s: %w", EntriesFile, err)
	}
	return nil
}

// TUF serves DIR/tuf/<name>.
func (s *DirSource) TUF() (fetcher.Fetcher, string) {
	return dirFetcher{dir: filepath.Join(s.Dir, TUFDir)}, dirBase
}

// dirBase is the URL a DirSource's metadata is "served" under.
const dirBase = "file:///export/tuf"

// dirFetcher answers go-tuf from a directory, with 404 for a missing file
// (which ends go-tuf's walk through root versions).
type dirFetcher struct{ dir string }

func (d dirFetcher) DownloadFile(u string, maxLength int64, _ time.Duration) ([]byte, error) {
	name, ok := strings.CutPrefix(u, dirBase+"/")
	if !ok || name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: http.StatusNotFound, URL: u}
	}
	b, err := readBounded(filepath.Join(d.dir, name), maxLength)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, &metadata.ErrDownloadHTTP{StatusCode: http.StatusNotFound, URL: u}
	case errors.Is(err, errTooLarge):
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is larger than %d bytes", name, maxLength)}
	}
	return b, err
}

var errTooLarge = errors.New("file too large")

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: %w (limit %d bytes)", path, errTooLarge, limit)
	}
	return b, nil
}
