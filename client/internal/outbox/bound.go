package outbox

import (
	"os"
	"path/filepath"
)

// Bounds on what the outbox keeps on a device that may be offline for years.
const (
	// MaxQueued bounds envelopes waiting to be sent; past it the oldest is
	// set aside in rejected/ (the server notices the gap in sequence numbers).
	MaxQueued = 256
	// KeepSent is how many accepted envelopes stay in sent/ (the server, and
	// bundles/, hold the rest).
	KeepSent = 64
)

// makeRoom sets the oldest queued envelopes aside until one more fits.
func (o *Outbox) makeRoom() error {
	seqs, err := o.Queued()
	if err != nil {
		return err
	}
	for i := 0; len(seqs)-i >= MaxQueued; i++ {
		from := filepath.Join(o.Layout.Outbox(), name(seqs[i]))
		if err := os.Rename(from, filepath.Join(o.Layout.Rejected(), name(seqs[i]))); err != nil {
			return err
		}
		o.Log.Error("outbox full: oldest unsent attestation set aside in rejected/", "sequence", seqs[i], "max", MaxQueued)
	}
	return nil
}

// PruneSent removes all but the newest KeepSent accepted envelopes.
func (o *Outbox) PruneSent() error {
	seqs, err := list(o.Layout.Sent())
	if err != nil {
		return err
	}
	for i := 0; i < len(seqs)-KeepSent; i++ {
		if err := os.Remove(filepath.Join(o.Layout.Sent(), name(seqs[i]))); err != nil {
			return err
		}
	}
	return nil
}
