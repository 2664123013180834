package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/foster-ota/foster/client/internal/bundlesrc"
	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/offline"
)

// Offline bundles (pkg/offline, docs/OFFLINE.md): a device that can never
// reach fosterd installs from a file, a directory or a plain HTTP mirror,
// through the very path an online update takes. The bundle is only a
// different repository to read from (client/internal/bundlesrc): the go-tuf
// client workflow with the device's trusted root and cache, the journal's
// rollback floor, the clock rule, the device policy (model, hardware id,
// release counter, min_from_version, rollout terms), the streamed and
// verified download, the installers, the journal and the signed
// attestation are all the online ones. The attestation waits in the outbox
// until the device next reaches fosterd (run).
//
// It runs in two passes. The first verifies everything (metadata against a
// scratch copy of the device's cache, the policy, and for a local source
// the image's length and hashes) and changes nothing: a bundle for another
// model, an older, tampered, foreign or expired one is refused with the
// device exactly as it was. Only then does the second pass update the
// trusted metadata and install, journalled like any install (a power cut
// resumes or rolls back).

// BundleOptions says where InstallBundle reads an offline bundle.
type BundleOptions struct {
	// Path is a bundle file (foster bundle export), or a directory: an
	// unpacked bundle, a copy of the repository (tuf/, targets/), or a
	// mounted USB stick holding one bundle file (*.tar).
	Path string
	// Mirror is the base URL of a plain HTTP(S) mirror of the repository
	// or of an unpacked bundle (MIRROR/tuf/, MIRROR/targets/ and, for a
	// bundle, MIRROR/bundle.json).
	Mirror string
	// VerifyOnly verifies everything and changes nothing on the device.
	VerifyOnly bool
}

// BundleReport says what InstallBundle did.
type BundleReport struct {
	Report
	// Source names the bundle, directory or mirror.
	Source string `json:"source"`
	// Offered is the release the bundle offers this device, as verified.
	Offered *Target `json:"offered,omitempty"`
	// Expires is when the bundle's timestamp expires.
	Expires time.Time `json:"expires,omitzero"`
	// Verified: metadata, device policy and (local sources) image verified.
	Verified bool `json:"verified"`
}

// ErrBundleRefused wraps a bundle's refusal before anything was verified
// (another model, an unreadable bundle).
var ErrBundleRefused = errors.New("bundle refused")

// maxCacheFiles bounds the metadata cache copied for the first pass.
const maxCacheFiles = 4096

// InstallBundle verifies an offline bundle and installs the release it
// carries (or, from a plain copy of the repository, the newest release for
// this device), exactly as RunOnce installs from fosterd, without any
// network access to fosterd. An install already in flight past its
// download is finished first (as RunOnce does): run again after the reboot
// an A/B install requests, install-bundle commits it.
func (a *Agent) InstallBundle(ctx context.Context, o BundleOptions) (*BundleReport, error) {
	if a.cfg.Installer == nil && !o.VerifyOnly {
		return nil, errors.New("no installer configured")
	}
	src, err := a.openBundle(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundleRefused, err)
	}
	defer src.Close()
	if m := src.Manifest; m != nil && m.Model != a.id.cfg.Model {
		return nil, fmt.Errorf("%w: bundle is for model %s, this device is %s", ErrBundleRefused, m.Model, a.id.cfg.Model)
	}
	unlock, err := a.layout.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := journal.Open(a.layout.State())
	if err != nil {
		return nil, err
	}
	j.SetClock(a.now)
	a.loadClock(j)
	rep := &BundleReport{Source: src.Name}
	defer func() {
		rep.AttestationsQueued = a.queuedCount()
		rep.Phase = string(j.State().Phase)
	}()
	if !o.VerifyOnly {
		// As RunOnce: sign what was journalled, finish what is in flight.
		if err := a.queueAttestations(j); err != nil {
			return rep, err
		}
		if err := a.drive(ctx, j, &rep.Report, true); err != nil || rep.Rebooting || rep.RolledBack != nil {
			return rep, rolledBack(&rep.Report, err)
		}
		// An A/B install of this very bundle, resumed after its reboot:
		// committed now, so there is nothing more to do.
		if rep.Installed != nil && (src.Manifest == nil || rep.Installed.SHA256 == src.Manifest.SHA256) {
			return rep, nil
		}
		rep.Installed, rep.Previous = nil, nil
	}
	bs := a.bundleSource(src)
	sel, err := a.verifyBundle(ctx, j, bs, src.Local)
	if err != nil {
		return rep, err
	}
	if sel == nil {
		rep.UpToDate = true
		a.log.Info("the bundle offers nothing newer for this device", "source", src.Name)
		return rep, nil
	}
	rep.Offered, rep.Expires, rep.Verified = &sel.target, sel.expires, true
	a.log.Info("bundle verified", "source", src.Name, "target", sel.target.Name, "version", sel.target.Version,
		"release_counter", sel.target.ReleaseCounter, "expires", sel.expires)
	if o.VerifyOnly {
		return rep, nil
	}
	// Second pass: the same checks on the device's own cache, then the
	// journalled install.
	sel, err = a.check(ctx, j, bs)
	if err != nil {
		return rep, err
	}
	if sel == nil || sel.target.SHA256 != rep.Offered.SHA256 {
		return rep, fmt.Errorf("%w: the bundle changed while it was being installed", ErrBundleRefused)
	}
	err = a.update(ctx, j, sel, &rep.Report)
	return rep, rolledBack(&rep.Report, err)
}

func (a *Agent) openBundle(ctx context.Context, o BundleOptions) (*bundlesrc.Source, error) {
	switch {
	case o.Path != "" && o.Mirror != "":
		return nil, errors.New("give a bundle path or a mirror, not both")
	case o.Mirror != "":
		return bundlesrc.Mirror(ctx, o.Mirror, nil)
	case o.Path != "":
		return bundlesrc.Open(o.Path)
	}
	return nil, errors.New("no bundle path or mirror given")
}

// bundleSource is src as a source for check and update.
func (a *Agent) bundleSource(src *bundlesrc.Source) source {
	hc := userAgent{d: src.HTTP, ua: a.cfg.UserAgent}
	s := source{
		metadataURL: src.MetadataURL,
		targetsURL:  src.TargetsURL,
		http:        hc,
		dl: &fetch.Downloader{
			Client:          hc,
			StallTimeout:    a.cfg.StallTimeout,
			MinRate:         a.cfg.MinRate,
			RateWindow:      a.cfg.RateWindow,
			CheckpointEvery: a.cfg.CheckpointEvery,
			Log:             a.log,
		},
		metadataDir: a.layout.TUFDir(),
		offline:     true,
	}
	if src.Manifest != nil {
		s.target = src.Manifest.Target
	}
	return s
}

// verifyBundle is the first pass: check against a scratch copy of the
// metadata cache (nothing on the device changes), then, for a local source,
// stream the image through the verifier.
func (a *Agent) verifyBundle(ctx context.Context, j *journal.Journal, src source, local bool) (*selection, error) {
	scratch, err := os.MkdirTemp("", "foster-bundle-check-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	if err := copyCache(a.layout.TUFDir(), scratch); err != nil {
		return nil, err
	}
	src.metadataDir, src.dryRun = scratch, true
	sel, err := a.check(ctx, j, src)
	if err != nil || sel == nil || !local {
		return sel, err
	}
	want, err := expected(sel.target)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sel.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := src.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the image of %s: %w", sel.target.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the bundle has no image for %s: %w", sel.target.Name, apierr.FromResponse(resp))
	}
	start := time.Now()
	if err := fetch.Verify(resp.Body, want); err != nil {
		return nil, err
	}
	a.log.Info("image verified", "target", sel.target.Name, "bytes", want.Length, "took", time.Since(start).Round(time.Millisecond))
	return sel, nil
}

// copyCache copies the regular files of the metadata cache (flat; go-tuf's
// and the delegated roles') into dir.
func copyCache(from, to string) error {
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	if len(ents) > maxCacheFiles {
		return fmt.Errorf("%s holds %d files, more than %d", from, len(ents), maxCacheFiles)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := statedir.ReadBounded(filepath.Join(from, e.Name()), offline.MaxMetadataSize)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
