package client

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestRedirectsLeaveTheDeviceCertificateHome: a download that fosterd
// redirects to another host (a presigned S3 URL) goes through the plain
// transport, never the device's mTLS one; redirects on fosterd's own host
// stay on it.
func TestRedirectsLeaveTheDeviceCertificateHome(t *testing.T) {
	bucket := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "image from the bucket")
	}))
	defer bucket.Close()
	var home, away atomic.Int32
	fosterd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/targets/local":
			http.Redirect(w, r, "/targets/moved", http.StatusTemporaryRedirect)
		case "/targets/moved":
			io.WriteString(w, "image from fosterd")
		default:
			http.Redirect(w, r, bucket.URL+"/obj?X-Amz-Signature=x", http.StatusTemporaryRedirect)
		}
	}))
	defer fosterd.Close()
	count := func(n *atomic.Int32, rt http.RoundTripper) http.RoundTripper {
		return rtFunc(func(r *http.Request) (*http.Response, error) { n.Add(1); return rt.RoundTrip(r) })
	}
	c := &http.Client{Transport: offsiteTransport{home: count(&home, http.DefaultTransport), away: count(&away, http.DefaultTransport)}}
	for _, tc := range []struct {
		path, body string
		home, away int32
	}{
		{"/targets/s3", "image from the bucket", 1, 1},
		{"/targets/local", "image from fosterd", 3, 1},
	} {
		resp, err := c.Get(fosterd.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), tc.body) || home.Load() != tc.home || away.Load() != tc.away {
			t.Fatalf("%s: %q, home %d away %d round trips", tc.path, b, home.Load(), away.Load())
		}
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
