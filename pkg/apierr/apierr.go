// Package apierr is the JSON error shape of Foster's HTTP API,
// {"error": "...", "code": "..."}, shared by the server (which writes it)
// and the CLI and agent (which read it).
package apierr

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Error codes. Clients branch on Code, humans read Message.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeTooLarge     = "too_large"
	// CodeThrottled: too many failed attempts from this address (429,
	// with Retry-After).
	CodeThrottled    = "throttled"
	CodeInternal     = "internal"
	CodeTokenUsed    = "token_used"
	CodeTokenInvalid = "token_invalid"
	CodeUnknownModel = "unknown_model"
	// CodeClone: a serial already enrolled with another key.
	CodeClone = "clone"
	// CodeRevoked: the device, station or certificate is revoked.
	CodeRevoked = "revoked"
	// CodeStationRefused: a factory station may not enroll this device
	// (expired, over quota, model or serial not allowed).
	CodeStationRefused = "station_refused"
	// CodeGraceExpired: a certificate expired longer ago than the renewal grace period.
	CodeGraceExpired = "grace_expired"
	// CodeKeyMismatch: a renewal asked for a certificate for a key that is
	// not the device's current key (re-keying needs `device reprovision`).
	CodeKeyMismatch = "key_mismatch"
	// CodeHardwareID: an enrollment did not name one of the model's
	// hardware ids (or named one for a model that declares none).
	CodeHardwareID = "hardware_id"
)

// Error is an API error with its HTTP status.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (HTTP %d, %s)", e.Message, e.Status, e.Code)
	}
	return e.Message
}

// New builds an Error.
func New(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Write renders err as JSON. Errors that are not *Error become 500s whose
// message is generic, so internals never leak to callers.
func Write(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(e)
}

// maxErrorBody bounds how much of an error response a client reads.
const maxErrorBody = 16 << 10 // bytes

// FromResponse turns a non-2xx response into an *Error. It reads at most
// 16 KiB of the body.
func FromResponse(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Status: resp.StatusCode}
	if json.Unmarshal(body, e) != nil || e.Message == "" {
		e.Code = http.StatusText(resp.StatusCode)
		e.Message = fmt.Sprintf("server returned %s", resp.Status)
	}
	return e
}

// IsCode reports whether err is an API error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
