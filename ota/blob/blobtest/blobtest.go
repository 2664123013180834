// Package blobtest is the contract test suite every blob.Store must pass
// (the file store now, S3 servers later).
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
)

// Run runs the contract suite. newStore must return an empty store that is
// independent of every other store it returns.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s blob.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"SeekForRange", testSeek},
		{"OverwriteReplacesWhole", testOverwrite},
		{"NotFound", testNotFound},
		{"List", testList},
		{"Delete", testDelete},
		{"PathTraversalKeysRefused", testBadKeys},
		{"LongestKeyAccepted", testLongKey},
		{"SizeMismatchStoresNothing", testSizeMismatch},
		{"FailingBodyKeepsOldObject", testFailingBody},
		{"CancelledContextStoresNothing", testCancelled},
		{"ConcurrentPutsNeverTorn", testConcurrentPuts},
		{"LargeStreaming", testLarge},
		{"Copy", testCopy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func put(t *testing.T, s blob.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(ctx(t), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func get(t *testing.T, s blob.Store, key string) ([]byte, blob.Info) {
	t.Helper()
	rc, info, err := s.Open(ctx(t), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %q: %v", key, err)
	}
	return b, info
}

func list(t *testing.T, s blob.Store, prefix string) []string {
	t.Helper()
	keys, err := s.List(ctx(t), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

func testRoundTrip(t *testing.T, s blob.Store) {
	data := []byte("hello, orphaned device")
	before := time.Now().Add(-time.Minute)
	put(t, s, "tuf/1.root.json", data)
	got, info := get(t, s, "tuf/1.root.json")
	if !bytes.Equal(got, data) {
		t.Fatalf("Open content = %q, want %q", got, data)
	}
	st, err := s.Stat(ctx(t), "tuf/1.root.json")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	for _, in := range []blob.Info{info, st} {
		if in.Key != "tuf/1.root.json" || in.Size != int64(len(data)) || in.ETag == "" || in.ModTime.Before(before) {
			t.Errorf("Info = %+v, want key, size %d, an ETag and a recent ModTime", in, len(data))
		}
	}
	if info.ETag != st.ETag {
		t.Errorf("Open ETag %q != Stat ETag %q", info.ETag, st.ETag)
	}
	// Unknown size is allowed.
	if err := s.Put(ctx(t), "a/b/c/unknown-size", strings.NewReader("xyz"), -1); err != nil {
		t.Fatalf("Put with size -1: %v", err)
	}
	if got, _ := get(t, s, "a/b/c/unknown-size"); string(got) != "xyz" {
		t.Fatalf("content = %q", got)
	}
	// Empty objects are objects.
	put(t, s, "empty", nil)
	if got, info := get(t, s, "empty"); len(got) != 0 || info.Size != 0 {
		t.Fatalf("empty object: %q, %+v", got, info)
	}
}

func testSeek(t *testing.T, s blob.Store) {
	data := []byte("0123456789abcdef")
	put(t, s, "targets/m/1.0/x.bin", data)
	rc, _, err := s.Open(ctx(t), "targets/m/1.0/x.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(rc, buf); err != nil || string(buf) != "abc" {
		t.Fatalf("read after seek = %q, %v; want abc", buf, err)
	}
	end, err := rc.Seek(0, io.SeekEnd)
	if err != nil || end != int64(len(data)) {
		t.Fatalf("Seek end = %d, %v; want %d", end, err, len(data))
	}
	if _, err := rc.Seek(-2, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(rc)
	if string(rest) != "ef" {
		t.Fatalf("tail = %q, want ef", rest)
	}
}

func testOverwrite(t *testing.T, s blob.Store) {
	put(t, s, "tuf/timestamp.json", []byte("version 1, rather longer"))
	_, old := get(t, s, "tuf/timestamp.json")
	put(t, s, "tuf/timestamp.json", []byte("version 2"))
	got, info := get(t, s, "tuf/timestamp.json")
	if string(got) != "version 2" || info.Size != 9 {
		t.Fatalf("after overwrite: %q size %d", got, info.Size)
	}
	if info.ETag == old.ETag {
		t.Errorf("ETag unchanged after overwrite: %q", info.ETag)
	}
	if keys := list(t, s, ""); !slices.Equal(keys, []string{"tuf/timestamp.json"}) {
		t.Errorf("List after overwrite = %q", keys)
	}
}

func testNotFound(t *testing.T, s blob.Store) {
	put(t, s, "dir/obj", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir", "dir/obj/below", "missing/deeper/key"} {
		if _, _, err := s.Open(ctx(t), key); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("Open(%q) error = %v, want ErrNotFound", key, err)
		}
		if _, err := s.Stat(ctx(t), key); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("Stat(%q) error = %v, want ErrNotFound", key, err)
		}
		if err := s.Delete(ctx(t), key); err != nil {
			t.Errorf("Delete(%q) of missing key = %v, want nil", key, err)
		}
	}
	if keys := list(t, s, "missing/"); len(keys) != 0 {
		t.Errorf("List(missing/) = %q, want none", keys)
	}
}

func testList(t *testing.T, s blob.Store) {
	keys := []string{
		"tuf/timestamp.json", "tuf/1.root.json", "tuf/10.targets.json", "tuf/2.targets.json",
		"targets/gw/1.0.0/ab.fw", "targets/gw/1.0.0-rc1/cd.fw", "targets/gw-2/1/ef.fw", "top",
	}
	for _, k := range keys {
		put(t, s, k, []byte(k))
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", sorted},
		{"tuf/", []string{"tuf/1.root.json", "tuf/10.targets.json", "tuf/2.targets.json", "tuf/timestamp.json"}},
		{"tuf/1", []string{"tuf/1.root.json", "tuf/10.targets.json"}},
		{"tuf", []string{"tuf/1.root.json", "tuf/10.targets.json", "tuf/2.targets.json", "tuf/timestamp.json"}},
		{"targets/gw", []string{"targets/gw-2/1/ef.fw", "targets/gw/1.0.0-rc1/cd.fw", "targets/gw/1.0.0/ab.fw"}},
		{"targets/gw/", []string{"targets/gw/1.0.0-rc1/cd.fw", "targets/gw/1.0.0/ab.fw"}},
		{"targets/gw/1.0.0/", []string{"targets/gw/1.0.0/ab.fw"}},
		{"to", []string{"top"}},
		{"top", []string{"top"}},
		{"top/", nil},
		{"nothing", nil},
	}
	for _, tc := range tests {
		got := list(t, s, tc.prefix)
		if !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

func testDelete(t *testing.T, s blob.Store) {
	put(t, s, "a/one", []byte("1"))
	put(t, s, "a/two", []byte("2"))
	if err := s.Delete(ctx(t), "a/one"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx(t), "a/one"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat after Delete = %v, want ErrNotFound", err)
	}
	if keys := list(t, s, ""); !slices.Equal(keys, []string{"a/two"}) {
		t.Fatalf("List after Delete = %q", keys)
	}
	if err := s.Delete(ctx(t), "a/one"); err != nil {
		t.Fatalf("second Delete = %v, want nil", err)
	}
	// The key can be reused.
	put(t, s, "a/one", []byte("again"))
	if got, _ := get(t, s, "a/one"); string(got) != "again" {
		t.Fatalf("content after re-put = %q", got)
	}
}

// BadKeys are keys every store must refuse (exported for store-specific
// tests that also check nothing escaped the store).
var BadKeys = []string{
	"", "/", "/etc/passwd", "../escape", "a/../../escape", "..", ".", "./a", "a/./b", "a/..",
	"a//b", "a/", "a\\..\\b", "..\\escape", "a\x00b", "a\nb", "a\rb", "a\x7fb", "a\u0085b",
	".hidden", "a/.tmp-123", "\xff\xfe", strings.Repeat("a", blob.MaxKeyLength+1),
}

func testBadKeys(t *testing.T, s blob.Store) {
	put(t, s, "ok", []byte("x"))
	for _, key := range BadKeys {
		if err := blob.ValidKey(key); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("ValidKey(%q) = %v, want ErrBadKey", key, err)
		}
		if err := s.Put(ctx(t), key, strings.NewReader("pwned"), 5); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("Put(%q) error = %v, want ErrBadKey", key, err)
		}
		if rc, _, err := s.Open(ctx(t), key); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("Open(%q) error = %v, want ErrBadKey", key, err)
			if rc != nil {
				rc.Close()
			}
		}
		if _, err := s.Stat(ctx(t), key); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("Stat(%q) error = %v, want ErrBadKey", key, err)
		}
		if err := s.Delete(ctx(t), key); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("Delete(%q) error = %v, want ErrBadKey", key, err)
		}
	}
	for _, prefix := range []string{"../", "/", "a//", "a/../", "..", ".x", "a\\b"} {
		if _, err := s.List(ctx(t), prefix); !errors.Is(err, blob.ErrBadKey) {
			t.Errorf("List(%q) error = %v, want ErrBadKey", prefix, err)
		}
	}
	if keys := list(t, s, ""); !slices.Equal(keys, []string{"ok"}) {
		t.Errorf("after bad keys, List = %q, want [ok]", keys)
	}
}

func testLongKey(t *testing.T, s blob.Store) {
	// 1024 bytes in segments short enough for any filesystem.
	seg := strings.Repeat("k", 200)
	key := strings.Join([]string{seg, seg, seg, seg, seg}, "/")
	key += "/" + strings.Repeat("z", blob.MaxKeyLength-len(key)-1)
	if len(key) != blob.MaxKeyLength {
		t.Fatalf("test key is %d bytes", len(key))
	}
	put(t, s, key, []byte("long"))
	if got, _ := get(t, s, key); string(got) != "long" {
		t.Fatalf("content = %q", got)
	}
	// Unicode keys are fine too.
	put(t, s, "targets/gerät/1.0/größe.bin", []byte("ü"))
	if keys := list(t, s, "targets/"); !slices.Equal(keys, []string{"targets/gerät/1.0/größe.bin"}) {
		t.Fatalf("List = %q", keys)
	}
}

func testSizeMismatch(t *testing.T, s blob.Store) {
	put(t, s, "k", []byte("original"))
	for _, tc := range []struct {
		body string
		size int64
	}{{"short", 10}, {"much longer than declared", 4}} {
		err := s.Put(ctx(t), "k", strings.NewReader(tc.body), tc.size)
		if !errors.Is(err, blob.ErrSizeMismatch) {
			t.Errorf("Put(%d-byte body, size %d) = %v, want ErrSizeMismatch", len(tc.body), tc.size, err)
		}
		err = s.Put(ctx(t), "new", strings.NewReader(tc.body), tc.size)
		if err == nil {
			t.Errorf("Put of new key with wrong size succeeded")
		}
	}
	if got, _ := get(t, s, "k"); string(got) != "original" {
		t.Errorf("content after failed Puts = %q, want original", got)
	}
	if _, err := s.Stat(ctx(t), "new"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat(new) after failed Puts = %v, want ErrNotFound", err)
	}
	// An endless body with a declared size is cut off, not read forever.
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx(t), "endless", zeros{}, 1<<20) }()
	select {
	case err := <-done:
		if !errors.Is(err, blob.ErrSizeMismatch) {
			t.Errorf("Put(endless body) = %v, want ErrSizeMismatch", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Put of an endless body with a declared size did not stop")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

var errBroken = errors.New("connection reset mid-upload")

// brokenReader yields n bytes then fails, like an upload cut off midway.
type brokenReader struct{ n int }

func (b *brokenReader) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, errBroken
	}
	k := min(len(p), b.n)
	for i := range p[:k] {
		p[i] = 'X'
	}
	b.n -= k
	return k, nil
}

func testFailingBody(t *testing.T, s blob.Store) {
	put(t, s, "k", []byte("original"))
	for _, size := range []int64{-1, 1 << 20} {
		err := s.Put(ctx(t), "k", &brokenReader{n: 64 << 10}, size)
		if err == nil {
			t.Fatalf("Put with failing body (size %d) succeeded", size)
		}
	}
	if got, _ := get(t, s, "k"); string(got) != "original" {
		t.Fatalf("content after failed Put = %q, want original", got)
	}
	if err := s.Put(ctx(t), "fresh", &brokenReader{n: 10}, -1); err == nil {
		t.Fatal("Put with failing body succeeded")
	}
	if keys := list(t, s, ""); !slices.Equal(keys, []string{"k"}) {
		t.Fatalf("List after failed Puts = %q, want [k]", keys)
	}
}

func testCancelled(t *testing.T, s blob.Store) {
	c, cancel := context.WithCancel(ctx(t))
	cancel()
	if err := s.Put(c, "k", strings.NewReader("x"), 1); err == nil {
		t.Fatal("Put with cancelled context succeeded")
	}
	if _, err := s.Stat(ctx(t), "k"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Stat after cancelled Put = %v, want ErrNotFound", err)
	}
}

// testConcurrentPuts races writers of distinct uniform bodies against
// readers: every read must be exactly one of the bodies.
func testConcurrentPuts(t *testing.T, s blob.Store) {
	const (
		writers = 8
		rounds  = 4
		size    = 256 << 10
	)
	bodies := make([][]byte, writers)
	for i := range bodies {
		bodies[i] = bytes.Repeat([]byte{byte('a' + i)}, size+i) // distinct lengths too
	}
	put(t, s, "race", bodies[0])
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds+64)
	stop := make(chan struct{})
	for i := range writers {
		wg.Go(func() {
			for range rounds {
				if err := s.Put(ctx(t), "race", bytes.NewReader(bodies[i]), int64(len(bodies[i]))); err != nil {
					errs <- err
				}
			}
		})
	}
	var readers sync.WaitGroup
	var reads int
	var mu sync.Mutex
	for range 4 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := checkUniform(ctx(t), s, "race", size, writers); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				reads++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := checkUniform(ctx(t), s, "race", size, writers); err != nil {
		t.Error(err)
	}
	t.Logf("%d concurrent reads checked", reads)
}

func checkUniform(c context.Context, s blob.Store, key string, size, writers int) error {
	rc, info, err := s.Open(c, key)
	if err != nil {
		return fmt.Errorf("open during concurrent puts: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read during concurrent puts: %w", err)
	}
	if len(b) == 0 {
		return errors.New("torn read: empty object")
	}
	i := int(b[0] - 'a')
	if i < 0 || i >= writers || len(b) != size+i || int64(len(b)) != info.Size {
		return fmt.Errorf("torn read: %d bytes starting %q, Info.Size %d", len(b), b[0], info.Size)
	}
	if bytes.Count(b, b[:1]) != len(b) {
		return fmt.Errorf("torn read: mixed content in a %d-byte object", len(b))
	}
	return nil
}

// prng streams n deterministic pseudo-random bytes without holding them.
type prng struct {
	r *rand.ChaCha8
	n int64
}

func (p *prng) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	n, _ := p.r.Read(b)
	p.n -= int64(n)
	return n, nil
}

func testLarge(t *testing.T, s blob.Store) {
	const size = 8 << 20
	seed := [32]byte{'f', 'o', 's', 't', 'e', 'r'}
	want := sha256.New()
	io.Copy(want, &prng{rand.NewChaCha8(seed), size})
	for _, declared := range []int64{size, -1} {
		key := fmt.Sprintf("targets/big/%d.img", declared)
		if err := s.Put(ctx(t), key, &prng{rand.NewChaCha8(seed), size}, declared); err != nil {
			t.Fatalf("Put 8 MiB (declared %d): %v", declared, err)
		}
		rc, info, err := s.Open(ctx(t), key)
		if err != nil {
			t.Fatal(err)
		}
		got := sha256.New()
		n, err := io.Copy(got, rc)
		rc.Close()
		if err != nil || n != size || info.Size != size {
			t.Fatalf("read back %d bytes (Info.Size %d), err %v; want %d", n, info.Size, err, size)
		}
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatalf("8 MiB object read back with a different SHA-256")
		}
	}
}

func testCopy(t *testing.T, s blob.Store) {
	put(t, s, "staging/abc", []byte("firmware"))
	if err := blob.Copy(ctx(t), s, "staging/abc", "targets/m/1/h.fw"); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if got, _ := get(t, s, "targets/m/1/h.fw"); string(got) != "firmware" {
		t.Fatalf("copy content = %q", got)
	}
	// Copy onto itself and onto an existing object.
	if err := blob.Copy(ctx(t), s, "targets/m/1/h.fw", "targets/m/1/h.fw"); err != nil {
		t.Fatalf("Copy onto itself: %v", err)
	}
	put(t, s, "other", []byte("other"))
	if err := blob.Copy(ctx(t), s, "other", "targets/m/1/h.fw"); err != nil {
		t.Fatalf("Copy over existing: %v", err)
	}
	if got, _ := get(t, s, "targets/m/1/h.fw"); string(got) != "other" {
		t.Fatalf("copy content = %q", got)
	}
	// The copy is independent of its source.
	if err := s.Delete(ctx(t), "staging/abc"); err != nil {
		t.Fatal(err)
	}
	put(t, s, "other", []byte("changed"))
	if got, _ := get(t, s, "targets/m/1/h.fw"); string(got) != "other" {
		t.Fatalf("copy changed with its source: %q", got)
	}
	if err := blob.Copy(ctx(t), s, "missing", "x"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Copy of missing = %v, want ErrNotFound", err)
	}
	if err := blob.Copy(ctx(t), s, "other", "../x"); !errors.Is(err, blob.ErrBadKey) {
		t.Fatalf("Copy to ../x = %v, want ErrBadKey", err)
	}
	if keys := list(t, s, ""); !slices.Equal(keys, []string{"other", "targets/m/1/h.fw"}) {
		t.Fatalf("List = %q", keys)
	}
}
