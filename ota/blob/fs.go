package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/foster-ota/foster/pkg/atomicfile"
)

// FS is a Store on a local directory (the "file:" store). Objects are plain
// files under the root, so a key "tuf/1.root.json" is ROOT/tuf/1.root.json.
// Put writes a temporary file next to the target, fsyncs it, renames it into
// place and fsyncs the directory, so a crash leaves the old or the new
// object. FS is safe for concurrent use, including by several processes;
// concurrent Puts to one key end with one of the bodies, complete.
//
// Unlike S3, a key cannot be both an object and a prefix of another key
// ("a" and "a/b"): the second Put fails.
type FS struct {
	root string
}

var (
	_ Store  = (*FS)(nil)
	_ Copier = (*FS)(nil)
)

// NewFS returns a store rooted at root, creating the directory (0755) if
// needed.
func NewFS(root string) (*FS, error) {
	if root == "" {
		return nil, errors.New("blob store root is empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blob store root %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("creating blob store root: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("blob store root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("blob store root %s is not a directory", abs)
	}
	return &FS{root: abs}, nil
}

// Root returns the absolute directory the store lives in.
func (s *FS) Root() string { return s.root }

func (s *FS) path(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put implements Store.
func (s *FS) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("putting %q: %w", key, err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("putting %q: %w", key, err)
	}
	src := io.Reader(ctxReader{ctx, r})
	if size >= 0 {
		src = io.LimitReader(src, size+1) // never read an endless body
	}
	err = atomicfile.WriteFrom(p, 0o600, func(w io.Writer) error {
		n, err := io.Copy(w, src)
		if err != nil {
			return err
		}
		if size >= 0 && n != size {
			return fmt.Errorf("%w: body has %s bytes, declared %d", ErrSizeMismatch, atLeast(n, size), size)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("putting %q: %w", key, err)
	}
	return nil
}

func atLeast(n, size int64) string {
	if n > size {
		return fmt.Sprintf("more than %d", size)
	}
	return fmt.Sprint(n)
}

// Open implements Store. The returned *os.File keeps reading the object it
// opened even if a concurrent Put replaces it.
func (s *FS) Open(ctx context.Context, key string) (ReadSeekCloser, Info, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, Info{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, Info{}, s.wrap("opening", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("opening %q: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, Info{}, fmt.Errorf("opening %q: %w", key, ErrNotFound)
	}
	return f, fileInfo(key, fi), nil
}

// Stat implements Store.
func (s *FS) Stat(ctx context.Context, key string) (Info, error) {
	p, err := s.path(key)
	if err != nil {
		return Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, fmt.Errorf("stat %q: %w", key, ErrNotFound)
	}
	return fileInfo(key, fi), nil
}

// Delete implements Store.
func (s *FS) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return fmt.Errorf("deleting %q: %w", key, err)
	}
	if fi.IsDir() {
		return nil // a prefix of other keys, not an object
	}
	if err := os.Remove(p); err != nil && !isNotExist(err) {
		return fmt.Errorf("deleting %q: %w", key, err)
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

// List implements Store. Temporary files of in-flight Puts are not listed.
func (s *FS) List(ctx context.Context, prefix string) ([]string, error) {
	if err := ValidPrefix(prefix); err != nil {
		return nil, err
	}
	dir := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir = prefix[:i]
	}
	start := filepath.Join(s.root, filepath.FromSlash(dir))
	keys := []string{}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && isNotExist(err) {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == start {
			if !d.IsDir() {
				return fs.SkipAll
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			// Descend only where keys can still match the prefix.
			if !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && strings.HasPrefix(key, prefix) && ValidKey(key) == nil {
			keys = append(keys, key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %q: %w", prefix, err)
	}
	slices.Sort(keys)
	return keys, nil
}

// Copy implements Copier with a hard link renamed into place, so it costs
// no space or I/O; it falls back to copying the bytes where links fail.
func (s *FS) Copy(ctx context.Context, src, dst string) error {
	sp, err := s.path(src)
	if err != nil {
		return err
	}
	dp, err := s.path(dst)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	sfi, err := os.Stat(sp)
	if err != nil {
		return s.wrap("copying", src, err)
	}
	if !sfi.Mode().IsRegular() {
		return fmt.Errorf("copying %q: %w", src, ErrNotFound)
	}
	if dfi, err := os.Stat(dp); err == nil && os.SameFile(sfi, dfi) {
		return nil // rename(2) of two links to one file would be a no-op anyway
	}
	dir := filepath.Dir(dp)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("copying %q to %q: %w", src, dst, err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+filepath.Base(dp)+".link-"+hex.EncodeToString(rnd[:]))
	if err := os.Link(sp, tmp); err != nil {
		f, info, err := s.Open(ctx, src)
		if err != nil {
			return err
		}
		defer f.Close()
		return s.Put(ctx, dst, f, info.Size)
	}
	defer os.Remove(tmp) // left behind only if the rename failed
	if err := atomicfile.Rename(tmp, dp); err != nil {
		return fmt.Errorf("copying %q to %q: %w", src, dst, err)
	}
	return nil
}

func (s *FS) wrap(op, key string, err error) error {
	if isNotExist(err) {
		return fmt.Errorf("%s %q: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("%s %q: %w", op, key, err)
}

// isNotExist also treats ENOTDIR ("a/b" where "a" is an object) as missing.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func fileInfo(key string, fi fs.FileInfo) Info {
	mt := fi.ModTime()
	return Info{
		Key:     key,
		Size:    fi.Size(),
		ModTime: mt,
		ETag:    fmt.Sprintf("%x-%x", mt.UnixNano(), fi.Size()),
	}
}

// ctxReader stops a long copy when its context is done.
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
