package logreport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// ExportResult describes a written export.
type ExportResult struct {
	Dir       string `json:"dir"`
	LogOrigin string `json:"log_origin"`
	TreeSize  int64  `json:"tree_size"`
	RootHash  string `json:"root_hash"`
	// EntriesBytes is the size of the entries file.
	EntriesBytes int64 `json:"entries_bytes"`
	// TUFFiles is how many metadata files were copied.
	TUFFiles int `json:"tuf_files"`
}

// maxRootLength is go-tuf's default RootMaxLength.
const maxRootLength = 512000 // bytes

// Export copies what Build needs from src into dir (which must not exist,
// or be empty), so an auditor can build the report with no access to the
// operator's systems: the signed checkpoint (verified with logKey), the
// entries it covers (their tree root checked against it while writing) and
// the TUF metadata (verified by go-tuf from tufRoot, at tufTime, plus every
// older root version so an auditor holding any of them can start there).
// The checkpoint is written last: a directory without one is not an export.
func Export(ctx context.Context, src Source, dir string, logKey note.Verifier, tufRoot []byte, tufTime time.Time, progress func(done, total int64)) (*ExportResult, error) {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("%s is not empty: export into a new directory", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	raw, err := src.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("checkpoint from %s: %w", src, err)
	}
	cp, err := tlogverify.ParseCheckpoint(raw, logKey)
	if err != nil {
		return nil, fmt.Errorf("checkpoint from %s: %w", src, err)
	}
	f, base := src.TUF()
	view, err := LoadTUF(f, base, tufRoot, tufTime)
	if err != nil {
		return nil, fmt.Errorf("TUF metadata from %s: %w", src, err)
	}
	files := view.Files
	for v := int64(1); v < view.RootVersion; v++ {
		name := strconv.FormatInt(v, 10) + ".root.json"
		if _, ok := files[name]; ok {
			continue
		}
		b, err := f.DownloadFile(strings.TrimSuffix(base, "/")+"/"+name, maxRootLength, 0)
		if err != nil {
			return nil, fmt.Errorf("fetching %s: %w", name, err)
		}
		files[name] = b
	}

	if err := os.MkdirAll(filepath.Join(dir, TUFDir), 0o755); err != nil {
		return nil, err
	}
	for name, b := range files {
		if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
			return nil, fmt.Errorf("metadata file name %q", name)
		}
		if err := atomicfile.WriteFile(filepath.Join(dir, TUFDir, name), b, 0o644); err != nil {
			return nil, err
		}
	}

	n, err := writeEntries(ctx, src, filepath.Join(dir, EntriesFile), cp, progress)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, CheckpointFile), raw, 0o644); err != nil {
		return nil, err
	}
	return &ExportResult{Dir: dir, LogOrigin: cp.Origin, TreeSize: cp.Size, RootHash: fmt.Sprintf("%x", cp.Root), EntriesBytes: n, TUFFiles: len(files)}, nil
}

// writeEntries writes the cp.Size leaves of src, one a line, and checks
// that they hash to cp's root before the file takes its name.
func writeEntries(ctx context.Context, src Source, path string, cp tlogverify.Checkpoint, progress func(done, total int64)) (int64, error) {
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp)
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	var done, bytes int64
	err = src.Entries(ctx, 0, cp.Size, func(leaf []byte) error {
		if len(leaf) == 0 || strings.ContainsAny(string(leaf), "\r\n") {
			return fmt.Errorf("entry %d is empty or holds a line break: not a log entry", done)
		}
		if err := rng.Append(rfc6962.DefaultHasher.HashLeaf(leaf), nil); err != nil {
			return err
		}
		w.Write(leaf)
		if err := w.WriteByte('\n'); err != nil {
			return err
		}
		done++
		bytes += int64(len(leaf)) + 1
		if progress != nil && done%16384 == 0 {
			progress(done, cp.Size)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reading entries from %s: %w", src, err)
	}
	if progress != nil {
		progress(done, cp.Size)
	}
	if done != cp.Size {
		return 0, fmt.Errorf("%w: %s served %d entries, the checkpoint commits to %d", tlogverify.ErrNotInLog, src, done, cp.Size)
	}
	root, err := rootOf(rng)
	if err != nil {
		return 0, err
	}
	if string(root) != string(cp.Root) {
		return 0, fmt.Errorf("%w: the %d entries %s served hash to %x, its signed checkpoint says %x", tlogverify.ErrNotInLog, cp.Size, src, root, cp.Root)
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	return bytes, atomicfile.SyncDir(filepath.Dir(path))
}
