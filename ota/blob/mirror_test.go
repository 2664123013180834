package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/ota/blob"
)

func newFS(t *testing.T, objs map[string]string) *blob.FS {
	t.Helper()
	s, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range objs {
		if err := s.Put(context.Background(), k, strings.NewReader(v), int64(len(v))); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func contents(t *testing.T, s blob.Store) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		rc, _, err := s.Open(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		out[k] = string(b)
	}
	return out
}

var repo = map[string]string{
	"targets/m/1/aa.fw":  "firmware one",
	"targets/m/2/bb.fw":  "firmware two",
	"tuf/1.root.json":    "root",
	"tuf/timestamp.json": "ts 2",
	"staging/x":          "in flight",
}

var mirrorOpts = blob.MirrorOptions{
	Skip:    func(k string) bool { return strings.HasPrefix(k, "staging/") },
	Mutable: func(k string) bool { return k == "tuf/timestamp.json" },
	Rank: func(k string) int {
		if k == "tuf/timestamp.json" {
			return 1
		}
		return 0
	},
}

func without(m map[string]string, keys ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !slices.Contains(keys, k) {
			out[k] = v
		}
	}
	return out
}

// TestMirrorFinishesAnInterruptedCopy: a destination holding part of the
// source (and an older mutable timestamp) ends up equal to it, copying only
// what was missing or mutable; uploads in flight are left out.
func TestMirrorFinishesAnInterruptedCopy(t *testing.T) {
	src := newFS(t, repo)
	dst := newFS(t, map[string]string{"targets/m/1/aa.fw": "firmware one", "tuf/timestamp.json": "ts 1"})
	res, err := blob.Mirror(context.Background(), src, dst, mirrorOpts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Objects != 4 || res.Already != 1 || res.Copied != 3 {
		t.Fatalf("result %+v", res)
	}
	if got, want := contents(t, dst), without(repo, "staging/x"); !maps.Equal(got, want) {
		t.Fatalf("destination %v, want %v", got, want)
	}
	// Again: nothing but the mutable timestamp is copied.
	if res, err := blob.Mirror(context.Background(), src, dst, mirrorOpts); err != nil || res.Copied != 1 || res.Already != 3 {
		t.Fatalf("second run: %+v %v", res, err)
	}
}

// TestMirrorRefusesAnotherStoresObjects: a destination holding a key the
// source lacks, or other bytes under one of its keys (same size too), is
// refused before anything is written.
func TestMirrorRefusesAnotherStoresObjects(t *testing.T) {
	for name, dstObjs := range map[string]map[string]string{
		"extra key":            {"tuf/1.root.json": "root", "targets/other/x": "another instance"},
		"same key, same size":  {"tuf/1.root.json": "ROOT"},
		"same key, other size": {"targets/m/1/aa.fw": "x"},
	} {
		t.Run(name, func(t *testing.T) {
			dst := newFS(t, dstObjs)
			_, err := blob.Mirror(context.Background(), newFS(t, repo), dst, mirrorOpts)
			if !errors.Is(err, blob.ErrConflict) {
				t.Fatalf("got %v, want ErrConflict", err)
			}
			if got := contents(t, dst); !maps.Equal(got, dstObjs) {
				t.Fatalf("a refused mirror changed the destination: %v", got)
			}
		})
	}
}

// corrupting stores what it is given with one byte changed: the read-back
// verification must notice.
type corrupting struct{ blob.Store }

func (c corrupting) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(b) > 0 {
		b[0] ^= 1
	}
	return c.Store.Put(ctx, key, bytes.NewReader(b), size)
}

func TestMirrorVerifiesWhatItWrote(t *testing.T) {
	_, err := blob.Mirror(context.Background(), newFS(t, repo), corrupting{newFS(t, nil)}, mirrorOpts)
	if err == nil || !strings.Contains(err.Error(), "verifying the copy") {
		t.Fatalf("a destination that corrupts objects: %v", err)
	}
}
