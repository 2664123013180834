package blob

// Reading from S3: Open (a seekable reader of one version of an object),
// Stat and Presign. Writing, listing and copying are in s3.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Open implements Store. The reader uses ctx for all its requests.
func (s *S3) Open(ctx context.Context, key string) (ReadSeekCloser, Info, error) {
	if err := ValidKey(key); err != nil {
		return nil, Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, Info{}, s.errorf("opening", key, err)
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return nil, Info{}, s.errorf("opening", key, err)
	}
	info, err := s.info(key, out.ContentLength, out.LastModified, out.ETag)
	if err != nil {
		out.Body.Close()
		return nil, Info{}, err
	}
	return &s3Object{
		s: s, ctx: ctx, key: key, info: info, etag: aws.ToString(out.ETag),
		body: out.Body,
	}, info, nil
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil {
		return Info{}, s.errorf("stat", key, err)
	}
	return s.info(key, out.ContentLength, out.LastModified, out.ETag)
}

func (s *S3) info(key string, size *int64, mod *time.Time, etag *string) (Info, error) {
	if size == nil || *size < 0 || etag == nil {
		return Info{}, s.errorf("reading metadata of", key, errors.New("server sent no Content-Length or ETag"))
	}
	return Info{
		Key:     key,
		Size:    *size,
		ModTime: aws.ToTime(mod),
		ETag:    strings.Trim(*etag, `"`),
	}, nil
}

// Presign returns a URL that lets anyone holding it GET key until ttl
// passes (at most MaxPresignTTL), so devices can be redirected to the
// bucket instead of streaming through fosterd. It does not check that the
// object exists. The URL is a bearer credential: do not log it.
func (s *S3) Presign(ctx context.Context, key string, ttl time.Duration) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	if ttl <= 0 || ttl > MaxPresignTTL {
		return "", fmt.Errorf("presigning %q: ttl %v out of range (0, %v]", key, ttl, MaxPresignTTL)
	}
	req, err := s.presign.PresignGetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	}, s3.WithPresignExpires(ttl))
	if err != nil {
		return "", s.errorf("presigning", key, err)
	}
	return req.URL, nil
}

// s3Object reads one version of an object: the response of Open's GET,
// then ranged GETs with If-Match after seeks. Not safe for concurrent use.
type s3Object struct {
	s    *S3
	ctx  context.Context
	key  string
	info Info
	etag string // as the server sent it (quoted), for If-Match

	off     int64         // the reader's position
	body    io.ReadCloser // open response, or nil
	bodyOff int64         // position of body's next byte
	closed  bool
}

func (o *s3Object) Read(p []byte) (int, error) {
	if o.closed {
		return 0, fmt.Errorf("reading %q: %w", o.key, errClosedObject)
	}
	if o.off >= o.info.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if o.body != nil && o.bodyOff != o.off {
		if d := o.off - o.bodyOff; d > 0 && d <= s3MaxSkip {
			if _, err := io.CopyN(io.Discard, o.body, d); err == nil {
				o.bodyOff = o.off
			} else {
				o.dropBody()
			}
		} else {
			o.dropBody()
		}
	}
	p = p[:min(int64(len(p)), o.info.Size-o.off)]
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if err := o.ctx.Err(); err != nil {
			return 0, o.s.errorf("reading", o.key, err)
		}
		if o.body == nil {
			if err := o.reopen(); err != nil {
				return 0, err
			}
		}
		n, err := o.body.Read(p)
		o.off += int64(n)
		o.bodyOff += int64(n)
		if err == nil && o.bodyOff == o.info.Size {
			err = o.finish()
		}
		if err != nil {
			o.body.Close()
			o.body = nil
		}
		if n > 0 || err == nil {
			switch {
			case o.off >= o.info.Size && err != nil && err != io.EOF:
				return n, o.s.errorf("reading", o.key, err) // e.g. checksum mismatch
			case o.off >= o.info.Size:
				return n, io.EOF
			default:
				return n, nil // a failed response is replaced on the next Read
			}
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the response ended before Info.Size
		}
		lastErr = err // retry from o.off: a cut connection is common over long downloads
	}
	return 0, o.s.errorf("reading", o.key, lastErr)
}

// reopen continues at o.off with a ranged GET of the same version.
func (o *s3Object) reopen() error {
	out, err := o.s.client.GetObject(o.ctx, &s3.GetObjectInput{
		Bucket:  aws.String(o.s.bucket),
		Key:     aws.String(o.s.prefix + o.key),
		Range:   aws.String(fmt.Sprintf("bytes=%d-", o.off)),
		IfMatch: aws.String(o.etag),
	})
	if err != nil {
		if isCode(err, "PreconditionFailed") || httpStatus(err) == 412 {
			err = errors.New("object was replaced since it was opened")
		}
		return o.s.errorf("reading", o.key, err)
	}
	if got := aws.ToString(out.ContentRange); !strings.HasPrefix(got, fmt.Sprintf("bytes %d-", o.off)) ||
		aws.ToString(out.ETag) != o.etag {
		out.Body.Close()
		return o.s.errorf("reading", o.key, fmt.Errorf("server answered a range request from byte %d with Content-Range %q", o.off, got))
	}
	o.body, o.bodyOff = out.Body, o.off
	return nil
}

// finish reads the end of a response that has delivered all its bytes, so
// the SDK verifies the object's checksum (when the server sent one) and the
// connection goes back to the pool. It returns io.EOF if all is well.
func (o *s3Object) finish() error {
	var b [1]byte
	n, err := o.body.Read(b[:])
	if n > 0 {
		return fmt.Errorf("server sent more than the object's %d bytes", o.info.Size)
	}
	if err == nil {
		n, err = o.body.Read(b[:]) // a reader may return 0, nil once
		if n > 0 || err == nil {
			return fmt.Errorf("server sent more than the object's %d bytes", o.info.Size)
		}
	}
	return err
}

// dropBody abandons the open response.
func (o *s3Object) dropBody() {
	if o.body == nil {
		return
	}
	if rest := o.info.Size - o.bodyOff; rest <= s3MaxDrain {
		// Cheaper than a new connection.
		if _, err := io.CopyN(io.Discard, o.body, rest); err == nil {
			_ = o.finish()
		}
	}
	o.body.Close()
	o.body = nil
}

func (o *s3Object) Seek(offset int64, whence int) (int64, error) {
	if o.closed {
		return 0, fmt.Errorf("seeking %q: %w", o.key, errClosedObject)
	}
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = o.off + offset
	case io.SeekEnd:
		abs = o.info.Size + offset
	default:
		return 0, fmt.Errorf("seeking %q: invalid whence %d", o.key, whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seeking %q: negative position %d", o.key, abs)
	}
	o.off = abs
	return abs, nil
}

func (o *s3Object) Close() error {
	if o.closed {
		return nil
	}
	o.closed = true
	o.dropBody()
	return nil
}

var errClosedObject = errors.New("blob reader already closed")
