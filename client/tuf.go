package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/client/internal/tufclient"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// TUFOptions configures the TUF conformance client (`foster-agent tuf`),
// which runs the agent's own updater code (client/internal/tufclient and
// client/internal/fetch) against any TUF repository, without a device
// identity: the standard client test CLI of tuf-conformance.
type TUFOptions struct {
	// MetadataDir holds the trusted metadata under unversioned names (root.json, ...).
	MetadataDir string
	// MetadataURL is the repository's metadata base URL.
	MetadataURL string
	// TargetNames are downloaded in order; TargetBaseURL is the targets base URL;
	// TargetDir receives them (named by their escaped target path).
	TargetNames   []string
	TargetBaseURL string
	TargetDir     string
	// HTTP defaults to a client with a 60s timeout.
	HTTP *http.Client
	// RefTime is the reference time for expiry checks; zero: Go's clock.
	// The CLI sets it from the system's date (SystemDate), as the
	// reference TUF test clients do.
	RefTime time.Time
}

func (o *TUFOptions) client() *http.Client {
	if o.HTTP != nil {
		return o.HTTP
	}
	return &http.Client{Timeout: DefaultRequestTimeout}
}

// TUFInit copies the trusted root into dir (no network, no checks beyond size).
func TUFInit(dir, rootPath string) error {
	b, err := statedir.ReadBounded(rootPath, 512000)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, "root.json"), b, 0o644)
}

func (o *TUFOptions) updater(ctx context.Context) (*tufclient.Client, error) {
	if o.MetadataDir == "" || o.MetadataURL == "" {
		return nil, errors.New("--metadata-dir and --metadata-url are required")
	}
	tc, err := tufclient.New(ctx, tufclient.Config{
		MetadataURL: o.MetadataURL,
		TargetsURL:  o.TargetBaseURL,
		MetadataDir: o.MetadataDir,
		HTTP:        o.client(),
		UserAgent:   "foster-agent-tuf",
		RefTime:     o.RefTime,
	})
	if err != nil {
		return nil, err
	}
	if _, err := tc.Refresh(journal.Seen{}); err != nil {
		return nil, err
	}
	return tc, nil
}

// TUFRefresh runs the TUF client workflow for the top-level metadata.
func TUFRefresh(ctx context.Context, o TUFOptions) error {
	_, err := o.updater(ctx)
	return err
}

// TUFDownload refreshes once, then fetches each target in order with the
// same updater, stopping at the first failure. A target already in
// TargetDir with the signed length and hashes is not downloaded again.
func TUFDownload(ctx context.Context, o TUFOptions) error {
	if len(o.TargetNames) == 0 || o.TargetBaseURL == "" || o.TargetDir == "" {
		return errors.New("--target-name, --target-base-url and --target-dir are required")
	}
	tc, err := o.updater(ctx)
	if err != nil {
		return err
	}
	dl := &fetch.Downloader{Client: o.client(), StallTimeout: DefaultStallTimeout}
	for _, name := range o.TargetNames {
		tf, err := tc.TargetInfo(name)
		if err != nil {
			return fmt.Errorf("target %q: %w", name, err)
		}
		want := fetch.Expected{Name: name, Length: tf.Length, SHA256: tf.Hashes["sha256"], SHA512: tf.Hashes["sha512"]}
		dest := filepath.Join(o.TargetDir, url.PathEscape(name))
		if fetch.VerifyFile(dest, want) == nil {
			continue // cached
		}
		tmp := filepath.Join(o.TargetDir, "."+url.PathEscape(name)+".partial")
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err = dl.Download(ctx, fetch.Request{URL: tc.TargetURL(name, tf), Want: want, Dest: tmp})
		cancel()
		if err != nil {
			os.Remove(tmp)
			return err
		}
		if err := atomicfile.Rename(tmp, dest); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}

// SystemDate is the time as the system's date(1) tells it, for the TUF
// conformance client only. Go reads the clock with a vDSO call, not through
// libc, so libfaketime (which auditors and tuf-conformance use to test
// expiry) never moves time.Now; the reference clients of tuf-conformance
// take their reference time from the same place as date(1) does, which
// libfaketime does move. The agent's daemon keeps its own clock rule
// (docs/AGENT.md, "Time") and never calls this.
func SystemDate(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "date", "-u", "+%s").Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("asking the system's date for the reference time: %w", err)
	}
	secs, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("date -u +%%s printed %q: want seconds since 1970", bytes.TrimSpace(out))
	}
	return time.Unix(secs, 0).UTC(), nil
}
