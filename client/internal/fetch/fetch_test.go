package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func expect(data []byte) Expected {
	s256 := sha256.Sum256(data)
	s512 := sha512.Sum512(data)
	return Expected{Name: "m/1.0.0/fw.bin", Length: int64(len(data)), SHA256: s256[:], SHA512: s512[:]}
}

func TestDownload(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000)
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    func(Expected) Expected
		wantErr error
		msg     string
	}{
		{name: "ok", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) }},
		{name: "sha512 only differs", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA512 = bytes.Repeat([]byte{1}, 64); return e }, wantErr: ErrHashMismatch, msg: "sha512"},
		{name: "short body", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data[:10]) },
			wantErr: ErrLengthMismatch, msg: "got 10 bytes"},
		{name: "not found", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"error":"no such target","code":"not_found"}`, 404)
		}, msg: "no such target"},
		{name: "stalled", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Write(data[:100])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}, wantErr: ErrStalled},
		{name: "no sha256 signed", handler: func(w http.ResponseWriter, r *http.Request) { w.Write(data) },
			want: func(e Expected) Expected { e.SHA256 = nil; return e }, msg: "no sha256"},
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
			err := d.Download(context.Background(), srv.URL+"/x", dst, want)
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
			if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("partial file left: %v", serr)
			}
		})
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
	d := &Downloader{Client: srv.Client()}
	if err := d.Download(context.Background(), srv.URL, dst, expect(data)); err != nil {
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
	if err := VerifyFile(p, expect([]byte("abcd"))); !errors.Is(err, ErrLengthMismatch) {
		t.Fatalf("err = %v", err)
	}
}
