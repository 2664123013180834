package client_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func TestIsTransient(t *testing.T) {
	_, dialErr := http.Get("http://127.0.0.1:1/") // nothing listens on port 1
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", fmt.Errorf("refreshing: %w", dialErr), true},
		{"cut download", fmt.Errorf("length mismatch: %w", io.ErrUnexpectedEOF), true},
		{"server 503", apierr.New(503, "unavailable", "busy"), true},
		{"metadata 502", &metadata.ErrDownloadHTTP{StatusCode: 502}, true},
		{"metadata 404", &metadata.ErrDownloadHTTP{StatusCode: 404}, false},
		{"forbidden", apierr.New(403, apierr.CodeForbidden, "revoked"), false},
		{"rollback", &metadata.ErrBadVersionNumber{Msg: "old"}, false},
		{"untrusted server", fmt.Errorf("get: %w", x509.UnknownAuthorityError{}), false},
		{"cancelled", context.Canceled, false},
		{"plain", errors.New("disk full"), false},
	}
	for _, tt := range tests {
		if got := client.IsTransient(tt.err); got != tt.want {
			t.Errorf("%s: IsTransient(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
