package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An unmounted volume or a mistyped --data-dir must never become a new CA
// and TUF root: without --init, fosterd refuses and creates nothing.
func TestUnmountedDataDirIsNotInitialised(t *testing.T) {
	tests := map[string]func(t *testing.T) string{
		"missing": func(t *testing.T) string { return filepath.Join(t.TempDir(), "not-mounted") },
		"empty":   func(t *testing.T) string { return t.TempDir() },
	}
	for name, dirOf := range tests {
		t.Run(name, func(t *testing.T) {
			dir := dirOf(t)
			err := run(context.Background(), config{dataDir: dir, listen: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), "run with --init to create a new development instance") {
				t.Fatalf("run on a %s data dir without --init: %v, want an error naming --init", name, err)
			}
			ents, rerr := os.ReadDir(dir)
			if name == "missing" && !os.IsNotExist(rerr) {
				t.Fatalf("the missing data dir was created (%v)", rerr)
			}
			if len(ents) != 0 {
				t.Fatalf("run without --init wrote %d entries into %s", len(ents), dir)
			}
		})
	}
}

func TestCheckInit(t *testing.T) {
	foreign := t.TempDir()
	os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("x"), 0o600)
	unfinished := t.TempDir()
	os.WriteFile(filepath.Join(unfinished, "ca.pem"), []byte("x"), 0o600)
	tests := []struct {
		name    string
		dir     string
		init    bool
		wantErr string
	}{
		{"missing, --init", filepath.Join(t.TempDir(), "new"), true, ""},
		{"empty, --init", t.TempDir(), true, ""},
		{"missing", filepath.Join(t.TempDir(), "new"), false, "does not exist (is the volume mounted?); run with --init"},
		{"empty", t.TempDir(), false, "is empty (is the volume mounted?); run with --init"},
		{"foreign files, --init", foreign, true, "holds no Foster instance: refusing to initialise into it"},
		{"unfinished init", unfinished, false, "run with --init to finish"},
		{"unfinished init, --init", unfinished, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkInit(tt.dir, tt.init)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("checkInit(%s, init=%v) = %v, want %q", tt.name, tt.init, err, tt.wantErr)
			}
		})
	}
}
