package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/offline"
)

// bundleSummary is what `foster bundle export --json` prints: the file
// written and its manifest (pkg/offline, docs/OFFLINE.md).
type bundleSummary struct {
	File string `json:"file"`
	Size int64  `json:"size"` // bytes
	offline.Manifest
}

func cmdBundleExport(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bundle export", "bundle export --model M [--version V] [--hardware-id H] [--lifetime 720h] --out FILE [--json]\n\n"+
		"Writes one self-contained file for a device that can never reach fosterd (docs/OFFLINE.md): every TUF root\n"+
		"version, the current metadata with a timestamp signed for the bundle (same versions, longer lifetime), the\n"+
		"model's role, the image, the CA certificates and the CRL. On the device: foster-agent install-bundle FILE.", stderr)
	model := fs.String("model", "", "device model (required)")
	version := fs.String("version", "", "release to carry (default: the newest full image offered to every device of the model and hardware id)")
	hw := fs.String("hardware-id", "", "hardware id of the devices the bundle is for (default: an image that lists none, when --version is not given)")
	lifetime := fs.Duration("lifetime", 0, "how long the bundle stays valid (default: the server's tuf_lifetimes.bundle, 720h; at most its bundle_max)")
	out := fs.String("out", "", "file to write (required); written atomically")
	asJSON := fs.Bool("json", false, "print the manifest of the written bundle as JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *model == "" || *out == "" {
		return usageError(fs, "--model and --out are required")
	}
	if *lifetime < 0 || *lifetime%time.Second != 0 {
		return usageError(fs, "--lifetime must be a positive whole number of seconds")
	}
	if fi, err := os.Stat(*out); err == nil && fi.IsDir() {
		return fmt.Errorf("--out %s is a directory: give a file name", *out)
	}
	body, _ := json.Marshal(map[string]any{"model": *model, "version": *version, "hardware_id": *hw, "lifetime_seconds": int64(lifetime.Seconds())})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath("/v1/bundles").String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("contacting %s: %w", c.base.Host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apierr.FromResponse(resp)
	}
	var written int64
	err = atomicfile.WriteFrom(*out, 0o644, func(w io.Writer) error {
		cw := &countingWriter{w: w}
		err := checkBundleStream(io.TeeReader(resp.Body, cw), stderr)
		written = cw.n
		return err
	})
	if err != nil {
		return fmt.Errorf("exporting the bundle: %w", err)
	}
	// Read back what was written: the table of contents and the manifest.
	f, err := os.Open(*out)
	if err != nil {
		return err
	}
	defer f.Close()
	a, err := offline.ReadArchive(f, written)
	if err != nil {
		return fmt.Errorf("%s: %w", *out, err)
	}
	m, err := a.Manifest()
	if err != nil || m == nil {
		return fmt.Errorf("%s: no valid manifest: %v", *out, err)
	}
	if *asJSON {
		return printJSON(stdout, bundleSummary{File: absPath(*out), Size: written, Manifest: *m})
	}
	hwNote := "any hardware id"
	if len(m.HardwareIDs) > 0 {
		hwNote = "hardware ids " + strings.Join(m.HardwareIDs, ", ")
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes)\n", *out, written)
	table(stdout, "FIELD\tVALUE", [][]string{
		{"release", fmt.Sprintf("%s %s (release counter %d, %s)", m.Model, m.Version, m.ReleaseCounter, hwNote)},
		{"target", m.Target},
		{"image", fmt.Sprintf("%d bytes, sha256 %s", m.Length, m.SHA256)},
		{"metadata", fmt.Sprintf("root v%d, timestamp v%d, snapshot v%d, targets v%d", m.Metadata.Root, m.Metadata.Timestamp, m.Metadata.Snapshot, m.Metadata.Targets)},
		{"valid until", fmtTime(m.Expires)},
		{"staged", orDash(m.Staged)},
		{"min from version", orDash(m.MinFromVersion)},
	})
	fmt.Fprintf(stdout, "\nOn the device: foster-agent install-bundle %s\n", *out)
	return nil
}

// checkBundleStream reads a bundle as it is written to disk: every member
// name and size within pkg/offline's bounds, a manifest first, and an image
// whose length and SHA-256 match it, so a stream cut short or garbled in
// transit is never left behind as a bundle. (The device trusts none of it
// without verifying the signatures; this only catches transport damage.)
func checkBundleStream(r io.Reader, stderr io.Writer) error {
	tr := tar.NewReader(r)
	var m *offline.Manifest
	sawImage := false
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("the server's answer is not a complete bundle: %w", err)
		}
		if n >= offline.MaxMembers || hdr.Typeflag != tar.TypeReg || offline.ValidName(hdr.Name) != nil || hdr.Size > offline.SizeLimit(hdr.Name) {
			return fmt.Errorf("the server's answer holds an unexpected member %q", hdr.Name)
		}
		switch {
		case n == 0:
			if hdr.Name != offline.ManifestName {
				return fmt.Errorf("the bundle does not start with %s", offline.ManifestName)
			}
			b, err := io.ReadAll(io.LimitReader(tr, offline.MaxManifestSize+1))
			if err != nil {
				return err
			}
			if m, err = offline.ParseManifest(b); err != nil {
				return err
			}
		case m != nil && hdr.Name == m.Image:
			var src io.Reader = tr
			if hdr.Size >= progressThreshold {
				src = newProgress(tr, stderr, "receiving", hdr.Size)
			}
			h := sha256.New()
			got, err := io.Copy(h, src)
			if err != nil {
				return fmt.Errorf("receiving the image: %w", err)
			}
			if got != m.Length || hex.EncodeToString(h.Sum(nil)) != m.SHA256 {
				return fmt.Errorf("the image received (%d bytes, sha256 %x) is not the one the manifest names (%d bytes, sha256 %s)", got, h.Sum(nil), m.Length, m.SHA256)
			}
			sawImage = true
		}
	}
	if m == nil || !sawImage {
		return errors.New("the server's answer is not a complete bundle (no manifest or no image)")
	}
	_, err := io.Copy(io.Discard, io.LimitReader(r, 1<<20)) // the archive's padding
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
