package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
)

// Options tune Create.
type Options struct {
	// Dir is the instance's data directory.
	Dir string
	// DB and Blobs are the store DSN and blob store URL fosterd uses
	// (config.json's, with the environment and flags applied), resolved
	// against Dir (instance.StoreDSN, instance.BlobsURL).
	DB, Blobs string
	// FosterVersion is recorded in the manifest.
	FosterVersion string
	// Gzip compresses the archive.
	Gzip bool
	// Progress, if not nil, receives a line about every two seconds and at
	// each phase.
	Progress io.Writer
	// Now is the clock (default time.Now).
	Now func() time.Time
	// out is the archive being written (left out of the data directory's
	// files when it is inside it).
	out string
}

// Summary is what Create wrote.
type Summary struct {
	File             string    `json:"file,omitempty"`
	Bytes            int64     `json:"bytes"`
	CreatedAt        time.Time `json:"created_at"`
	FosterVersion    string    `json:"foster_version"`
	SchemaVersion    int64     `json:"schema_version"`
	StoreDialect     string    `json:"store_dialect"`
	TimestampVersion int64     `json:"timestamp_version"`
	Counts           Counts    `json:"counts"`
	Seconds          float64   `json:"seconds"`
	// Warnings are things the operator should know (keys not in the archive).
	Warnings []string `json:"warnings,omitempty"`
}

// CreateFile writes the archive to name (0600), atomically: a failed or
// interrupted backup leaves no file at name. It refuses an existing name.
func CreateFile(ctx context.Context, name string, opts Options) (Summary, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return Summary{}, err
	}
	if _, err := os.Lstat(abs); err == nil {
		return Summary{}, fmt.Errorf("%s exists: choose a new file name (a backup never overwrites one)", name)
	}
	opts.out = abs
	var sum Summary
	cw := &countingWriter{}
	err = atomicfile.WriteFrom(abs, 0o600, func(w io.Writer) error {
		cw.w = w
		var err error
		sum, err = Create(ctx, cw, opts)
		return err
	})
	if err != nil {
		return Summary{}, err
	}
	sum.File, sum.Bytes = abs, cw.n
	return sum, nil
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

// Create writes an archive of the instance to w while fosterd may keep
// serving (see the package comment for why it is consistent).
func Create(ctx context.Context, w io.Writer, opts Options) (Summary, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	start := opts.Now()
	cfgBytes, err := os.ReadFile(instance.PathsOf(opts.Dir).Config)
	if err != nil {
		return Summary{}, fmt.Errorf("%s is not a Foster instance: %w", opts.Dir, err)
	}
	cfg, err := instance.ParseConfig(cfgBytes)
	if err != nil {
		return Summary{}, fmt.Errorf("parsing %s: %w", instance.PathsOf(opts.Dir).Config, err)
	}
	blobs, err := blob.Open(ctx, opts.Blobs)
	if err != nil {
		return Summary{}, err
	}
	if c, ok := blobs.(interface{ Check(context.Context) error }); ok {
		if err := c.Check(ctx); err != nil {
			return Summary{}, fmt.Errorf("blob store %s: %w", opts.Blobs, err)
		}
	}
	p := &progress{w: opts.Progress, now: opts.Now, verb: "backup"}
	p.phase("taking the store snapshot")
	var timestamp []byte
	snap, err := store.OpenSnapshot(ctx, opts.DB, func(ctx context.Context) error {
		timestamp, err = readTimestamp(ctx, blobs)
		return err
	})
	if err != nil {
		return Summary{}, err
	}
	defer snap.Close()
	tsVersion, err := timestampVersion(timestamp)
	if err != nil {
		return Summary{}, err
	}

	var gz *gzip.Writer
	out := w
	if opts.Gzip {
		gz = gzip.NewWriter(w)
		out = gz
	}
	tw := tar.NewWriter(out)
	aw := &writer{tw: tw, now: start.UTC().Truncate(time.Second), progress: p}
	m := &Manifest{
		Format: Format, FormatVersion: FormatVersion, FosterVersion: opts.FosterVersion,
		SchemaVersion: snap.SchemaVersion(), CreatedAt: start.UTC(), StoreDialect: snap.Dialect(),
		Blobs: opts.Blobs, TimestampVersion: tsVersion,
	}

	// 1. The store, in the snapshot.
	p.phase(fmt.Sprintf("store: %d tables", len(snap.Tables())))
	for _, t := range snap.Tables() {
		p.step("store: " + t.Name)
		td := TableDump{TableInfo: t}
		var buf bytes.Buffer
		flush := func() error {
			if buf.Len() == 0 {
				return nil
			}
			td.Parts++
			err := aw.addBytes(partName(t.Name, td.Parts), buf.Bytes())
			buf.Reset()
			return err
		}
		n, err := snap.Rows(ctx, t.Name, func(row []byte) error {
			if buf.Len() > 0 && buf.Len()+len(row)+1 > partSize {
				if err := flush(); err != nil {
					return err
				}
			}
			buf.Write(row)
			buf.WriteByte('\n')
			return nil
		})
		if err != nil {
			return Summary{}, err
		}
		if err := flush(); err != nil {
			return Summary{}, err
		}
		td.Rows = n
		m.Tables = append(m.Tables, td)
		m.Counts.Tables++
		m.Counts.Rows += n
	}
	snap.Close() // the rest needs no snapshot: end the transaction early

	// 2. The blobs: listed after the snapshot, timestamp.json as read with it.
	keys, err := blobs.List(ctx, "")
	if err != nil {
		return Summary{}, fmt.Errorf("listing %s: %w", opts.Blobs, err)
	}
	keys = slices.DeleteFunc(keys, func(k string) bool {
		return strings.HasPrefix(k, tufrepo.StagingPrefix) || k == tufrepo.TimestampKey
	})
	p.phase(fmt.Sprintf("blobs: %d objects", len(keys)+1))
	for i, k := range keys {
		p.step(fmt.Sprintf("blobs: %d/%d objects", i, len(keys)+1))
		rc, info, err := blobs.Open(ctx, k)
		if err != nil {
			return Summary{}, fmt.Errorf("reading blob %s: %w", k, err)
		}
		err = aw.add("blobs/"+k, info.Size, rc)
		rc.Close()
		if err != nil {
			return Summary{}, err
		}
		m.Counts.Blobs++
		m.Counts.BlobBytes += info.Size
	}
	if err := aw.addBytes("blobs/"+tufrepo.TimestampKey, timestamp); err != nil {
		return Summary{}, err
	}
	m.Counts.Blobs++
	m.Counts.BlobBytes += int64(len(timestamp))

	// 3. The data directory's own files.
	p.phase("instance files")
	files, warnings, err := instanceFiles(opts, cfg)
	if err != nil {
		return Summary{}, err
	}
	for _, f := range files {
		fh, err := os.Open(f.path)
		if err != nil {
			return Summary{}, err
		}
		st, err := fh.Stat()
		if err == nil {
			err = aw.add("instance/"+f.rel, st.Size(), fh)
		}
		fh.Close()
		if err != nil {
			return Summary{}, err
		}
		m.Counts.Files++
		if isKeyFile(f.rel) {
			m.Counts.KeyFiles++
		}
	}

	// 4. The manifest, last.
	m.Members = aw.members
	mb, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return Summary{}, err
	}
	if err := aw.tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(mb)), ModTime: aw.now, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return Summary{}, err
	}
	if _, err := aw.tw.Write(mb); err != nil {
		return Summary{}, err
	}
	if err := tw.Close(); err != nil {
		return Summary{}, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return Summary{}, err
		}
	}
	p.phase("done")
	return Summary{
		CreatedAt: m.CreatedAt, FosterVersion: m.FosterVersion, SchemaVersion: m.SchemaVersion, StoreDialect: m.StoreDialect,
		TimestampVersion: tsVersion, Counts: m.Counts, Seconds: opts.Now().Sub(start).Seconds(), Warnings: warnings,
	}, nil
}

func readTimestamp(ctx context.Context, s blob.Store) ([]byte, error) {
	rc, _, err := s.Open(ctx, tufrepo.TimestampKey)
	if errors.Is(err, blob.ErrNotFound) {
		return nil, fmt.Errorf("the blob store holds no TUF repository (no %s): is it this instance's?", tufrepo.TimestampKey)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", tufrepo.TimestampKey, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, tufrepo.MaxTimestampSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", tufrepo.TimestampKey, err)
	}
	if len(b) > tufrepo.MaxTimestampSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", tufrepo.TimestampKey, tufrepo.MaxTimestampSize)
	}
	return b, nil
}

func timestampVersion(b []byte) (int64, error) {
	var ts struct {
		Signed struct {
			Version int64 `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &ts); err != nil {
		return 0, fmt.Errorf("parsing %s: %w", tufrepo.TimestampKey, err)
	}
	return ts.Signed.Version, nil
}

type dirFile struct{ path, rel string }

// instanceFiles lists the regular files of the data directory (symbolic
// links to files are followed), without the store's SQLite files, the
// file blob store and the archive being written, when they are inside it.
func instanceFiles(opts Options, cfg *instance.Config) ([]dirFile, []string, error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, nil, err
	}
	skip := map[string]bool{}
	var skipDir string
	if !strings.HasPrefix(opts.DB, "postgres://") && !strings.HasPrefix(opts.DB, "postgresql://") {
		db, _ := filepath.Abs(strings.TrimPrefix(strings.TrimPrefix(opts.DB, "sqlite://"), "sqlite:"))
		for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
			skip[db+suffix] = true
		}
	}
	if rest, ok := strings.CutPrefix(opts.Blobs, "file:"); ok {
		skipDir, _ = filepath.Abs(strings.TrimPrefix(rest, "//"))
	}
	var files []dirFile
	var warnings []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == skipDir {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if skip[p] || p == opts.out || (opts.out != "" && filepath.Dir(p) == filepath.Dir(opts.out) && strings.HasPrefix(d.Name(), "."+filepath.Base(opts.out)+".tmp-")) {
			return nil
		}
		st, err := os.Stat(p) // follows a symbolic link
		if err != nil || !st.Mode().IsRegular() {
			warnings = append(warnings, fmt.Sprintf("%s is not a regular file: not in the backup", rel))
			return nil
		}
		files = append(files, dirFile{path: p, rel: filepath.ToSlash(rel)})
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	// Keys config.json names outside the data directory are not copied.
	refs := []string{cfg.TUFKeys.Root, cfg.TUFKeys.Targets, cfg.TUFKeys.Snapshot, cfg.TUFKeys.Timestamp,
		cfg.TUFKeys.Models, cfg.LogKey, cfg.Identity.IntermediateKey}
	refs = append(refs, cfg.TUFKeys.Extra...)
	for _, k := range cfg.TUFKeys.ModelKeys {
		refs = append(refs, k)
	}
	for _, ref := range refs {
		if ref == "" || signing.IsKMS(ref) || strings.Contains(ref, ":") {
			continue
		}
		p := ref
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if rel, err := filepath.Rel(dir, p); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			warnings = append(warnings, fmt.Sprintf("key %s is outside the data directory: not in the backup", ref))
		}
	}
	return files, warnings, nil
}

// isKeyFile reports whether a data directory file holds a private key.
func isKeyFile(rel string) bool {
	return strings.HasPrefix(rel, "keys/") || strings.HasSuffix(rel, ".key")
}

// progress prints phases and, at most every two seconds, steps.
type progress struct {
	w    io.Writer
	verb string
	now  func() time.Time
	last time.Time
	cur  string
	n    int64
}

func (p *progress) phase(name string) {
	if p == nil || p.w == nil || name == "" {
		return
	}
	p.cur = name
	p.last = p.now()
	p.print(name)
}

func (p *progress) step(s string) {
	if p == nil || p.w == nil || p.now().Sub(p.last) < 2*time.Second {
		return
	}
	p.last = p.now()
	p.print(s)
}

func (p *progress) print(s string) {
	if p.n > 0 {
		s += " (" + human(p.n) + " so far)"
	}
	fmt.Fprintf(p.w, "%s: %s\n", p.verb, s)
}

func (p *progress) bytes(n int64) {
	if p != nil {
		p.n += n
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
