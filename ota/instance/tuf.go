package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/sigstore/sigstore/pkg/signature"
)

// DefaultModelKey is the key that signs models/<model> roles of a new
// instance (online, so `foster release add` publishes without the offline
// root and targets keys).
const DefaultModelKey = "keys/tuf-models.key"

// DistributionConfig is config.json's "distribution": how devices fetch
// metadata and targets (docs/TUF.md).
type DistributionConfig struct {
	// Public serves /tuf/ and /targets/ without a client certificate, to any
	// TUF client holding root.json. Default false (enrolled devices only).
	Public bool `json:"public,omitempty"`
	// TargetRedirect "presign" answers target downloads with a redirect to
	// a presigned S3 URL (needs an s3:// blob store); "" streams them
	// through fosterd.
	TargetRedirect string `json:"target_redirect,omitempty"`
	// PresignTTL is how long redirect URLs stay valid (Go duration, default 15m).
	PresignTTL string `json:"presign_ttl,omitempty"`
}

// openRepoBlobs opens the blob store, checks that an S3 bucket is
// reachable (so a misconfigured store fails at startup, not at the first
// device download), and validates the distribution settings against it.
func openRepoBlobs(ctx context.Context, dir string, cfg *Config) (blob.Store, error) {
	blobs, err := openBlobs(ctx, dir, cfg.Blobs)
	if err != nil {
		return nil, err
	}
	s3, isS3 := blobs.(*blob.S3)
	if isS3 {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s3.Check(cctx); err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
	}
	switch d := cfg.Distribution; d.TargetRedirect {
	case "":
	case "presign":
		if !isS3 {
			return nil, fmt.Errorf("distribution.target_redirect %q needs an s3:// blob store, not %s", d.TargetRedirect, cfg.Blobs)
		}
	default:
		return nil, fmt.Errorf("distribution.target_redirect %q: want \"presign\" or empty", d.TargetRedirect)
	}
	if _, err := presignTTL(cfg.Distribution); err != nil {
		return nil, err
	}
	return blobs, nil
}

func presignTTL(d DistributionConfig) (time.Duration, error) {
	if d.PresignTTL == "" {
		return 0, nil
	}
	ttl, err := time.ParseDuration(d.PresignTTL)
	if err != nil || ttl <= 0 || ttl > blob.MaxPresignTTL {
		return 0, fmt.Errorf("distribution.presign_ttl %q: want a duration up to %s", d.PresignTTL, blob.MaxPresignTTL)
	}
	return ttl, nil
}

// distribution turns the (validated) config into the server's settings.
func distribution(d DistributionConfig, blobs blob.Store) server.Distribution {
	out := server.Distribution{Public: d.Public}
	if s3, ok := blobs.(*blob.S3); ok && d.TargetRedirect == "presign" {
		out.Presign = s3.Presign
		out.PresignTTL, _ = presignTTL(d)
	}
	return out
}

// applyOverrides applies the fosterd flags that tune distribution.
func (d *DistributionConfig) applyOverrides(ov Overrides) {
	if ov.TargetRedirect != "" {
		d.TargetRedirect = ov.TargetRedirect
		if ov.TargetRedirect == "none" {
			d.TargetRedirect = ""
		}
	}
	if ov.PublicRepository {
		d.Public = true
	}
}

// loadRepoKeys loads the TUF keys fosterd holds with loadRef. An empty
// reference means the key is offline (root and targets in production):
// operations that need it fail with a pointer to the ceremony (foster tuf
// ...).
func loadRepoKeys(refs TUFKeyRefs, loadRef func(ref string) (signature.Signer, error)) (tufrepo.Keys, error) {
	load := func(ref string) (signature.Signer, error) {
		if ref == "" {
			return nil, nil
		}
		return loadRef(ref)
	}
	var k tufrepo.Keys
	var err error
	for _, x := range []struct {
		ref string
		dst *signature.Signer
	}{
		{refs.Root, &k.Root}, {refs.Targets, &k.Targets}, {refs.Snapshot, &k.Snapshot}, {refs.Timestamp, &k.Timestamp},
	} {
		if *x.dst, err = load(x.ref); err != nil {
			return k, err
		}
	}
	for _, ref := range refs.Extra {
		s, err := load(ref)
		if err != nil {
			return k, err
		}
		k.Extra = append(k.Extra, s)
	}
	def, err := load(refs.Models)
	if err != nil {
		return k, err
	}
	perModel := map[string]signature.Signer{}
	for m, ref := range refs.ModelKeys {
		if perModel[m], err = load(ref); err != nil {
			return k, fmt.Errorf("key of model %s: %w", m, err)
		}
	}
	switch {
	case def != nil || len(perModel) > 0:
		k.Models = func(model string) signature.Signer {
			if s, ok := perModel[model]; ok {
				return s
			}
			return def
		}
	default:
		// An instance from before per-model keys: targets signs model roles.
		k.Models = nil
	}
	return k, nil
}

// repoOptions are the repository's options; tests can slow publishing
// down (FOSTER_TEST_PUBLISH_DELAY) to kill fosterd in the middle of one.
func repoOptions() (tufrepo.Options, error) {
	var o tufrepo.Options
	if v := env.TestPublishDelay.Get(); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return o, fmt.Errorf("%s=%q: want a duration", env.TestPublishDelay.Name(), v)
		}
		o.AfterWrite = func(key string) {
			if strings.HasPrefix(key, "tuf/") {
				time.Sleep(d)
			}
		}
	}
	return o, nil
}

// openRepo opens the TUF repository with keys and the instance's options.
func openRepo(ctx context.Context, dir string, cfg *Config, st *store.DB, blobs blob.Store, keys tufrepo.Keys) (*tufrepo.Repo, error) {
	opts, err := repoOptions()
	if err != nil {
		return nil, err
	}
	if err := cfg.TUFLifetimes.apply(&opts); err != nil {
		return nil, err
	}
	if st.IsPostgres() {
		// Replicas may share the database and the bucket: publish one at a
		// time, through the database. SQLite serves a single fosterd.
		opts.Arbiter = repoArbiter{st}
	}
	repo, err := tufrepo.Open(ctx, blobs, keys, opts)
	if errors.Is(err, tufrepo.ErrNotInitialized) {
		hint := "initialise it with fosterd --data-dir on an empty directory and this --blobs"
		if _, serr := os.Stat(filepath.Join(dir, "blobs", "tuf", "1.root.json")); serr == nil {
			hint = fmt.Sprintf("this instance's repository is in file:%s; copy it there first (with fosterd stopped): foster blobs copy --from file:%s --to '%s'",
				filepath.Join(dir, "blobs"), filepath.Join(dir, "blobs"), cfg.Blobs)
		}
		return nil, fmt.Errorf("opening TUF repository in %s: %w\n  %s", cfg.Blobs, err, hint)
	}
	if err != nil {
		return nil, fmt.Errorf("opening TUF repository: %w", err)
	}
	return repo, nil
}

// repoArbiter is the TUF repository's Arbiter on a PostgreSQL store: a row
// lock on the store's publish record (pkg/store tufstate.go).
type repoArbiter struct{ db *store.DB }

func (a repoArbiter) Publish(ctx context.Context, fn func(tufrepo.Lease) error) error {
	return a.db.PublishTUF(ctx, func(l *store.TUFLock) error { return fn(l) })
}

func (a repoArbiter) Published(ctx context.Context) (int64, string, error) {
	return a.db.PublishedTUF(ctx)
}
