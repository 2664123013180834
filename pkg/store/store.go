// Package store is fosterd's durable state: device models, enrollment tokens,
// devices, releases, install attestations and the admin audit trail.
//
// One implementation over database/sql serves both back ends: SQLite (pure Go,
// modernc.org/sqlite; the embedded default) and PostgreSQL (pgx). The same
// contract test suite runs against both. Methods that must be atomic
// (consuming a token while issuing a certificate, accepting an attestation
// only if its sequence is fresh) run in a single transaction. A *DB is safe
// for concurrent use.
package store

import (
	"errors"
	"time"
)

// Errors callers branch on with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("already exists")
	ErrTokenInvalid = errors.New("enrollment token is invalid")
	ErrTokenUsed    = errors.New("enrollment token was already used")
	ErrTokenExpired = errors.New("enrollment token has expired")
	ErrTokenBinding = errors.New("enrollment token is bound to another device")
	ErrSequenceJump = errors.New("attestation sequence jumps too far")
	ErrReplay       = errors.New("replay: attestation sequence is not newer than the last accepted one")
	ErrStale        = errors.New("release counter is not above the latest for this model")
)

// Model is a device model (hardware product line).
type Model struct {
	Name        string   `json:"name"`
	HardwareIDs []string `json:"hardware_ids"`
	// CertValiditySeconds is the lifetime of this model's device
	// certificates; 0 means the instance default (identity.device_validity).
	CertValiditySeconds int64     `json:"cert_validity_seconds,omitempty"`
	CreatedAt           time.Time `json:"created_at"`
}

// CertValidity is the model's device certificate lifetime, 0 for the default.
func (m Model) CertValidity() time.Duration {
	return time.Duration(m.CertValiditySeconds) * time.Second
}

// Token is a one-time enrollment token. Only its SHA-256 is stored.
type Token struct {
	Hash      string    `json:"-"`
	Serial    string    `json:"serial"`
	Model     string    `json:"model"`
	ExpiresAt time.Time `json:"expires_at"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	UsedAt    time.Time `json:"used_at,omitzero"`
}

// Device statuses.
const (
	DeviceActive  = "active"
	DeviceRevoked = "revoked"
)

// Device is an enrolled device and what it last reported.
type Device struct {
	ID                string    `json:"id"` // urn:foster:device:<model>:<serial>
	Serial            string    `json:"serial"`
	Model             string    `json:"model"`
	Status            string    `json:"status"`
	CertSerial        string    `json:"cert_serial"`
	CertNotAfter      time.Time `json:"cert_not_after"`
	CertPEM           string    `json:"-"`
	EnrolledAt        time.Time `json:"enrolled_at"`
	InstalledVersion  string    `json:"installed_version,omitempty"`
	InstalledTarget   string    `json:"installed_target,omitempty"`
	InstalledCounter  int64     `json:"installed_release_counter,omitempty"`
	LastAttestationAt time.Time `json:"last_attestation_at,omitzero"`
	LastSequence      int64     `json:"-"`
	// KeySHA256 is the SHA-256 of the device key (SubjectPublicKeyInfo DER),
	// hex: a second enrollment of the serial with another key is a clone.
	KeySHA256 string `json:"key_sha256,omitempty"`
	// ReprovisionAllowedAt is set when an admin allowed the next enrollment
	// of this serial to use a new key (device reprovision).
	ReprovisionAllowedAt time.Time `json:"reprovision_allowed_at,omitzero"`
	ReprovisionBy        string    `json:"reprovision_by,omitempty"`
	RevokedAt            time.Time `json:"revoked_at,omitzero"`
	RevokeReason         string    `json:"revoke_reason,omitempty"`
	// ReplacedCertSerial is the certificate the last renewal replaced while
	// the device has not yet used its current one: until then it may still
	// authenticate (to retry a renewal whose reply was lost); at the first
	// use of the current certificate it is revoked as superseded.
	ReplacedCertSerial string `json:"replaced_cert_serial,omitempty"`
	// HardwareID is the hardware id the device enrolled with, one of its
	// model's; empty when the model declares none.
	HardwareID string `json:"hardware_id,omitempty"`
}

// Release is a published firmware target.
type Release struct {
	ID         int64     `json:"id"`
	Model      string    `json:"model"`
	Version    string    `json:"version"`
	Counter    int64     `json:"release_counter"`
	TargetPath string    `json:"target"`
	SHA256     string    `json:"sha256"`
	Length     int64     `json:"length"`
	CreatedBy  string    `json:"created_by"`
	CreatedAt  time.Time `json:"created_at"`
}

// Attestation is an accepted install attestation.
type Attestation struct {
	ID         int64     `json:"id"`
	DeviceID   string    `json:"device_id"`
	Sequence   int64     `json:"sequence"`
	Outcome    string    `json:"outcome"`
	TargetPath string    `json:"target"`
	SHA256     string    `json:"sha256"`
	Version    string    `json:"version"`
	Counter    int64     `json:"release_counter"`
	Envelope   []byte    `json:"-"`
	ReceivedAt time.Time `json:"received_at"`
	// LeafIndex is the attestation's entry in the transparency log (-1 for
	// attestations accepted before the log existed).
	LeafIndex int64 `json:"leaf_index"`
	// CertSerial is the serial (hex) of the device certificate it was verified with.
	CertSerial string `json:"cert_serial,omitempty"`
}

// AuditEvent records an admin action: who, what, when.
type AuditEvent struct {
	ID     int64     `json:"id"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}
