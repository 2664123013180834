// Package install holds the device agent's installers: what happens to a
// verified image. An installer never sees an unverified byte: the agent
// downloads into StagingPath, verifies, records that in the journal, and only
// then calls Install.
package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// File replaces one file (an application binary, a firmware image consumed by
// something else) atomically: the staged image lives next to the destination,
// so promotion is a rename, and a power cut leaves either the old or the new
// file. Safe for concurrent use only on distinct paths.
type File struct {
	// Path is the file to replace.
	Path string
}

// NewFile returns a file installer for path.
func NewFile(path string) (*File, error) {
	if path == "" {
		return nil, errors.New("file installer: target path is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("file installer: %w", err)
	}
	if fi, err := os.Stat(abs); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("file installer: %s exists and is not a regular file", abs)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("file installer: directory of %s does not exist", abs)
	}
	return &File{Path: abs}, nil
}

// Name is "file".
func (f *File) Name() string { return "file" }

// StagingPath is <target>.unverified, in the same directory so that Install is a rename.
func (f *File) StagingPath() string { return f.Path + ".unverified" }

// Install promotes staged to Path, keeping the old file's permissions (so an
// executable stays executable), and fsyncs the directory.
func (f *File) Install(_ context.Context, staged string) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(f.Path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := os.Chmod(staged, mode); err != nil {
		return fmt.Errorf("file installer: %w", err)
	}
	if err := atomicfile.Rename(staged, f.Path); err != nil {
		return fmt.Errorf("file installer: replacing %s: %w", f.Path, err)
	}
	return nil
}

// Installed reports whether Path already holds want (a crash after the rename
// but before the journal recorded the commit).
func (f *File) Installed(_ context.Context, want fetch.Expected) (bool, error) {
	err := fetch.VerifyFile(f.Path, want)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist), errors.Is(err, fetch.ErrHashMismatch), errors.Is(err, fetch.ErrLengthMismatch):
		return false, nil
	default:
		return false, err
	}
}
