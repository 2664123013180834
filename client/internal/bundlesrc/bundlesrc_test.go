package bundlesrc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/pkg/offline"
)

// writeBundle writes a bundle with an image of size bytes and returns its
// path, the image's member name and its expected length and hash.
func writeBundle(t testing.TB, size int) (string, string, fetch.Expected) {
	t.Helper()
	img := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(img)
	sum := sha256.Sum256(img)
	name := "edge-gw/2.0.0/fw.bin"
	m := offline.Manifest{Format: offline.FormatVersion, Model: "edge-gw", Target: name, Image: offline.ImageName(name, hex.EncodeToString(sum[:])),
		Version: "2.0.0", ReleaseCounter: 2, Length: int64(size), SHA256: hex.EncodeToString(sum[:]), HardwareIDs: []string{}}
	p := filepath.Join(t.TempDir(), "b.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := offline.NewWriter(f, time.Now())
	mb, _ := json.Marshal(m)
	for _, e := range []error{w.Add(offline.ManifestName, mb), w.Add(offline.TimestampName, []byte("{}")), w.Add(m.Image, img), w.Close(), f.Close()} {
		if e != nil {
			t.Fatal(e)
		}
	}
	return p, m.Image, fetch.Expected{Name: name, Length: int64(size), SHA256: sum[:]}
}

func get(t testing.TB, s *Source, url, rng string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// The downloader resumes with Range: a local source answers it from the
// member's window, and refuses names outside tuf/ and targets/.
func TestLocalSourceServesMembersWithRange(t *testing.T) {
	p, image, want := writeBundle(t, 100000)
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Manifest == nil || !s.Local {
		t.Fatalf("source %+v", s)
	}
	url := localBase + image
	resp := get(t, s, url, "")
	if resp.StatusCode != 200 || fetch.Verify(resp.Body, want) != nil {
		t.Fatalf("full GET: %d", resp.StatusCode)
	}
	resp = get(t, s, url, "bytes=99990-")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 206 || len(b) != 10 || resp.Header.Get("Content-Range") != "bytes 99990-99999/100000" {
		t.Fatalf("range GET: %d %d %q", resp.StatusCode, len(b), resp.Header.Get("Content-Range"))
	}
	if resp := get(t, s, url, "bytes=100000-"); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("range past the end: %d", resp.StatusCode)
	}
	for _, u := range []string{localBase + offline.ManifestName, localBase + "tuf/../bundle.json", localBase + "tuf/nope.json"} {
		if resp := get(t, s, u, ""); resp.StatusCode != 404 {
			t.Fatalf("GET %s: %d, want 404", u, resp.StatusCode)
		}
	}
}

func TestOpenRefusesADirectoryThatHoldsNoBundle(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.tar"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "b.tar"), nil, 0o644)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "exactly one bundle file") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Mirror(context.Background(), "ftp://host/x/", nil); err == nil {
		t.Fatal("accepted an ftp mirror")
	}
}

// BenchmarkBundleVerify compares the agent's verification of a bundle's
// image (read through the source's Doer, checked by client/internal/fetch)
// with raw SHA-256 over the same member (docs/BENCHMARKS.md). The file is
// in the page cache after the first iteration.
func BenchmarkBundleVerify(b *testing.B) {
	p, image, want := writeBundle(b, 64<<20)
	s, err := Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	f, _ := os.Open(p)
	defer f.Close()
	fi, _ := f.Stat()
	a, err := offline.ReadArchive(f, fi.Size())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("SHA256Raw", func(b *testing.B) {
		b.SetBytes(want.Length)
		defer cpuMBps(b, want.Length)()
		buf := make([]byte, 128<<10)
		for b.Loop() {
			r, _ := a.Open(image)
			h := sha256.New()
			io.CopyBuffer(h, r, buf)
			if !bytes.Equal(h.Sum(nil), want.SHA256) {
				b.Fatal("hash")
			}
		}
	})
	b.Run("BundleVerify", func(b *testing.B) {
		b.SetBytes(want.Length)
		defer cpuMBps(b, want.Length)()
		for b.Loop() {
			resp := get(b, s, localBase+image, "")
			if err := fetch.Verify(resp.Body, want); err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
		}
	})
}

// cpuMBps reports throughput per second of process CPU time next to Go's
// wall-clock MB/s (as client/internal/fetch's benchmarks do): on a machine
// shared with other jobs the wall clock says more about the neighbours.
func cpuMBps(b *testing.B, size int64) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		if d := cpu() - start; d > 0 {
			b.ReportMetric(float64(size)*float64(b.N)/1e6/d.Seconds(), "MB/cpu-s")
		}
	}
}
