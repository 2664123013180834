package blob_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/blobtest"
	"github.com/foster-ota/foster/ota/blob/s3test"
)

func newS3(t *testing.T, url string) *blob.S3 {
	t.Helper()
	s, err := blob.NewS3(t.Context(), url)
	if err != nil {
		t.Fatalf("NewS3(%s): %v", url, err)
	}
	if err := s.Check(t.Context()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	return s
}

func randomBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// TestS3Contract runs the shared suite against a real S3 server: a fresh
// bucket per subtest.
func TestS3Contract(t *testing.T) {
	srv := s3test.StartServer(t)
	blobtest.Run(t, func(t *testing.T) blob.Store { return newS3(t, srv.NewBucket(t)) })
}

// TestS3ContractUnderPrefix runs the suite again with every store sharing
// one bucket under its own key prefix, which must isolate them.
func TestS3ContractUnderPrefix(t *testing.T) {
	srv := s3test.StartServer(t)
	bucketURL := srv.NewBucket(t)
	n := 0
	blobtest.Run(t, func(t *testing.T) blob.Store {
		n++
		u := strings.Replace(bucketURL, "?", fmt.Sprintf("/stores/%d/?", n), 1)
		return newS3(t, u)
	})
	// Every object landed under a store's prefix.
	out, err := srv.Client().ListObjectsV2(t.Context(), &s3.ListObjectsV2Input{
		Bucket: aws.String(strings.TrimPrefix(strings.Split(bucketURL, "?")[0], "s3://")),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range out.Contents {
		if !strings.HasPrefix(aws.ToString(o.Key), "stores/") {
			t.Errorf("object %q outside every store's prefix", aws.ToString(o.Key))
		}
	}
}

func TestS3PrefixesIsolateStores(t *testing.T) {
	srv := s3test.StartServer(t)
	u := srv.NewBucket(t)
	a := newS3(t, strings.Replace(u, "?", "/fleet-a?", 1))
	b := newS3(t, strings.Replace(u, "?", "/fleet-b/?", 1))
	root := newS3(t, u)
	for _, s := range []*blob.S3{a, b} {
		if err := s.Put(t.Context(), "tuf/timestamp.json", strings.NewReader(s.String()), -1); err != nil {
			t.Fatal(err)
		}
	}
	if keys, _ := a.List(t.Context(), ""); !slices.Equal(keys, []string{"tuf/timestamp.json"}) {
		t.Errorf("a.List = %q", keys)
	}
	if keys, _ := root.List(t.Context(), ""); !slices.Equal(keys, []string{"fleet-a/tuf/timestamp.json", "fleet-b/tuf/timestamp.json"}) {
		t.Errorf("bucket root List = %q", keys)
	}
	if err := a.Delete(t.Context(), "tuf/timestamp.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(t.Context(), "tuf/timestamp.json"); err != nil {
		t.Errorf("deleting in one prefix touched the other: %v", err)
	}
}

func TestOpenS3URL(t *testing.T) {
	srv := s3test.StartServer(t)
	u := srv.NewBucket(t)
	s, err := blob.Open(context.Background(), u)
	if err != nil {
		t.Fatalf("Open(%s): %v", u, err)
	}
	s3s, ok := s.(*blob.S3)
	if !ok {
		t.Fatalf("Open(%s) = %T, want *blob.S3", u, s)
	}
	if err := s3s.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := s3s.String(); !strings.HasPrefix(got, "s3://foster-test-") || !strings.Contains(got, srv.Endpoint) {
		t.Errorf("String() = %q", got)
	}
}

// TestS3RangeReadsMatchFS reads the same object from both stores through
// one reader with forward, backward, short and far seeks (each S3 read
// path: the open response, skipping ahead in it, and ranged re-GETs), and
// through http.ServeContent with Range headers.
func TestS3RangeReadsMatchFS(t *testing.T) {
	srv := s3test.StartServer(t)
	s3s := newS3(t, srv.NewBucket(t))
	fs, err := blob.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const size = 3<<20 + 12345
	data := randomBytes(1, size)
	const key = "targets/gw/1.0/fw.bin"
	for _, s := range []blob.Store{fs, s3s} {
		if err := s.Put(t.Context(), key, bytes.NewReader(data), size); err != nil {
			t.Fatal(err)
		}
	}
	ranges := []struct{ off, n int64 }{
		{0, 100}, {100, 1000}, {5000, 10}, {200 << 10, 4096}, // forward: same response, then a skip
		{10, 10},                             // backward: new ranged GET
		{2 << 20, 64 << 10}, {size - 10, 10}, // far forward, the tail
		{size - 10, 100}, {size, 10}, {size + 5, 10}, // past the end
		{0, 0}, {1, size - 1}, {0, size},
	}
	open := func(s blob.Store) blob.ReadSeekCloser {
		rc, info, err := s.Open(t.Context(), key)
		if err != nil || info.Size != size {
			t.Fatalf("Open: %v, size %d", err, info.Size)
		}
		t.Cleanup(func() { rc.Close() })
		return rc
	}
	fr, sr := open(fs), open(s3s)
	for _, r := range ranges {
		var got [2][]byte
		for i, rc := range []blob.ReadSeekCloser{fr, sr} {
			pos, err := rc.Seek(r.off, io.SeekStart)
			if err != nil || pos != r.off {
				t.Fatalf("Seek(%d) = %d, %v", r.off, pos, err)
			}
			got[i], err = io.ReadAll(io.LimitReader(rc, r.n))
			if err != nil {
				t.Fatalf("reading %d bytes at %d: %v", r.n, r.off, err)
			}
		}
		want := data[min(r.off, size):min(r.off+r.n, size)]
		if !bytes.Equal(got[0], want) || !bytes.Equal(got[1], want) {
			t.Errorf("range (%d, %d): FS %d bytes, S3 %d bytes, want %d (FS equal %v, S3 equal %v)",
				r.off, r.n, len(got[0]), len(got[1]), len(want), bytes.Equal(got[0], want), bytes.Equal(got[1], want))
		}
	}
	// SeekCurrent and SeekEnd agree too.
	for _, rc := range []blob.ReadSeekCloser{fr, sr} {
		if _, err := rc.Seek(-20, io.SeekEnd); err != nil {
			t.Fatal(err)
		}
		if pos, err := rc.Seek(5, io.SeekCurrent); err != nil || pos != size-15 {
			t.Fatalf("Seek(5, current) = %d, %v", pos, err)
		}
		if rest, err := io.ReadAll(rc); err != nil || !bytes.Equal(rest, data[size-15:]) {
			t.Fatalf("tail after SeekCurrent: %d bytes, %v", len(rest), err)
		}
		if _, err := rc.Seek(-1, io.SeekStart); err == nil {
			t.Error("Seek to a negative position succeeded")
		}
	}

	serve := func(s blob.Store) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rc, info, err := s.Open(r.Context(), key)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer rc.Close()
			w.Header().Set("Content-Type", "application/octet-stream")
			http.ServeContent(w, r, "", info.ModTime, rc)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	fsURL, s3URL := serve(fs).URL, serve(s3s).URL
	for _, rng := range []string{"", "bytes=0-0", "bytes=1000-2000", "bytes=-500", "bytes=3000000-", "bytes=10-20,3000000-3000010"} {
		var bodies [2][]byte
		var codes [2]int
		for i, u := range []string{fsURL, s3URL} {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", u, nil)
			if rng != "" {
				req.Header.Set("Range", rng)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			codes[i] = resp.StatusCode
			bodies[i], err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		// Multipart boundaries are random: compare the parts' sizes instead.
		if codes[0] != codes[1] || (!strings.Contains(rng, ",") && !bytes.Equal(bodies[0], bodies[1])) ||
			len(bodies[0]) != len(bodies[1]) {
			t.Errorf("Range %q: FS %d (%d bytes), S3 %d (%d bytes)", rng, codes[0], len(bodies[0]), codes[1], len(bodies[1]))
		}
	}
}

// TestS3MultipartUploadRoundTrips puts 20 MiB with 5 MiB parts, with a
// declared and an unknown size, and checks S3 saw a multipart upload.
func TestS3MultipartUploadRoundTrips(t *testing.T) {
	srv := s3test.StartServer(t)
	u := srv.NewBucket(t)
	bucket := bucketOf(u)
	s := newS3(t, u+"&part-size=5242880")
	const size = 20<<20 + 7
	data := randomBytes(2, size)
	want := sha256.Sum256(data)
	for _, declared := range []int64{size, -1} {
		key := fmt.Sprintf("targets/big/%d.img", declared)
		if err := s.Put(t.Context(), key, bytes.NewReader(data), declared); err != nil {
			t.Fatalf("Put 20 MiB (declared %d): %v", declared, err)
		}
		rc, info, err := s.Open(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil || n != size || info.Size != size || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("read back %d bytes (Info.Size %d), err %v, sha256 equal %v", n, info.Size, err, bytes.Equal(h.Sum(nil), want[:]))
		}
		// An S3 multipart ETag is "<md5 of part md5s>-<parts>".
		if !strings.HasSuffix(info.ETag, "-5") {
			t.Errorf("ETag %q: want a 5-part multipart upload", info.ETag)
		}
	}
	// A body that fails after two parts stores nothing and leaves no
	// multipart upload behind.
	err := s.Put(t.Context(), "targets/big/broken.img", io.MultiReader(bytes.NewReader(data[:12<<20]), failingReader{}), -1)
	if err == nil {
		t.Fatal("Put with a body failing after 12 MiB succeeded")
	}
	for _, declared := range []int64{size + 1, size - 1} {
		if err := s.Put(t.Context(), "targets/big/wrong.img", bytes.NewReader(data), declared); !errors.Is(err, blob.ErrSizeMismatch) {
			t.Fatalf("Put(20 MiB, declared %d) = %v, want ErrSizeMismatch", declared, err)
		}
	}
	for _, k := range []string{"targets/big/broken.img", "targets/big/wrong.img"} {
		if _, err := s.Stat(t.Context(), k); !errors.Is(err, blob.ErrNotFound) {
			t.Errorf("Stat(%s) after a failed upload = %v, want ErrNotFound", k, err)
		}
	}
	ups, err := srv.Client().ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range ups.Uploads {
		t.Errorf("multipart upload of %q left behind", aws.ToString(up.Key))
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// TestS3CopyOverMaxCopyObject copies part by part (UploadPartCopy), as for
// objects over CopyObject's 5 GiB limit, and copies keys that need
// escaping in the copy source.
func TestS3CopyOverMaxCopyObject(t *testing.T) {
	srv := s3test.StartServer(t)
	s := newS3(t, strings.Replace(srv.NewBucket(t), "?", "/pre fix?", 1))
	blob.SetS3CopyLimits(s, 5<<20, 5<<20)
	data := randomBytes(3, 12<<20+3)
	for _, src := range []string{"staging/big.img", "staging/gerät 1+2%3F?.img"} {
		if err := s.Put(t.Context(), src, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
		dst := "targets/" + src
		if err := s.Copy(t.Context(), src, dst); err != nil {
			t.Fatalf("Copy(%q): %v", src, err)
		}
		rc, info, err := s.Open(t.Context(), dst)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("copy of %q: %d bytes, %v; equal %v", src, len(got), err, bytes.Equal(got, data))
		}
		if !strings.HasSuffix(info.ETag, "-3") {
			t.Errorf("ETag of the copy %q: want 3 parts", info.ETag)
		}
	}
	if err := s.Copy(t.Context(), "missing", "x"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Copy(missing) = %v, want ErrNotFound", err)
	}
}

// TestS3ReaderNeverMixesVersions: an opened object reads the version it
// opened, or fails; it never returns bytes of a replacement.
func TestS3ReaderNeverMixesVersions(t *testing.T) {
	srv := s3test.StartServer(t)
	s := newS3(t, srv.NewBucket(t))
	ctx := t.Context()
	v1, v2 := bytes.Repeat([]byte("1"), 1<<20), bytes.Repeat([]byte("2"), 1<<20)
	put := func(b []byte) {
		t.Helper()
		if err := s.Put(ctx, "tuf/timestamp.json", bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	put(v1)
	rc, _, err := s.Open(ctx, "tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	put(v2)
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("sequential read of the opened version: %d bytes, %v, equal %v", len(got), err, bytes.Equal(got, v1))
	}

	rc, _, err = s.Open(ctx, "tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	put(v1)
	if _, err := rc.Seek(512<<10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rc)
	if err == nil || !strings.Contains(err.Error(), "replaced since it was opened") {
		t.Fatalf("read after seek past a replacement: %d bytes, err %v; want a 'replaced' error", len(got), err)
	}
	if bytes.Contains(got, []byte("1")) {
		t.Fatal("reader returned bytes of the replacement")
	}
}

func TestS3Presign(t *testing.T) {
	srv := s3test.StartServer(t)
	s := newS3(t, srv.NewBucket(t))
	data := randomBytes(4, 100<<10)
	const key = "targets/gw/1.0/ab12.fw"
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	u, err := s.Presign(t.Context(), key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(u, srv.SecretKey) {
		t.Fatal("presigned URL contains the secret key")
	}
	get := func(u, rng string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", u, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, b
	}
	if code, b := get(u, ""); code != 200 || !bytes.Equal(b, data) {
		t.Fatalf("GET presigned URL: %d, %d bytes, equal %v", code, len(b), bytes.Equal(b, data))
	}
	if code, b := get(u, "bytes=100-199"); code != 206 || !bytes.Equal(b, data[100:200]) {
		t.Fatalf("ranged GET presigned URL: %d, %d bytes", code, len(b))
	}
	// The signature covers the key: the URL does not open another object.
	if code, _ := get(strings.Replace(u, "ab12.fw", "ab13.fw", 1), ""); code != 403 {
		t.Errorf("presigned URL with a changed key: status %d, want 403", code)
	}
	for _, ttl := range []time.Duration{0, -time.Second, blob.MaxPresignTTL + time.Second} {
		if _, err := s.Presign(t.Context(), key, ttl); err == nil {
			t.Errorf("Presign(ttl %v) succeeded", ttl)
		}
	}
	if _, err := s.Presign(t.Context(), "../x", time.Minute); !errors.Is(err, blob.ErrBadKey) {
		t.Errorf("Presign(../x) = %v, want ErrBadKey", err)
	}
	// Expiry is enforced.
	short, err := s.Presign(t.Context(), key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	if code, _ := get(short, ""); code != 403 {
		t.Errorf("expired presigned URL: status %d, want 403", code)
	}
}

// TestS3MissingBucketIsNotMissingObject: a typo in the bucket name must
// fail loudly, not look like an empty repository.
func TestS3MissingBucketIsNotMissingObject(t *testing.T) {
	srv := s3test.StartServer(t)
	s, err := blob.NewS3(t.Context(), srv.URL("no-such-bucket"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(t.Context()); err == nil || !strings.Contains(err.Error(), `s3 bucket "no-such-bucket" does not exist`) {
		t.Errorf("Check = %v, want a 'does not exist' error", err)
	}
	if _, _, err := s.Open(t.Context(), "tuf/timestamp.json"); err == nil || errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Open in a missing bucket = %v, want an error other than ErrNotFound", err)
	}
	if err := s.Put(t.Context(), "k", strings.NewReader("x"), 1); err == nil || !strings.Contains(err.Error(), "no-such-bucket") {
		t.Errorf("Put in a missing bucket = %v, want an error naming the bucket", err)
	}
}

func TestS3WrongCredentials(t *testing.T) {
	srv := s3test.StartServer(t)
	u := srv.NewBucket(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
	s, err := blob.NewS3(t.Context(), u)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(t.Context())
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("Check with a wrong secret = %v, want access denied", err)
	}
	if err != nil && (strings.Contains(err.Error(), "wrong-secret") || strings.Contains(err.Error(), srv.SecretKey)) {
		t.Errorf("error leaks a secret: %v", err)
	}
}

func TestS3BadURLs(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_CONFIG_FILE", missing)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CA_BUNDLE", "")
	tests := []struct {
		url, wantErr string
	}{
		{"s3://", "has no bucket"},
		{"s3:///prefix", "has no bucket"},
		{"s3:bucket", "want s3://bucket"},
		{"s3://bucket?endpoint=ftp://127.0.0.1:9000", `endpoint scheme "ftp", want http or https`},
		{"s3://bucket?endpoint=127.0.0.1:9000", "endpoint"},
		{"s3://bucket?endpoint=http://", "endpoint has no host"},
		{"s3://bucket?endpoint=http://h:1/path", "endpoint must be just scheme://host[:port]"},
		{"s3://bucket?endpoint=http://user:hunter2@h:1", "endpoint must not contain credentials"},
		{"s3://bucket?secret=hunter2", `unknown query parameter "secret"`},
		{"s3://bucket?endpoint=http://h:1&endpoint=http://h:2", `"endpoint" given 2 times`},
		{"s3://AKIA:hunter2@bucket", "must not contain credentials"},
		{"s3://Bad_Bucket", `invalid bucket name "Bad_Bucket"`},
		{"s3://b", "invalid bucket name"},
		{"s3://bucket:9000", "invalid bucket name"},
		{"s3://bucket/../etc", "key prefix"},
		{"s3://bucket/a//b", "key prefix"},
		{"s3://bucket/" + strings.Repeat("p", 300), "key prefix longer than 255 bytes"},
		{"s3://bucket?path-style=maybe", "path-style must be true or false"},
		{"s3://bucket?part-size=1024", "part-size must be"},
		{"s3://bucket?region=", "empty region"},
		{"s3://bucket#frag", "fragment"},
		{"s3://bucket", "no region"},
	}
	for _, tc := range tests {
		s, err := blob.NewS3(context.Background(), tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("NewS3(%q) error = %v, want %q", tc.url, err, tc.wantErr)
		}
		if s != nil {
			t.Errorf("NewS3(%q) returned a store with its error", tc.url)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("NewS3(%q) error echoes a secret: %v", tc.url, err)
		}
		if !strings.HasPrefix(tc.url, "s3://") {
			continue // blob.Open takes it for a file path
		}
		if s, err := blob.Open(context.Background(), tc.url); err == nil || s != nil {
			t.Errorf("Open(%q) = %v, %v; want only an error", tc.url, s, err)
		}
	}
	// Good URLs need no server to open.
	for _, u := range []string{
		"s3://my-bucket?region=eu-west-1",
		"s3://my.bucket/fleet/a?endpoint=https://s3.example.com&path-style=false&part-size=16777216",
		"s3://bucket?endpoint=http://127.0.0.1:9000",
	} {
		if _, err := blob.NewS3(context.Background(), u); err != nil {
			t.Errorf("NewS3(%q): %v", u, err)
		}
	}
}

func bucketOf(u string) string {
	return strings.TrimPrefix(strings.SplitN(u, "?", 2)[0], "s3://")
}

// cuttingProxy forwards to an S3 server and, while cut is > 0, aborts each
// GET response after cutAfter body bytes, as a flaky network would.
type cuttingProxy struct {
	next     http.Handler
	cutAfter int64
	cut      atomic.Int32 // responses still to cut
	ranged   atomic.Int32 // ranged GETs seen
}

func (p *cuttingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == "GET" && r.Header.Get("Range") != "" {
		p.ranged.Add(1)
	}
	if r.Method == "GET" && p.cut.Add(-1) >= 0 {
		w = &cuttingWriter{ResponseWriter: w, left: p.cutAfter}
	}
	p.next.ServeHTTP(w, r)
}

type cuttingWriter struct {
	http.ResponseWriter
	left int64
}

func (c *cuttingWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > c.left {
		c.ResponseWriter.Write(b[:c.left])
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	c.left -= int64(len(b))
	return c.ResponseWriter.Write(b)
}

// TestS3ReadResumesAfterCutConnection: a response cut mid-body is resumed
// with a ranged GET of the same version; a server that keeps failing
// without progress gives an error, not a hang or short data.
func TestS3ReadResumesAfterCutConnection(t *testing.T) {
	srv := s3test.StartServer(t)
	bucketURL := srv.NewBucket(t)
	target, _ := url.Parse(srv.Endpoint)
	proxy := &cuttingProxy{next: httputil.NewSingleHostReverseProxy(target)}
	ps := httptest.NewServer(proxy)
	t.Cleanup(ps.Close)
	s := newS3(t, strings.Replace(bucketURL, srv.Endpoint, ps.URL, 1))
	data := randomBytes(5, 3<<20)
	if err := s.Put(t.Context(), "targets/fw.bin", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}

	proxy.cutAfter = 1 << 20
	proxy.cut.Store(2) // the first GET and the first resumption
	rc, info, err := s.Open(t.Context(), "targets/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) || info.Size != int64(len(data)) {
		t.Fatalf("read through cut connections: %d bytes, %v, equal %v", len(got), err, bytes.Equal(got, data))
	}
	if n := proxy.ranged.Load(); n != 2 {
		t.Errorf("%d ranged GETs, want 2 resumptions", n)
	}

	proxy.cutAfter = 0
	proxy.cut.Store(1 << 30)
	rc, _, err = s.Open(t.Context(), "targets/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(rc); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), `reading "targets/fw.bin"`) {
			t.Errorf("read from a server that always cuts = %v, want a read error naming the key", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("read from a server that always cuts did not give up")
	}
}

// TestS3CancelledMultipartUploadIsAborted: a Put whose context ends
// mid-upload leaves no multipart upload (and its stored parts) behind, even
// though the SDK's own abort uses the cancelled context.
func TestS3CancelledMultipartUploadIsAborted(t *testing.T) {
	srv := s3test.StartServer(t)
	u := srv.NewBucket(t)
	s := newS3(t, u+"&part-size=5242880")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	body := io.MultiReader(bytes.NewReader(randomBytes(6, 12<<20)), readerFunc(func([]byte) (int, error) {
		cancel()
		time.Sleep(100 * time.Millisecond)
		return 0, ctx.Err()
	}))
	if err := s.Put(ctx, "targets/big.img", body, -1); err == nil {
		t.Fatal("Put with a context cancelled mid-upload succeeded")
	}
	ups, err := srv.Client().ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucketOf(u))})
	if err != nil {
		t.Fatal(err)
	}
	for _, up := range ups.Uploads {
		t.Errorf("multipart upload of %q left behind", aws.ToString(up.Key))
	}
	if _, err := s.Stat(t.Context(), "targets/big.img"); !errors.Is(err, blob.ErrNotFound) {
		t.Errorf("Stat after cancelled Put = %v, want ErrNotFound", err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
