package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/backup"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/buildinfo"
)

// cmdBackup is `foster backup`: an archive of a running instance, read
// from its store and blob store directly (docs/OPERATIONS.md).
func cmdBackup(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("backup", "backup --instance DIR --out FILE.tar[.gz] [--db DSN] [--blobs URL] [--json]\n\n"+
		"Writes one archive of the instance while fosterd keeps serving: the store (every table, read in one\n"+
		"snapshot), every blob (TUF metadata, firmware), config.json, the certificates and the key files in DIR.\n"+
		"The archive holds those private keys: it is written 0600; keep it like DIR/keys. Restore it with\n"+
		"foster restore. Progress goes to stderr.", stderr)
	dir := fs.String("instance", c.instance, "the instance's data directory (required)")
	out := fs.String("out", "", "archive to write: FILE.tar, or FILE.tar.gz / FILE.tgz to compress (required; never overwritten)")
	db := fs.String("db", "", "store DSN, when fosterd runs with --db (default: config.json's db, or FOSTER_DB)")
	blobs := fs.String("blobs", "", "blob store URL, when fosterd runs with --blobs (default: config.json's blobs, or FOSTER_BLOBS)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *out == "" {
		return usageError(fs, "--instance and --out are required")
	}
	cfg, err := instance.Load(*dir)
	if err != nil {
		return err
	}
	if err := cfg.ApplyEnv(os.LookupEnv); err != nil {
		return err
	}
	dsn, burl := cfg.DB, cfg.Blobs
	if *db != "" {
		dsn = *db
	}
	if *blobs != "" {
		burl = *blobs
	}
	sum, err := backup.CreateFile(ctx, *out, backup.Options{
		Dir: *dir, DB: instance.StoreDSN(*dir, dsn), Blobs: instance.BlobsURL(*dir, burl),
		FosterVersion: buildinfo.Read("foster").Version,
		Gzip:          strings.HasSuffix(*out, ".gz") || strings.HasSuffix(*out, ".tgz"),
		Progress:      stderr,
	})
	if err != nil {
		return err
	}
	for _, w := range sum.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stderr, "warning: %s holds the private keys that are in %s (%d key files): keep it as secret as they are\n", sum.File, *dir, sum.Counts.KeyFiles)
	if *asJSON {
		return printJSON(stdout, sum)
	}
	n := sum.Counts
	fmt.Fprintf(stdout, "backup written: %s (%d bytes)\n  store:  schema version %d, %d tables, %d rows (%s)\n  blobs:  %d objects, %d bytes (TUF timestamp version %d)\n  files:  %d, of which %d key files\n",
		sum.File, sum.Bytes, sum.SchemaVersion, n.Tables, n.Rows, sum.StoreDialect, n.Blobs, n.BlobBytes, sum.TimestampVersion, n.Files, n.KeyFiles)
	return nil
}

// cmdRestore is `foster restore`: a backup into a new data directory and
// an empty store and blob store.
func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("restore", "restore --from FILE --dir NEWDIR [--db DSN] [--blobs URL] [--json]\n\n"+
		"Restores a foster backup into NEWDIR (new or empty), an empty store and an empty blob store. The whole\n"+
		"archive is verified first (every member's SHA-256 against the manifest, the schema version); a\n"+
		"truncated or altered archive, or a target that holds anything, is refused before anything is written.", stderr)
	from := fs.String("from", "", "the backup archive (required)")
	dir := fs.String("dir", "", "the new data directory: must not exist, or be empty (required)")
	db := fs.String("db", "", "store of the restored instance, as config.json names it: a SQLite path relative to NEWDIR, or postgres://... (default: the backup's; must be empty)")
	blobs := fs.String("blobs", "", "blob store of the restored instance: file:PATH relative to NEWDIR, or s3://bucket?... (default: the backup's; must be empty)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" || *dir == "" {
		return usageError(fs, "--from and --dir are required")
	}
	sum, err := backup.Restore(ctx, backup.RestoreOptions{Archive: *from, Dir: *dir, DB: *db, Blobs: *blobs, Progress: stderr})
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, sum)
	}
	n := sum.Counts
	fmt.Fprintf(stdout, "restored the backup of %s into %s\n  store:  %s (%d rows, schema version %d)\n  blobs:  %s (%d objects, TUF timestamp version %d)\n  files:  %d\nStart it with: fosterd --data-dir %s   (add --listen ADDR if the original still listens on this host)\n",
		sum.CreatedAt.Format(time.RFC3339), sum.Dir, sum.DB, n.Rows, sum.SchemaVersion, sum.Blobs, n.Blobs, sum.TimestampVersion, n.Files, sum.Dir)
	return nil
}

// blobsMigration is what `foster blobs migrate --json` prints.
type blobsMigration struct {
	From         string `json:"from"`
	To           string `json:"to"`
	ConfigBackup string `json:"config_backup,omitempty"`
	blob.MirrorResult
}

// cmdBlobsMigrate is `foster blobs migrate`: move an instance's blobs to
// another store and point its config.json there.
func cmdBlobsMigrate(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("blobs migrate", "blobs migrate --instance DIR --to URL [--json]\n\n"+
		"Moves the instance's TUF metadata and firmware to another blob store (from local files to S3): copies\n"+
		"every object, reads each back and compares its SHA-256 and size, then points config.json's \"blobs\" at\n"+
		"URL (the old config.json is kept beside it). Stop fosterd first; start it again afterwards. Safe to run\n"+
		"again after an interruption; refused while the destination holds objects that are not this instance's.", stderr)
	dir := fs.String("instance", c.instance, "the instance's data directory (required)")
	to := fs.String("to", "", "destination: s3://bucket[/prefix]?endpoint=...&region=...&path-style=true, or file:PATH (required)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *to == "" {
		return usageError(fs, "--instance and --to are required")
	}
	cfg, err := instance.Load(*dir)
	if err != nil {
		return err
	}
	envBlobs, envSet := os.LookupEnv(instance.SettingEnv("blobs"))
	from := cfg.Blobs
	if envSet {
		from = envBlobs
	}
	src, dst := instance.BlobsURL(*dir, from), instance.BlobsURL(*dir, *to)
	res := blobsMigration{From: from, To: *to}
	if src == dst {
		if *asJSON {
			return printJSON(stdout, res)
		}
		fmt.Fprintf(stdout, "the instance's blobs are already in %s: nothing to do\n", *to)
		return nil
	}
	if url, up := serving(ctx, *dir, cfg); up {
		return fmt.Errorf("fosterd answers at %s: stop it first (what it publishes during the copy would not reach %s), then run this again", url, *to)
	}
	srcStore, err := blob.Open(ctx, src)
	if err != nil {
		return err
	}
	if _, err := srcStore.Stat(ctx, "tuf/1.root.json"); err != nil {
		return fmt.Errorf("%s holds no TUF repository (tuf/1.root.json: %v): is it this instance's blob store?", src, err)
	}
	dstStore, err := blob.Open(ctx, dst)
	if err != nil {
		return err
	}
	if c, ok := dstStore.(interface{ Check(context.Context) error }); ok {
		if err := c.Check(ctx); err != nil {
			return fmt.Errorf("destination %s: %w", *to, err)
		}
	}
	last := time.Now()
	res.MirrorResult, err = blob.Mirror(ctx, srcStore, dstStore, blob.MirrorOptions{
		Skip:    func(k string) bool { return strings.HasPrefix(k, tufrepo.StagingPrefix) },
		Mutable: func(k string) bool { return k == tufrepo.TimestampKey },
		Rank:    copyRank,
		Progress: func(done, total int, bytes int64) {
			if time.Since(last) >= 2*time.Second || done == total {
				last = time.Now()
				fmt.Fprintf(stderr, "blobs migrate: %d/%d objects, %d bytes copied\n", done, total, bytes)
			}
		},
	})
	if err != nil {
		return err
	}
	// Point config.json at the destination, keeping the old one.
	p := instance.PathsOf(*dir)
	old, err := os.ReadFile(p.Config)
	if err != nil {
		return err
	}
	res.ConfigBackup = p.Config + ".before-blobs-migrate-" + time.Now().UTC().Format("20060102T150405Z")
	if err := atomicfile.WriteFile(res.ConfigBackup, old, 0o600); err != nil {
		return err
	}
	cfg.Blobs = *to
	if err := cfg.Save(*dir); err != nil {
		return err
	}
	if envSet {
		fmt.Fprintf(stderr, "warning: %s is set in this environment and overrides config.json: set it to %s too\n", instance.SettingEnv("blobs"), *to)
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "copied %d objects (%d bytes), %d already there; every object verified in %s\n", res.Copied, res.Bytes, res.Already, *to)
	fmt.Fprintf(stdout, "config.json now names \"blobs\": %q (the previous config.json: %s)\n", *to, res.ConfigBackup)
	fmt.Fprintf(stdout, "Next:\n  - start fosterd: fosterd --data-dir %s\n", absPath(*dir))
	fmt.Fprintf(stdout, "  - every other fosterd of this instance: stop it, set \"blobs\" in its config.json (or %s, or --blobs) to the same URL, start it\n", instance.SettingEnv("blobs"))
	fmt.Fprintf(stdout, "  - %s is no longer used: keep it until you have checked the new store, then delete it\n", src)
	return nil
}

// copyRank orders a copy of an instance's blobs: firmware, then versioned
// metadata, timestamp.json last, so a fosterd started on a half-copied
// store finds no repository rather than metadata naming missing targets.
func copyRank(k string) int {
	switch {
	case k == tufrepo.TimestampKey:
		return 2
	case strings.HasPrefix(k, "tuf/"):
		return 1
	}
	return 0
}

// serving reports whether a fosterd answers /healthz at the instance's
// server URL (stopped fosterd: no answer).
func serving(ctx context.Context, dir string, cfg *instance.Config) (string, bool) {
	if cfg.ServerURL == "" {
		return "", false
	}
	pem, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return "", false
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(cfg.ServerURL, "/")+"/healthz", nil)
	if err != nil {
		return "", false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", false
	}
	resp.Body.Close()
	return cfg.ServerURL, true
}
