package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// Limits of the S3 store. S3's own limits are 5 MiB..5 GiB per part, 10,000
// parts per upload and 5 GiB per CopyObject.
const (
	// DefaultS3PartSize is the multipart upload part size unless the URL
	// sets part-size. A Put holds up to s3UploadConcurrency+1 parts in
	// memory (40 MiB by default).
	DefaultS3PartSize = 8 << 20 // bytes
	// MaxS3ListKeys bounds the keys one List returns.
	MaxS3ListKeys = 1_000_000
	// MaxPresignTTL is the longest a presigned URL may live (SigV4's limit).
	MaxPresignTTL = 7 * 24 * time.Hour

	minS3PartSize       = 5 << 20 // bytes
	maxS3PartSize       = 5 << 30 // bytes
	maxS3Parts          = 10_000
	maxS3CopyObjectSize = 5 << 30   // bytes; larger objects are copied part by part
	s3CopyPartSize      = 512 << 20 // bytes
	s3UploadConcurrency = 4
	maxS3Prefix         = 256 // bytes
	// Forward seeks up to this far are served by discarding from the open
	// response instead of a new ranged GET.
	s3MaxSkip = 256 << 10 // bytes
	// An abandoned response with at most this much left is drained so its
	// connection can be reused.
	s3MaxDrain = 64 << 10 // bytes

	s3DialTimeout = 10 * time.Second
	// No data at all on a connection for this long fails the request (it is
	// not a deadline on the whole transfer).
	s3ReadTimeout = 2 * time.Minute
	// Used to abort a multipart upload after the caller's context ended.
	s3CleanupTimeout = 30 * time.Second
)

// S3 is a Store on an S3-compatible bucket (AWS S3, MinIO, versitygw, Ceph
// RGW, Garage), optionally under a key prefix. Credentials come from the
// standard AWS chain (environment, shared config and credentials files,
// SSO, web identity, container and instance roles); they are never part of
// the URL and never logged. AWS_CA_BUNDLE is honoured for private CAs.
//
// Put uses PutObject or, for bodies larger than the part size, a multipart
// upload; both are atomic for readers, and a failed upload is aborted.
//
// Open gives a snapshot of the object: it issues one GET and reads the
// response sequentially, so a whole-object read sees exactly one version
// even while the key is being overwritten. After a Seek elsewhere, reads
// continue with ranged GETs pinned to that version (If-Match on its ETag);
// if the object was replaced or deleted in the meantime they fail rather
// than mix two versions. Firmware targets are content-addressed and never
// replaced, so this only matters for TUF metadata, which is small and read
// whole.
//
// Unlike FS, a key can be both an object and a prefix of other keys, if the
// server allows it (versitygw's posix backend, like FS, does not). Under a
// prefix, the server's key length limit (1024 bytes on AWS) applies to
// prefix + key.
//
// S3 is safe for concurrent use; the readers Open returns are not.
type S3 struct {
	client   *s3.Client
	uploader *transfermanager.Client
	presign  *s3.PresignClient
	bucket   string
	prefix   string // "" or ends in "/"
	endpoint string // "" for AWS
	partSize int64

	// Objects above maxCopy are copied with UploadPartCopy in copyPart-sized
	// parts (fields so tests can exercise it without 5 GiB objects).
	maxCopy, copyPart int64
}

var (
	_ Store  = (*S3)(nil)
	_ Copier = (*S3)(nil)
)

// s3URL is a parsed s3:// blob store URL.
type s3URL struct {
	bucket, prefix   string
	endpoint, region string
	pathStyle        bool
	partSize         int64
}

// bucketName is S3's rule for new buckets: 3-63 lower-case letters, digits,
// dots and hyphens, starting and ending with a letter or digit.
var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// parseS3URL parses s3://bucket[/prefix][?endpoint=URL&region=R&path-style=BOOL&part-size=BYTES].
// Errors name the offending part but never echo query values, in case
// someone pasted a secret into one.
func parseS3URL(raw string) (s3URL, error) {
	var c s3URL
	u, err := url.Parse(raw)
	if err != nil {
		return c, errors.New("s3 blob store URL is not a valid URL")
	}
	if u.Scheme != "s3" {
		return c, fmt.Errorf("s3 blob store URL: scheme %q, want s3", u.Scheme)
	}
	if u.Opaque != "" {
		return c, errors.New("s3 blob store URL: want s3://bucket[/prefix]")
	}
	if u.User != nil {
		return c, errors.New("s3 blob store URL must not contain credentials: use the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles)")
	}
	if u.Fragment != "" {
		return c, errors.New("s3 blob store URL must not have a #fragment")
	}
	c.bucket = u.Host
	if c.bucket == "" {
		return c, errors.New("s3 blob store URL has no bucket: want s3://bucket[/prefix]")
	}
	if !bucketName.MatchString(c.bucket) || strings.Contains(c.bucket, "..") {
		return c, fmt.Errorf("s3 blob store URL: invalid bucket name %q (3-63 characters: a-z, 0-9, '.', '-')", c.bucket)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := ValidKey(p); err != nil {
			return c, fmt.Errorf("s3 blob store URL: key prefix: %w", err)
		}
		if len(p) >= maxS3Prefix {
			return c, fmt.Errorf("s3 blob store URL: key prefix longer than %d bytes", maxS3Prefix-1)
		}
		c.prefix = p + "/"
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return c, errors.New("s3 blob store URL: malformed query string")
	}
	for name, vals := range q {
		if len(vals) != 1 {
			return c, fmt.Errorf("s3 blob store URL: query parameter %q given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "endpoint":
			if c.endpoint, err = parseEndpoint(v); err != nil {
				return c, err
			}
		case "region":
			if v == "" {
				return c, errors.New("s3 blob store URL: empty region")
			}
			c.region = v
		case "path-style":
			if c.pathStyle, err = strconv.ParseBool(v); err != nil {
				return c, errors.New("s3 blob store URL: path-style must be true or false")
			}
		case "part-size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < minS3PartSize || n > maxS3PartSize {
				return c, fmt.Errorf("s3 blob store URL: part-size must be a number of bytes from %d (5 MiB) to %d (5 GiB)", minS3PartSize, maxS3PartSize)
			}
			c.partSize = n
		default:
			return c, fmt.Errorf("s3 blob store URL: unknown query parameter %q (known: endpoint, region, path-style, part-size)", name)
		}
	}
	return c, nil
}

func parseEndpoint(v string) (string, error) {
	e, err := url.Parse(v)
	if err != nil || e.Opaque != "" {
		return "", errors.New("s3 blob store URL: endpoint is not a valid URL (want http[s]://host[:port])")
	}
	if e.Scheme != "http" && e.Scheme != "https" {
		return "", fmt.Errorf("s3 blob store URL: endpoint scheme %q, want http or https", e.Scheme)
	}
	if e.User != nil {
		return "", errors.New("s3 blob store URL: endpoint must not contain credentials")
	}
	if e.Host == "" || e.Hostname() == "" {
		return "", errors.New("s3 blob store URL: endpoint has no host")
	}
	if (e.Path != "" && e.Path != "/") || e.RawQuery != "" || e.Fragment != "" {
		return "", errors.New("s3 blob store URL: endpoint must be just scheme://host[:port]")
	}
	return e.Scheme + "://" + e.Host, nil
}

// NewS3 returns a store for an s3:// URL:
//
//	s3://bucket[/prefix][?endpoint=http://127.0.0.1:9000&region=us-east-1&path-style=true&part-size=8388608]
//
// endpoint is for S3-compatible servers (default: AWS); region defaults to
// the AWS configuration (AWS_REGION, profile) and, with an endpoint, to
// us-east-1; path-style addresses the bucket in the path rather than the
// host name, which most self-hosted servers need; part-size is the multipart
// part size in bytes (default DefaultS3PartSize). Unknown parameters are
// errors. NewS3 does not contact the server: call Check for that.
func NewS3(ctx context.Context, rawURL string) (*S3, error) {
	c, err := parseS3URL(rawURL)
	if err != nil {
		return nil, err
	}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = s3DialTimeout }).
		WithReadTimeout(s3ReadTimeout)
	opts := []func(*config.LoadOptions) error{config.WithHTTPClient(httpClient)}
	if c.region != "" {
		opts = append(opts, config.WithRegion(c.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 blob store (bucket %q): loading AWS configuration: %w", c.bucket, err)
	}
	if cfg.Region == "" {
		if c.endpoint == "" {
			return nil, fmt.Errorf("s3 blob store (bucket %q): no region: add ?region=... to the URL or set AWS_REGION", c.bucket)
		}
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.endpoint != "" {
			o.BaseEndpoint = aws.String(c.endpoint)
		}
		o.UsePathStyle = c.pathStyle
		// Ranged GETs and multipart objects have no whole-object checksum
		// to check; that is expected, not worth a log line per request.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	s := &S3{
		client:   client,
		presign:  s3.NewPresignClient(client),
		bucket:   c.bucket,
		prefix:   c.prefix,
		endpoint: c.endpoint,
		partSize: orDefault(c.partSize, DefaultS3PartSize),
		maxCopy:  maxS3CopyObjectSize,
		copyPart: s3CopyPartSize,
	}
	s.uploader = transfermanager.New(client, func(o *transfermanager.Options) {
		o.PartSizeBytes = s.partSize
		// One part or less goes in a single PutObject, as before (the
		// transfer manager's own threshold is 16 MiB whatever the part size).
		o.MultipartUploadThreshold = s.partSize
		o.Concurrency = s3UploadConcurrency
		o.MaxUploadParts = maxS3Parts
		// Abort a failed multipart upload on a fresh context even when the
		// caller's has ended, so its parts do not linger (and cost).
		o.FailTimeout = s3CleanupTimeout
	})
	return s, nil
}

func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// String describes the store for logs (no credentials are ever part of it).
func (s *S3) String() string {
	d := "s3://" + s.bucket + "/" + s.prefix
	if s.endpoint != "" {
		d += " at " + s.endpoint
	}
	return d
}

// Check verifies that the bucket exists and the credentials can reach it
// (HeadBucket), so a misconfigured store fails at startup, not on the
// first device download.
func (s *S3) Check(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	switch {
	case err == nil:
		return nil
	case httpStatus(err) == 404:
		return fmt.Errorf("s3 bucket %q does not exist%s", s.bucket, s.at())
	case httpStatus(err) == 403:
		return fmt.Errorf("s3 bucket %q%s: access denied (check the AWS credentials and bucket policy): %w", s.bucket, s.at(), err)
	default:
		return fmt.Errorf("s3 bucket %q%s: %w", s.bucket, s.at(), err)
	}
}

func (s *S3) at() string {
	if s.endpoint == "" {
		return ""
	}
	return " at " + s.endpoint
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.errorf("putting", key, err)
	}
	body := &sizedReader{r: ctxReader{ctx, r}, size: size}
	var opts []func(*transfermanager.Options)
	if size > s.partSize*maxS3Parts {
		ps := (size + maxS3Parts - 1) / maxS3Parts
		opts = append(opts, func(o *transfermanager.Options) { o.PartSizeBytes, o.MultipartUploadThreshold = ps, ps })
	}
	_, err := s.uploader.UploadObject(ctx, &transfermanager.UploadObjectInput{
		Bucket:      aws.String(s.bucket),
		Key:         aws.String(s.prefix + key),
		Body:        body,
		ContentType: aws.String("application/octet-stream"),
	}, opts...)
	if err == nil {
		return nil
	}
	var mf transfermanager.MultipartUploadError
	if errors.As(err, &mf) && ctx.Err() != nil && mf.UploadID() != "" {
		// The transfer manager aborts on a fresh context (FailTimeout);
		// abort again in case that failed too, so the parts do not linger.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
		_, _ = s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(s.bucket), Key: aws.String(s.prefix + key), UploadId: aws.String(mf.UploadID()),
		})
		cancel()
	}
	if body.err != nil {
		err = body.err // the body's own failure, not the SDK's wrapping of it
	}
	return s.errorf("putting", key, err)
}

// sizedReader fails when the body's length differs from the declared size
// (never reading more than one byte past it), so the upload is aborted.
type sizedReader struct {
	r    io.Reader
	size int64 // -1 if unknown
	n    int64
	err  error
}

func (b *sizedReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.size >= 0 && int64(len(p)) > b.size+1-b.n {
		p = p[:b.size+1-b.n]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	switch {
	case b.size >= 0 && b.n > b.size:
		b.err = fmt.Errorf("%w: body has more than %d bytes", ErrSizeMismatch, b.size)
		return n, b.err
	case b.size >= 0 && err == io.EOF && b.n != b.size:
		b.err = fmt.Errorf("%w: body has %d bytes, declared %d", ErrSizeMismatch, b.n, b.size)
		return n, b.err
	case err != nil && err != io.EOF:
		b.err = err
	}
	return n, err
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil && !isS3NotFound(err) {
		return s.errorf("deleting", key, err)
	}
	return nil
}

// List implements Store. Objects under the store's prefix whose names are
// not valid keys (written by other tools) are not listed. At most
// MaxS3ListKeys keys are returned; more is an error.
func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	if err := ValidPrefix(prefix); err != nil {
		return nil, err
	}
	in := &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket)}
	if p := s.prefix + prefix; p != "" {
		in.Prefix = aws.String(p)
	}
	keys := []string{}
	pages := s3.NewListObjectsV2Paginator(s.client, in)
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing %q in s3 bucket %q%s: %w", prefix, s.bucket, s.at(), err)
		}
		for _, o := range page.Contents {
			k, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || !strings.HasPrefix(k, prefix) || ValidKey(k) != nil {
				continue
			}
			keys = append(keys, k)
		}
		if len(keys) > MaxS3ListKeys {
			return nil, fmt.Errorf("listing %q in s3 bucket %q: more than %d keys", prefix, s.bucket, MaxS3ListKeys)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// Copy implements Copier with a server-side CopyObject (UploadPartCopy for
// objects over 5 GiB), pinned to the source's ETag.
func (s *S3) Copy(ctx context.Context, src, dst string) error {
	if err := ValidKey(src); err != nil {
		return err
	}
	if err := ValidKey(dst); err != nil {
		return err
	}
	head, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + src),
	})
	if err != nil {
		return s.errorf("copying", src, err)
	}
	if src == dst {
		return nil // S3 refuses to copy an object onto itself unchanged
	}
	info, err := s.info(src, head.ContentLength, head.LastModified, head.ETag)
	if err != nil {
		return err
	}
	source := s.copySource(src)
	if info.Size <= s.maxCopy {
		_, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket:            aws.String(s.bucket),
			Key:               aws.String(s.prefix + dst),
			CopySource:        aws.String(source),
			CopySourceIfMatch: head.ETag,
		})
	} else {
		err = s.copyParts(ctx, dst, source, head.ETag, info.Size)
	}
	if err != nil {
		return fmt.Errorf("copying %q to %q in s3 bucket %q%s: %w", src, dst, s.bucket, s.at(), mapS3Err(err))
	}
	return nil
}

// copySource is "bucket/key", URL-encoded as CopyObject requires. '+' is
// escaped too: some servers (versitygw) decode it as a space.
func (s *S3) copySource(key string) string {
	segs := strings.Split(s.prefix+key, "/")
	for i, seg := range segs {
		segs[i] = strings.ReplaceAll(url.PathEscape(seg), "+", "%2B")
	}
	return s.bucket + "/" + strings.Join(segs, "/")
}

func (s *S3) copyParts(ctx context.Context, dst, source string, etag *string, size int64) error {
	ps := max(s.copyPart, (size+maxS3Parts-1)/maxS3Parts)
	up, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket:      aws.String(s.bucket),
		Key:         aws.String(s.prefix + dst),
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		return err
	}
	var parts []types.CompletedPart
	for off, n := int64(0), int32(1); off < size; off, n = off+ps, n+1 {
		var out *s3.UploadPartCopyOutput
		out, err = s.client.UploadPartCopy(ctx, &s3.UploadPartCopyInput{
			Bucket:            aws.String(s.bucket),
			Key:               aws.String(s.prefix + dst),
			UploadId:          up.UploadId,
			PartNumber:        aws.Int32(n),
			CopySource:        aws.String(source),
			CopySourceIfMatch: etag,
			CopySourceRange:   aws.String(fmt.Sprintf("bytes=%d-%d", off, min(off+ps, size)-1)),
		})
		if err != nil {
			break
		}
		if out.CopyPartResult == nil || out.CopyPartResult.ETag == nil {
			err = fmt.Errorf("part %d: server sent no ETag", n)
			break
		}
		parts = append(parts, types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(n)})
	}
	if err == nil {
		_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(s.bucket),
			Key:             aws.String(s.prefix + dst),
			UploadId:        up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
	}
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3CleanupTimeout)
		defer cancel()
		_, _ = s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(s.bucket), Key: aws.String(s.prefix + dst), UploadId: up.UploadId,
		})
	}
	return err
}

// errorf names the key, bucket and server, and maps S3's not-found errors
// to ErrNotFound.
func (s *S3) errorf(op, key string, err error) error {
	return fmt.Errorf("%s %q in s3 bucket %q%s: %w", op, key, s.bucket, s.at(), mapS3Err(err))
}

func mapS3Err(err error) error {
	if isS3NotFound(err) {
		return ErrNotFound
	}
	return err
}

// isS3NotFound reports a missing object. A missing bucket is not one
// (NoSuchBucket), except on HEAD requests, whose 404 carries no body to
// tell them apart; Check catches that case at startup.
func isS3NotFound(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			return true
		case "NoSuchBucket", "NoSuchUpload":
			return false
		}
	}
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	return errors.As(err, &nsk) || errors.As(err, &nf) || (httpStatus(err) == 404 && !isCode(err, "NoSuchBucket"))
}

func isCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}
