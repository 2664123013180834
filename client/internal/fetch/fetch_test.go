package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func expect(data []byte) Expected {
	s256 := sha256.Sum256(data)
	s512 := sha512.Sum512(data)
	return Expected{Name: "m/1.0.0/fw.bin", Length: int64(len(data)), SHA256: s256[:], SHA512: s512[:]}
}

func get(d *Downloader, url, dst string, want Expected) error {
	return d.Download(context.Background(), Request{URL: url, Dest: dst, Want: want})
}

func TestDownload(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100000)
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		want     func(Expected) Expected
		wantErr  error
		msg      string
		keepPart bool // a resumable failure keeps the partial file
	}{
		{name: "ok", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) }},
		{name: "sha256 only signed", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA512 = nil; return e }},
		{name: "sha512 only differs", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA512 = bytes.Repeat([]byte{1}, 64); return e }, wantErr: ErrHashMismatch, msg: "sha512"},
		{name: "tampered", handler: func(w http.ResponseWriter, r *http.Request) {
			bad := bytes.Clone(data)
			bad[len(bad)-1] ^= 1
			w.Write(bad)
		}, wantErr: ErrHashMismatch, msg: "sha256"},
		{name: "endless", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(data)
			for range 100 {
				w.Write(data[:4096])
			}
		}, wantErr: ErrLengthMismatch, msg: "endless data"},
		{name: "oversized announced", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(data)+1))
			w.Write(append(bytes.Clone(data), 'x'))
		}, wantErr: ErrLengthMismatch, msg: "server announces"},
		{name: "short body", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data[:10]) },
			wantErr: ErrTruncated, msg: "got 10 bytes", keepPart: true},
		{name: "not found", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"error":"no such target","code":"not_found"}`, 404)
		}, msg: "no such target", keepPart: true},
		{name: "stalled", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(data[:100])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}, wantErr: ErrStalled, keepPart: true},
		{name: "sha512 only signed", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA256 = nil; return e }},
		{name: "sha512 only signed, tampered", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(append(bytes.Clone(data[1:]), 0)) },
			want: func(e Expected) Expected { e.SHA256 = nil; return e }, wantErr: ErrHashMismatch, msg: "sha512"},
		{name: "no hash signed", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA256, e.SHA512 = nil, nil; return e }, wantErr: ErrBadExpectation, msg: "no sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			dst := filepath.Join(t.TempDir(), "fw.bin.unverified")
			want := expect(data)
			if tt.want != nil {
				want = tt.want(want)
			}
			d := &Downloader{Client: srv.Client(), StallTimeout: 300 * time.Millisecond}
			err := get(d, srv.URL+"/x", dst, want)
			if tt.wantErr == nil && tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				b, _ := os.ReadFile(dst)
				fi, _ := os.Stat(dst)
				if !bytes.Equal(b, data) || fi.Mode().Perm() != 0o600 {
					t.Fatalf("content or mode wrong (%v)", fi.Mode())
				}
				return
			}
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tt.wantErr, tt.msg)
			}
			if Resumable(err) != tt.keepPart {
				t.Fatalf("Resumable(%v) = %v", err, !tt.keepPart)
			}
			_, serr := os.Stat(dst)
			if tt.keepPart != (serr == nil) && !errors.Is(err, ErrBadExpectation) {
				t.Fatalf("partial file kept = %v, want %v", serr == nil, tt.keepPart)
			}
		})
	}
}

// rangeServer serves data with Range support and can cut the first
// response after cut bytes; it records the Range headers it saw.
type rangeServer struct {
	mu      sync.Mutex
	data    []byte
	cut     int
	ranges  []string
	noRange bool
}

func (s *rangeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	cut := s.cut
	s.cut = 0
	s.mu.Unlock()
	if cut > 0 {
		w.Header().Set("Content-Length", fmt.Sprint(len(s.data)))
		w.Write(s.data[:cut])
		w.(http.Flusher).Flush()
		hj, _ := w.(http.Hijacker)
		c, _, _ := hj.Hijack()
		c.Close()
		return
	}
	if s.noRange {
		r.Header.Del("Range")
	}
	http.ServeContent(w, r, "fw", time.Time{}, bytes.NewReader(s.data))
}

func TestDownloadResumesWithRange(t *testing.T) {
	data := bytes.Repeat([]byte("resumable firmware "), 20000) // 380 KB
	for _, noRange := range []bool{false, true} {
		t.Run(fmt.Sprintf("server ignores range=%v", noRange), func(t *testing.T) {
			rs := &rangeServer{data: data, cut: 200000, noRange: noRange}
			srv := httptest.NewServer(rs)
			defer srv.Close()
			dst := filepath.Join(t.TempDir(), "fw.unverified")
			d := &Downloader{Client: srv.Client(), CheckpointEvery: 64 << 10}
			var durable int64
			req := Request{URL: srv.URL, Dest: dst, Want: expect(data), Checkpoint: func(n int64) error { durable = n; return nil }}
			err := d.Download(context.Background(), req)
			if !errors.Is(err, ErrTruncated) || !Resumable(err) {
				t.Fatalf("first attempt: %v", err)
			}
			if durable == 0 || durable > 200000 {
				t.Fatalf("durable = %d", durable)
			}
			// Bytes past the last checkpoint are not trusted: scribble on them.
			f, _ := os.OpenFile(dst, os.O_WRONLY|os.O_APPEND, 0)
			f.Write([]byte("garbage past the checkpoint"))
			f.Close()

			req.Offset = durable
			wantRange := fmt.Sprintf("bytes=%d-", durable)
			if err := d.Download(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(dst); !bytes.Equal(b, data) {
				t.Fatal("resumed content differs")
			}
			if len(rs.ranges) != 2 || rs.ranges[0] != "" || rs.ranges[1] != wantRange {
				t.Fatalf("ranges %q, want [\"\" %q]", rs.ranges, wantRange)
			}
		})
	}
}

// A resumed download whose first part was tampered with fails the final
// hash and is discarded whole.
func TestDownloadResumedTamperedPrefixIsDiscarded(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 300000)
	srv := httptest.NewServer(&rangeServer{data: data})
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "fw.unverified")
	os.WriteFile(dst, bytes.Repeat([]byte("y"), 100000), 0o600)
	d := &Downloader{Client: srv.Client()}
	err := d.Download(context.Background(), Request{URL: srv.URL, Dest: dst, Want: expect(data), Offset: 100000})
	if !errors.Is(err, ErrHashMismatch) || Resumable(err) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("tampered partial kept")
	}
}

func TestDownloadRefusesContentRangeContradictingSignedLength(t *testing.T) {
	data := bytes.Repeat([]byte("z"), 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", "bytes 500-1999/2000")
		w.WriteHeader(http.StatusPartialContent)
		w.Write(bytes.Repeat([]byte("z"), 1500))
	}))
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "fw.unverified")
	os.WriteFile(dst, data[:500], 0o600)
	err := (&Downloader{Client: srv.Client()}).Download(context.Background(), Request{URL: srv.URL, Dest: dst, Want: expect(data), Offset: 500})
	if !errors.Is(err, ErrLengthMismatch) {
		t.Fatalf("err = %v", err)
	}
}

// Slow retrieval: a server dripping bytes below the minimum rate is
// abandoned, and what arrived stays for a later attempt.
func TestDownloadAbandonsSlowRetrieval(t *testing.T) {
	data := bytes.Repeat([]byte("s"), 100000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < len(data); i += 10 {
			if _, err := w.Write(data[i : i+10]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "fw.unverified")
	d := &Downloader{Client: srv.Client(), MinRate: 10000, RateWindow: 200 * time.Millisecond, StallTimeout: 5 * time.Second}
	start := time.Now()
	err := get(d, srv.URL, dst, expect(data))
	if !errors.Is(err, ErrSlowRetrieval) || !Resumable(err) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %v to give up", time.Since(start))
	}
	t.Logf("abandoned: %v", err)
}

// An A/B slot is written in place: the existing file is overwritten (and,
// being a regular file, truncated to the image), never replaced.
func TestDownloadInPlace(t *testing.T) {
	data := []byte("new image")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(data) }))
	defer srv.Close()
	slot := filepath.Join(t.TempDir(), "slot-b")
	os.WriteFile(slot, bytes.Repeat([]byte("old"), 100), 0o640)
	before, _ := os.Stat(slot)
	if err := (&Downloader{Client: srv.Client()}).Download(context.Background(), Request{URL: srv.URL, Dest: slot, Want: expect(data), InPlace: true}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(slot)
	if b, _ := os.ReadFile(slot); !bytes.Equal(b, data) || !os.SameFile(before, after) || after.Mode().Perm() != 0o640 {
		t.Fatalf("slot = %q, same file %v, mode %v", b, os.SameFile(before, after), after.Mode())
	}
	if err := VerifyPrefix(slot, expect(data)); err != nil {
		t.Fatal(err)
	}
	// A bad body leaves the slot in place (it is never booted: the bootloader points at the other one).
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("bad image")) }))
	defer srv2.Close()
	err := (&Downloader{Client: srv2.Client()}).Download(context.Background(), Request{URL: srv2.URL, Dest: slot, Want: expect(data), InPlace: true})
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(slot); err != nil {
		t.Fatal("slot removed")
	}
}

// A symlink planted at the staging path must not redirect the write.
func TestDownloadDoesNotFollowPlantedSymlink(t *testing.T) {
	data := []byte("firmware")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(data) }))
	defer srv.Close()
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	dst := filepath.Join(dir, "fw.unverified")
	if err := os.Symlink(victim, dst); err != nil {
		t.Skip(err)
	}
	if err := get(&Downloader{Client: srv.Client()}, srv.URL, dst, expect(data)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatal("write followed the symlink")
	}
}

func TestVerifyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("abc"), 0o600)
	if err := VerifyFile(p, expect([]byte("abc"))); err != nil {
		t.Fatal(err)
	}
	if err := VerifyFile(p, expect([]byte("abd"))); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err = %v", err)
	}
	if err := VerifyFile(p, expect([]byte("abcd"))); !errors.Is(err, ErrTruncated) {
		t.Fatalf("err = %v", err)
	}
	if err := VerifyFile(p, expect([]byte("ab"))); !errors.Is(err, ErrLengthMismatch) {
		t.Fatalf("err = %v", err)
	}
	if err := VerifyPrefix(p, expect([]byte("ab"))); err != nil {
		t.Fatalf("prefix: %v", err)
	}
}

// Verify throughput against raw SHA-256 of the same image file, read from
// the page cache by both (docs/BENCHMARKS.md):
//
//	go test ./client/internal/fetch -run '^$' -bench 'SHA256Raw|Verify' -benchtime 2s -count 5
const benchSize = 64 << 20 // bytes

var (
	benchOnce sync.Once
	benchFile string
	benchWant Expected
)

func benchImage(b *testing.B) (string, Expected) {
	benchOnce.Do(func() {
		data := make([]byte, benchSize)
		for i := range data {
			data[i] = byte(i*7 + i>>11)
		}
		dir, err := os.MkdirTemp("", "foster-bench-")
		if err != nil {
			b.Fatal(err)
		}
		benchFile = filepath.Join(dir, "image")
		if err := os.WriteFile(benchFile, data, 0o600); err != nil {
			b.Fatal(err)
		}
		benchWant = expect(data)
	})
	return benchFile, benchWant
}

// cpuMBps reports throughput per second of process CPU time next to Go's
// wall-clock MB/s: on a machine shared with other jobs the wall clock says
// more about the neighbours than about the code.
func cpuMBps(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		if d := cpu() - start; d > 0 {
			b.ReportMetric(float64(benchSize)*float64(b.N)/1e6/d.Seconds(), "MB/cpu-s")
		}
	}
}

func BenchmarkSHA256Raw(b *testing.B) {
	path, _ := benchImage(b)
	b.SetBytes(benchSize)
	defer cpuMBps(b)()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
		f.Close()
	}
}

// The signed length and SHA-256 (the hash every Foster target carries).
func BenchmarkVerifySHA256(b *testing.B) {
	path, want := benchImage(b)
	want.SHA512 = nil
	b.SetBytes(benchSize)
	defer cpuMBps(b)()
	for b.Loop() {
		if err := VerifyFile(path, want); err != nil {
			b.Fatal(err)
		}
	}
}

// Length, SHA-256 and SHA-512, as fosterd signs targets (SHA-512 on a second goroutine).
func BenchmarkVerifySHA256AndSHA512(b *testing.B) {
	path, want := benchImage(b)
	b.SetBytes(benchSize)
	defer cpuMBps(b)()
	for b.Loop() {
		if err := VerifyFile(path, want); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSHA512Raw(b *testing.B) {
	path, _ := benchImage(b)
	b.SetBytes(benchSize)
	defer cpuMBps(b)()
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		h := sha512.New()
		if _, err := io.Copy(h, f); err != nil {
			b.Fatal(err)
		}
		h.Sum(nil)
		f.Close()
	}
}

// Content-Range comes from the network: any value is either accepted for the
// requested start and the signed length, or refused, never a panic.
func FuzzCheckContentRange(f *testing.F) {
	for _, s := range []string{"bytes 100-999/1000", "bytes 100-999/*", "bytes */1000", "bytes 0-0/1", "", "bytes 100-", "items 1-2/3", "bytes -1-5/1000"} {
		f.Add(s, int64(100))
	}
	want := expect(bytes.Repeat([]byte("x"), 1000))
	f.Fuzz(func(t *testing.T, h string, start int64) {
		err := checkContentRange(h, start, want)
		if err == nil && !strings.HasPrefix(h, "bytes ") {
			t.Fatalf("accepted %q", h)
		}
	})
}

// A long download reports its progress in the log: bytes, rate, time left.
func TestDownloadLogsProgressWithRateAndETA(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 64<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		for i := 0; i < len(data); i += 8 << 10 {
			w.Write(data[i : i+8<<10])
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond)
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	d := &Downloader{Client: srv.Client(), Log: log, ProgressEvery: time.Millisecond}
	if err := d.Download(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "fw"), Want: expect(data)}); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{"msg=downloading", "bytes=", "of=65536", "rate_kib_s=", "eta="} {
		if !strings.Contains(out, want) {
			t.Fatalf("progress log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "eta=unknown") && strings.Count(out, "msg=downloading") == 1 {
		t.Fatalf("no time-left estimate:\n%s", out)
	}
}
