package backup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tlog"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/store"
)

// ErrNotEmpty is wrapped when a restore's target (data directory, store or
// blob store) already holds something.
var ErrNotEmpty = errors.New("restore target is not empty")

// maxRow bounds one row of a store part that a restore reads.
const maxRow = 64 << 20 // bytes

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// Archive is the backup file.
	Archive string
	// Dir is the new data directory: it must not exist, or be empty.
	Dir string
	// DB and Blobs are the store DSN and blob store URL of the restored
	// instance, as config.json names them (a SQLite path and file: paths
	// are relative to Dir). Empty: the backup's config.json values. The
	// store and the blob store must be empty.
	DB, Blobs string
	// Progress, if not nil, hears of each phase.
	Progress io.Writer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// RestoreSummary is what Restore did.
type RestoreSummary struct {
	Dir              string    `json:"dir"`
	DB               string    `json:"db"`
	Blobs            string    `json:"blobs"`
	CreatedAt        time.Time `json:"backup_created_at"`
	FosterVersion    string    `json:"backup_foster_version"`
	SchemaVersion    int64     `json:"schema_version"`
	TimestampVersion int64     `json:"timestamp_version"`
	Counts           Counts    `json:"counts"`
	Seconds          float64   `json:"seconds"`
}

// target is where one part of the instance goes: inside the new data
// directory (written in the staging directory, so empty by construction)
// or elsewhere (checked empty first).
type target struct {
	name   string // as config.json names it
	open   string // what to open: a staging path, or the name resolved
	inside bool
}

// Restore verifies the whole archive, checks that every target is empty,
// and restores: the store in one transaction (committed last), the blobs,
// and the data directory's files into a staging directory that becomes Dir
// at the end. On any error it changes nothing that it did not create: the
// staging directory and the blobs it wrote are removed and the store load
// is rolled back (a PostgreSQL target keeps the empty tables it was given,
// which a new restore accepts).
func Restore(ctx context.Context, opts RestoreOptions) (sum RestoreSummary, err error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	start := opts.Now()
	p := &progress{w: opts.Progress, now: opts.Now, verb: "restore"}
	p.phase("verifying " + opts.Archive)
	v, err := Verify(opts.Archive)
	if err != nil {
		return sum, err
	}
	m := v.Manifest
	cfg, err := instance.ParseConfig(v.Config)
	if err != nil {
		return sum, fmt.Errorf("%w: instance/config.json: %v", ErrInvalid, err)
	}

	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return sum, err
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return sum, fmt.Errorf("%w: %s holds files: restore into a new or empty directory", ErrNotEmpty, dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return sum, fmt.Errorf("data directory %s: %w", dir, err)
	}
	parent := filepath.Dir(dir)
	staging := filepath.Join(parent, "."+filepath.Base(dir)+".restoring")
	if _, err := os.Lstat(staging); err == nil {
		return sum, fmt.Errorf("%s exists: an earlier restore was interrupted; remove it and run again", staging)
	}
	dbName, blobsName := cfg.DB, cfg.Blobs
	if opts.DB != "" {
		dbName = opts.DB
	}
	if opts.Blobs != "" {
		blobsName = opts.Blobs
	}
	db := locate(dir, staging, dbName, instance.StoreDSN(dir, dbName), func(s string) string { return s })
	blobURL := instance.BlobsURL(dir, blobsName)
	bt := locate(dir, staging, blobsName, blobURL, func(s string) string {
		return strings.TrimPrefix(strings.TrimPrefix(s, "file:"), "//")
	})
	if !db.inside {
		if err := store.CheckEmpty(ctx, db.open, m.SchemaVersion); err != nil {
			return sum, fmt.Errorf("%w: store: %w", ErrNotEmpty, err)
		}
	}
	if !bt.inside {
		if err := checkBlobsEmpty(ctx, bt.open); err != nil {
			return sum, err
		}
	}

	// Everything checked: write.
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return sum, err
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return sum, err
	}
	var written []string
	var dst blob.Store
	var loader *store.Loader
	defer func() {
		if loader != nil {
			loader.Close()
		}
		if err != nil {
			if !bt.inside && dst != nil {
				for _, k := range written {
					dst.Delete(context.WithoutCancel(ctx), k)
				}
			}
			os.RemoveAll(staging)
		}
	}()
	if dst, err = blob.Open(ctx, bt.open); err != nil {
		return sum, err
	}
	p.phase("creating the store schema (version " + fmt.Sprint(m.SchemaVersion) + ")")
	if loader, err = store.OpenLoader(ctx, db.open, m.SchemaVersion, tlog.Migrate); err != nil {
		if errors.Is(err, store.ErrNotEmpty) {
			err = fmt.Errorf("%w: store: %w", ErrNotEmpty, err)
		}
		return sum, err
	}
	if err := restoreMembers(ctx, opts.Archive, v, loader, dst, staging, p, &written); err != nil {
		return sum, err
	}
	cfg.DB, cfg.Blobs = dbName, blobsName
	if err := cfg.Save(staging); err != nil {
		return sum, err
	}
	p.phase("committing the store")
	if err := loader.Commit(ctx); err != nil {
		return sum, err
	}
	loader.Close()
	loader = nil
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return sum, err
	}
	if err := atomicfile.Rename(staging, dir); err != nil {
		return sum, err
	}
	p.phase("done")
	return RestoreSummary{
		Dir: dir, DB: dbName, Blobs: blobsName, CreatedAt: m.CreatedAt, FosterVersion: m.FosterVersion,
		SchemaVersion: m.SchemaVersion, TimestampVersion: m.TimestampVersion, Counts: m.Counts,
		Seconds: opts.Now().Sub(start).Seconds(),
	}, nil
}

// locate places a store or blob store named name (resolved: its resolved
// form, pathOf its file path if it is local) inside the new data directory
// or outside it.
func locate(dir, staging, name, resolved string, pathOf func(string) string) target {
	if strings.Contains(resolved, "://") && !strings.HasPrefix(resolved, "file://") {
		return target{name: name, open: resolved}
	}
	p := pathOf(resolved)
	rel, err := filepath.Rel(dir, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return target{name: name, open: resolved}
	}
	open := filepath.Join(staging, rel)
	if strings.HasPrefix(resolved, "file:") {
		open = "file:" + open
	}
	return target{name: name, open: open, inside: true}
}

func checkBlobsEmpty(ctx context.Context, url string) error {
	if rest, ok := strings.CutPrefix(url, "file:"); ok {
		if _, err := os.Stat(strings.TrimPrefix(rest, "//")); errors.Is(err, os.ErrNotExist) {
			return nil // opening would create it
		}
	}
	s, err := blob.Open(ctx, url)
	if err != nil {
		return err
	}
	if c, ok := s.(interface{ Check(context.Context) error }); ok {
		if err := c.Check(ctx); err != nil {
			return fmt.Errorf("blob store %s: %w", url, err)
		}
	}
	keys, err := s.List(ctx, "")
	if err != nil {
		return fmt.Errorf("listing %s: %w", url, err)
	}
	if len(keys) > 0 {
		return fmt.Errorf("%w: blob store %s holds %d objects (%s): restore into an empty bucket, prefix or directory", ErrNotEmpty, url, len(keys), blobExamples(keys))
	}
	return nil
}

func blobExamples(keys []string) string {
	if len(keys) > 3 {
		return strings.Join(keys[:3], ", ") + ", ..."
	}
	return strings.Join(keys, ", ")
}

// restoreMembers reads the archive again, checking every member against
// the manifest Verify read, and writes each where it goes.
func restoreMembers(ctx context.Context, name string, v *Verified, loader *store.Loader, dst blob.Store, staging string, p *progress, written *[]string) error {
	m := v.Manifest
	tables := map[string]TableDump{}
	for _, t := range m.Tables {
		tables[t.Name] = t
	}
	rows := map[string]int64{}
	r, err := openArchive(name)
	if err != nil {
		return err
	}
	defer r.close()
	changed := func(what string) error {
		return fmt.Errorf("%w: %s changed since it was verified", ErrInvalid, what)
	}
	blobs := 0
	for i := 0; ; i++ {
		hdr, err := r.next()
		if err != nil {
			if err == io.EOF {
				return changed(name)
			}
			return err
		}
		if hdr.Name == ManifestName {
			sum, _, err := r.finish()
			if err != nil {
				return err
			}
			if sum != v.ManifestSHA256 || i != len(m.Members) {
				return changed(ManifestName)
			}
			if err := r.end(); err != nil {
				return err
			}
			break
		}
		if i >= len(m.Members) || m.Members[i].Name != hdr.Name {
			return changed(name)
		}
		switch {
		case strings.HasPrefix(hdr.Name, "store/"):
			table := partRE.FindStringSubmatch(hdr.Name)[1]
			t := tables[table]
			p.step("store: " + table)
			tl, err := loader.Table(ctx, table, t.Columns)
			if err != nil {
				return err
			}
			br := bufio.NewReader(r.body())
			for {
				line, err := readLine(br)
				if err == io.EOF {
					break
				}
				if err != nil {
					return fmt.Errorf("%s: %w", hdr.Name, err)
				}
				if err := tl.Add(ctx, line); err != nil {
					return fmt.Errorf("%s: %w", hdr.Name, err)
				}
			}
			if err := tl.Flush(ctx); err != nil {
				return err
			}
			rows[table] += tl.Rows()
		case strings.HasPrefix(hdr.Name, "blobs/"):
			key := strings.TrimPrefix(hdr.Name, "blobs/")
			p.step(fmt.Sprintf("blobs: %d/%d objects", blobs, m.Counts.Blobs))
			if err := dst.Put(ctx, key, r.body(), hdr.Size); err != nil {
				return fmt.Errorf("writing blob %s: %w", key, err)
			}
			*written = append(*written, key)
			blobs++
		case hdr.Name == "instance/config.json":
			// Written last, with the new store and blob store.
		case strings.HasPrefix(hdr.Name, "instance/"):
			if err := writeFile(staging, strings.TrimPrefix(hdr.Name, "instance/"), r.body()); err != nil {
				return err
			}
		}
		sum, n, err := r.finish()
		if err != nil {
			return err
		}
		p.bytes(n)
		if sum != m.Members[i].SHA256 || n != m.Members[i].Size {
			return changed(hdr.Name)
		}
	}
	for _, t := range m.Tables {
		if rows[t.Name] != t.Rows {
			return fmt.Errorf("%w: table %s has %d rows in the archive, the manifest says %d", ErrInvalid, t.Name, rows[t.Name], t.Rows)
		}
	}
	return nil
}

// readLine reads one line (without its "\n"), at most maxRow bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxRow {
			return nil, fmt.Errorf("%w: a row longer than %d bytes", ErrInvalid, maxRow)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(line) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, fmt.Errorf("%w: the last row has no newline", ErrInvalid)
		default:
			return nil, err
		}
	}
}

// writeFile writes the data directory file rel (a clean relative path,
// checkMemberName) under root, readable by its owner only.
func writeFile(root, rel string, r io.Reader) error {
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
