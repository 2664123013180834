// Package outbox is the device's store-and-forward queue of signed install
// attestations. A device may be offline for years, so an attestation is
// written to disk (atomically) before any attempt to send it, and only moved
// out of the outbox once the server has accepted it.
//
//	outbox/<seq>.json    signed DSSE envelopes waiting to be sent, sent in sequence order
//	sent/<seq>.json      accepted by the server (2xx)
//	bundles/<seq>.json   the server's proof of acceptance (transparency log bundle, bundles.go)
//	rejected/<seq>.json  refused by the server as invalid (4xx other than auth/rate limits): resending cannot help
package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/foster-ota/foster/client/internal/killpoint"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/apierr"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/attest"
)

// Doer sends HTTP requests; *http.Client satisfies it.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Outbox is a directory queue. Not safe for concurrent use.
type Outbox struct {
	Layout statedir.Layout
	Log    *slog.Logger
}

func name(seq int64) string { return strconv.FormatInt(seq, 10) + ".json" }

// Put stores an envelope under its sequence number.
func (o *Outbox) Put(seq int64, envelope []byte) error {
	if len(envelope) > attest.MaxEnvelopeSize {
		return fmt.Errorf("attestation %d: envelope of %d bytes exceeds %d", seq, len(envelope), attest.MaxEnvelopeSize)
	}
	if err := o.makeRoom(); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(o.Layout.Outbox(), name(seq)), envelope, 0o600)
}

// Has reports whether an envelope for seq is queued, sent or rejected.
func (o *Outbox) Has(seq int64) bool {
	for _, dir := range []string{o.Layout.Outbox(), o.Layout.Sent(), o.Layout.Rejected()} {
		if _, err := os.Lstat(filepath.Join(dir, name(seq))); err == nil {
			return true
		}
	}
	return false
}

// Queued returns the sequence numbers waiting in the outbox, ascending.
func (o *Outbox) Queued() ([]int64, error) { return list(o.Layout.Outbox()) }

// SentCount returns how many attestations the server has accepted.
func (o *Outbox) SentCount() (int, error) {
	s, err := list(o.Layout.Sent())
	return len(s), err
}

func list(dir string) ([]int64, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var seqs []int64
	for _, e := range ents {
		base, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue // temp files of interrupted writes, strays
		}
		if n, err := strconv.ParseInt(base, 10, 64); err == nil && n > 0 {
			seqs = append(seqs, n)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

// FlushResult says what a Flush did.
type FlushResult struct {
	Sent, Rejected, Remaining int
}

// Flush POSTs queued envelopes to url in sequence order. It stops at the first
// transient failure (network, 5xx, 401/403/408/429) so that the server sees
// sequence numbers in order; that failure is returned and the envelope stays
// queued.
func (o *Outbox) Flush(ctx context.Context, client Doer, url string) (FlushResult, error) {
	var res FlushResult
	seqs, err := o.Queued()
	if err != nil {
		return res, err
	}
	for i, seq := range seqs {
		res.Remaining = len(seqs) - i
		path := filepath.Join(o.Layout.Outbox(), name(seq))
		env, err := statedir.ReadBounded(path, attest.MaxEnvelopeSize)
		if err != nil {
			return res, fmt.Errorf("reading attestation %d: %w", seq, err)
		}
		status, body, err := post(ctx, client, url, env)
		switch {
		case err == nil:
			killpoint.Hit("outbox-accepted")
			// The bundle first: if we stop before the move, the re-send
			// gets the same bundle back.
			if err := o.saveBundle(seq, body); err != nil {
				return res, err
			}
			if err := atomicfile.Rename(path, filepath.Join(o.Layout.Sent(), name(seq))); err != nil {
				return res, fmt.Errorf("moving attestation %d to sent: %w", seq, err)
			}
			res.Sent++
			o.Log.Info("attestation accepted", "sequence", seq)
		case permanent(status):
			if err := atomicfile.Rename(path, filepath.Join(o.Layout.Rejected(), name(seq))); err != nil {
				return res, fmt.Errorf("moving attestation %d to rejected: %w", seq, err)
			}
			res.Rejected++
			o.Log.Error("attestation rejected by server; kept in rejected/", "sequence", seq, "err", err)
		default:
			return res, fmt.Errorf("sending attestation %d: %w", seq, err)
		}
	}
	res.Remaining = 0
	return res, nil
}

// permanent reports whether a status means "this envelope will never be accepted".
// Authentication failures and rate limits are not the envelope's fault.
func permanent(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return status >= 400 && status < 500
}

func post(ctx context.Context, client Doer, url string, env []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(env))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, nil, apierr.FromResponse(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the server's answer: %w", err)
	}
	return resp.StatusCode, body, nil
}
