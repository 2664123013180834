package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/killpoint"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// File replaces one file (an application binary, a firmware image consumed by
// something else) atomically: the image is staged next to the destination, so
// promotion is a rename, and a power cut leaves either the old or the new
// file. The old file is kept as <path>.previous (a hard link, made before the
// rename) until the install is committed, so a failed health check can put
// it back.
type File struct {
	// Path is the file to replace.
	Path string
}

// NewFile returns a file installer for path.
func NewFile(path string) (*File, error) {
	if path == "" {
		return nil, configErrorf("file installer: target path is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("file installer: %w", err)
	}
	if fi, err := os.Stat(abs); err == nil && !fi.Mode().IsRegular() {
		return nil, configErrorf("file installer: %s exists and is not a regular file", abs)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, configErrorf("file installer: directory of %s does not exist", abs)
	}
	return &File{Path: abs}, nil
}

func (f *File) Name() string                               { return "file" }
func (f *File) Reboots() bool                              { return false }
func (f *File) previous() string                           { return f.Path + ".previous" }
func (f *File) staging() string                            { return f.Path + ".unverified" }
func (f *File) Cleanup(p Plan)                             { os.Remove(f.staging()) }
func (f *File) Status(context.Context) (BootStatus, error) { return BootStatus{}, nil }

// Prepare stages next to Path. A .previous left by an install that was
// committed already is removed.
func (f *File) Prepare(context.Context) (Dest, error) {
	if err := os.Remove(f.previous()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Dest{}, fmt.Errorf("file installer: %w", err)
	}
	return Dest{Path: f.staging()}, nil
}

// Install links the old file to .previous and renames the image over Path,
// keeping the old file's permissions (an executable stays executable).
func (f *File) Install(_ context.Context, p Plan) error {
	staged, err := exists(p.Image)
	if err != nil {
		return err
	}
	if !staged {
		// Repeated after a crash: the rename happened, or the image is gone.
		if ok, err := f.holds(p.Want); err != nil || ok {
			return err
		}
		return fmt.Errorf("file installer: staged image %s vanished", p.Image)
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(f.Path); err == nil {
		mode = fi.Mode().Perm()
		if prev, err := exists(f.previous()); err != nil {
			return err
		} else if !prev {
			if err := os.Link(f.Path, f.previous()); err != nil {
				return fmt.Errorf("file installer: keeping the old file: %w", err)
			}
			if err := atomicfile.SyncDir(filepath.Dir(f.Path)); err != nil {
				return err
			}
			killpoint.Hit("file-linked-previous")
		}
	}
	if err := os.Chmod(p.Image, mode); err != nil {
		return fmt.Errorf("file installer: %w", err)
	}
	if err := atomicfile.Rename(p.Image, f.Path); err != nil {
		return fmt.Errorf("file installer: replacing %s: %w", f.Path, err)
	}
	killpoint.Hit("file-renamed")
	return nil
}

func (f *File) holds(want fetch.Expected) (bool, error) {
	err := fetch.VerifyFile(f.Path, want)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, fetch.ErrHashMismatch), errors.Is(err, fetch.ErrLengthMismatch), errors.Is(err, fetch.ErrTruncated):
		return false, nil
	default:
		return false, err
	}
}

// Running reports whether Path holds the new image.
func (f *File) Running(_ context.Context, p Plan) (Running, error) {
	ok, err := f.holds(p.Want)
	switch {
	case err != nil:
		return RunningUnknown, err
	case ok:
		return RunningNew, nil
	}
	return RunningOld, nil
}

// Commit drops the kept old file.
func (f *File) Commit(context.Context, Plan) error {
	if err := os.Remove(f.previous()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("file installer: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(f.Path))
}

// Rollback puts the kept old file back; when there was none, the new file is
// removed.
func (f *File) Rollback(_ context.Context, p Plan) error {
	prev, err := exists(f.previous())
	if err != nil {
		return err
	}
	if prev {
		if err := atomicfile.Rename(f.previous(), f.Path); err != nil {
			return fmt.Errorf("file installer: restoring %s: %w", f.Path, err)
		}
		return nil
	}
	if ok, err := f.holds(p.Want); err != nil {
		return err
	} else if ok {
		// Install always links an existing file first: there was none.
		if err := os.Remove(f.Path); err != nil {
			return fmt.Errorf("file installer: %w", err)
		}
		return atomicfile.SyncDir(filepath.Dir(f.Path))
	}
	return nil
}
