package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/apierr"
)

// api calls fosterd's JSON API with the caller's credential.
type api struct {
	base    *url.URL
	http    *http.Client
	timeout time.Duration
}

// maxAPIBody bounds a JSON answer read from fosterd.
const maxAPIBody = 32 << 20 // bytes

func (a *api) url(path string, q url.Values) string {
	u := a.base.JoinPath(path)
	u.RawQuery = q.Encode()
	return u.String()
}

// get decodes GET path?q into out.
func (a *api) get(ctx context.Context, path string, q url.Values, out any) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url(path, q), nil)
	if err != nil {
		return err
	}
	return a.do(req, out)
}

// getText returns the body of GET path (bounded).
func (a *api) getText(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url(path, nil), nil)
	if err != nil {
		return "", err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("contacting fosterd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", apierr.FromResponse(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b), err
}

// post sends a JSON body (nil: none) and decodes the answer into out.
func (a *api) post(ctx context.Context, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url(path, nil), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return a.do(req, out)
}

func (a *api) do(req *http.Request, out any) error {
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("contacting fosterd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return apierr.FromResponse(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAPIBody)).Decode(out); err != nil {
		return fmt.Errorf("decoding fosterd's answer: %w", err)
	}
	return nil
}

// status is the HTTP status to show for an API error: fosterd's own
// (403 for an auditor's action, 404 for an unknown device), else 502.
func status(err error) int {
	var ie *inputError
	if errors.As(err, &ie) {
		return ie.code
	}
	var e *apierr.Error
	if errors.As(err, &e) && e.Status >= 400 {
		return e.Status
	}
	return http.StatusBadGateway
}
