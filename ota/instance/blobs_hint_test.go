package instance_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/instance"
	"github.com/foster-ota/foster/ota/tufrepo"
)

// Pointing an instance at a new, empty blob store (moving from local files
// to S3) fails with the command that copies the repository there.
func TestEmptyBlobStoreNamesTheCopyCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := instance.Init(ctx, dir, instance.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	empty := "file:" + filepath.Join(t.TempDir(), "empty")
	in, err := instance.Open(ctx, dir, instance.Overrides{Blobs: empty}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		in.Close()
		t.Fatal("opened an instance on a blob store without its repository")
	}
	want := "foster blobs copy --from file:" + filepath.Join(dir, "blobs") + " --to '" + empty + "'"
	if !errors.Is(err, tufrepo.ErrNotInitialized) || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q lacks the hint %q", err, want)
	}
}
