package client

import (
	"errors"
	"os"
	"time"

	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/outbox"
	"github.com/foster-ota/foster/client/internal/statedir"
)

// Status is a read-only snapshot of a state dir, for humans and monitoring.
type Status struct {
	StateDir      string    `json:"state_dir"`
	Device        string    `json:"device"`
	DeviceID      string    `json:"device_id,omitempty"`
	Model         string    `json:"model"`
	Serial        string    `json:"serial"`
	HardwareID    string    `json:"hardware_id,omitempty"`
	Server        string    `json:"server"`
	CertSerial    string    `json:"cert_serial"`
	CertNotBefore time.Time `json:"cert_not_before"`
	CertNotAfter  time.Time `json:"cert_not_after"`
	// CertExpired is judged by the local clock, which may be wrong.
	CertExpired bool    `json:"cert_expired"`
	Phase       string  `json:"phase"`
	Installed   *Target `json:"installed,omitempty"`
	// Pending is the target of an install in flight (or interrupted).
	Pending     *Target   `json:"pending,omitempty"`
	LastCheck   time.Time `json:"last_check,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// NotOffered says why the last check passed over newer releases: their
	// signed rollout terms do not offer them to this device.
	NotOffered []string `json:"not_offered,omitempty"`
	// AttestationSequence is the last attestation sequence number used.
	AttestationSequence int64 `json:"attestation_sequence"`
	// QueuedAttestations are the sequence numbers waiting in the outbox.
	QueuedAttestations []int64 `json:"queued_attestations"`
	SentAttestations   int     `json:"sent_attestations"`
	// UnsignedAttestations counts outcomes recorded but not yet signed into
	// the outbox (the next run does it).
	UnsignedAttestations int `json:"unsigned_attestations,omitempty"`
	// RolledBack lists the sha256 of images that were rolled back (not retried).
	RolledBack []string `json:"rolled_back,omitempty"`
	// SeenMetadata are the newest TUF versions trusted (root, timestamp, snapshot, targets).
	SeenMetadata journal.Seen `json:"seen_metadata"`
	// ClockFloor is the newest time the device has signed evidence for.
	ClockFloor time.Time `json:"clock_floor,omitzero"`
}

// ReadStatus reads a state dir without network access, locks or writes.
func ReadStatus(stateDir string, now time.Time) (*Status, error) {
	l := statedir.Layout{Dir: stateDir}
	id, err := loadIdentity(l, false)
	if err != nil {
		return nil, err
	}
	leaf := id.chain[0]
	s := &Status{
		StateDir:      stateDir,
		Device:        id.principal.URI(),
		DeviceID:      id.cfg.DeviceID,
		Model:         id.cfg.Model,
		Serial:        id.cfg.Serial,
		HardwareID:    id.cfg.HardwareID,
		Server:        id.cfg.Server,
		CertSerial:    leaf.SerialNumber.Text(16),
		CertNotBefore: leaf.NotBefore,
		CertNotAfter:  leaf.NotAfter,
		CertExpired:   now.After(leaf.NotAfter),
		Phase:         string(journal.PhaseIdle),
	}
	st, err := journal.Read(l.State())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		s.Phase = string(st.Phase)
		s.Installed = st.Installed
		if st.Pending != nil {
			t := st.Pending.Target
			s.Pending = &t
		}
		s.LastCheck, s.LastError, s.LastErrorAt = st.LastCheck, st.LastError, st.LastErrorAt
		s.NotOffered = st.NotOffered
		s.AttestationSequence = st.AttestSequence
		s.UnsignedAttestations = len(st.Unqueued)
		s.RolledBack = st.Failed
		s.SeenMetadata = st.Seen
		s.ClockFloor = st.Clock.Floor
	}
	ob := &outbox.Outbox{Layout: l}
	if s.QueuedAttestations, err = ob.Queued(); err != nil {
		return nil, err
	}
	if s.QueuedAttestations == nil {
		s.QueuedAttestations = []int64{}
	}
	if s.SentAttestations, err = ob.SentCount(); err != nil {
		return nil, err
	}
	return s, nil
}
