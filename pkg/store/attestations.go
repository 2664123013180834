package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// attestationLogColumns extend the walking skeleton's attestations table
// for the transparency log. Rows from before the log have leaf_index -1.
var attestationLogColumns = [][2]string{
	{"leaf_index", "BIGINT NOT NULL DEFAULT -1"},
	{"cert_serial", "TEXT NOT NULL DEFAULT ''"},
}

func (d *DB) migrateAttestations(ctx context.Context) error {
	for _, c := range attestationLogColumns {
		if err := d.addColumn(ctx, "attestations", c[0], c[1]); err != nil {
			return err
		}
	}
	// Time-to-patch and report queries scan committed installs per device.
	if _, err := d.db.ExecContext(ctx, `CREATE INDEX IF NOT EXISTS attestations_outcome ON attestations (outcome, device_id, counter)`); err != nil {
		return fmt.Errorf("migrating attestations: %w", err)
	}
	return nil
}

// MaxSequenceStep bounds how far above the device's last accepted sequence
// an attestation's may be. The agent numbers its attestations 1, 2, 3...;
// a sequence near 2^63 would leave no room for the next one, so the device
// could never attest again.
const MaxSequenceStep = 1_000_000

// AddAttestation stores an accepted attestation that is not in the
// transparency log (LeafIndex -1) and, for a committed install, updates the
// device's installed version. The sequence must be above the last accepted
// one for the device (ErrReplay otherwise). fosterd's ingest uses
// AddAttestationTx instead.
func (d *DB) AddAttestation(ctx context.Context, a Attestation) (Attestation, error) {
	a.LeafIndex = -1
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var err error
		a, err = d.AddAttestationTx(ctx, tx, a)
		return err
	})
	if err != nil {
		return Attestation{}, err
	}
	return a, nil
}

// AddAttestationTx is AddAttestation inside the caller's transaction (the
// transparency log's append, so the row and the log entry commit together).
// ReceivedAt defaults to now; LeafIndex is recorded as given.
func (d *DB) AddAttestationTx(ctx context.Context, tx *sql.Tx, a Attestation) (Attestation, error) {
	if a.ReceivedAt.IsZero() {
		a.ReceivedAt = d.now()
	}
	// The ingest path runs these for every attestation: prepared at Open.
	c := cached{d, tx}
	var last int64
	err := c.QueryRowContext(ctx, d.q(sqlLastSequence+d.forUpdate()), a.DeviceID).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		return Attestation{}, fmt.Errorf("device %s: %w", a.DeviceID, ErrNotFound)
	}
	if err != nil {
		return Attestation{}, fmt.Errorf("reading device: %w", err)
	}
	if a.Sequence <= last {
		return Attestation{}, fmt.Errorf("%w (got %d, last %d)", ErrReplay, a.Sequence, last)
	}
	if a.Sequence-last > MaxSequenceStep {
		return Attestation{}, fmt.Errorf("%w: sequence %d is more than %d above the last accepted %d", ErrSequenceJump, a.Sequence, MaxSequenceStep, last)
	}
	err = c.QueryRowContext(ctx, d.q(sqlInsertAttestation),
		a.DeviceID, a.Sequence, a.Outcome, a.TargetPath, a.SHA256, a.Version, a.Counter, string(a.Envelope), ts(a.ReceivedAt), a.LeafIndex, a.CertSerial).Scan(&a.ID)
	if isUnique(err) {
		return Attestation{}, ErrReplay
	}
	if err != nil {
		return Attestation{}, fmt.Errorf("recording attestation: %w", err)
	}
	upd := sqlAttested
	day := dayOf(a.ReceivedAt)
	args := []any{a.Sequence, ts(a.ReceivedAt), day, day, a.DeviceID}
	if a.Outcome == "committed" {
		upd = sqlAttestedInstalled
		args = []any{a.Sequence, ts(a.ReceivedAt), day, day, a.Version, a.TargetPath, a.Counter, a.Counter, ts(a.ReceivedAt), a.DeviceID}
	}
	if _, err := c.ExecContext(ctx, d.q(upd), args...); err != nil {
		return Attestation{}, fmt.Errorf("updating device: %w", err)
	}
	return a, nil
}

// GetAttestation returns a device's attestation with the given sequence.
func (d *DB) GetAttestation(ctx context.Context, deviceID string, seq int64) (Attestation, error) {
	as, err := d.listAttestations(ctx, "WHERE device_id = ? AND sequence = ?", "", deviceID, seq)
	if err != nil {
		return Attestation{}, err
	}
	if len(as) == 0 {
		return Attestation{}, fmt.Errorf("attestation %s #%d: %w", deviceID, seq, ErrNotFound)
	}
	return as[0], nil
}

// ListAttestations returns a device's attestations, oldest first ("" for all).
func (d *DB) ListAttestations(ctx context.Context, deviceID string) ([]Attestation, error) {
	if deviceID != "" {
		return d.listAttestations(ctx, "WHERE device_id = ?", "", deviceID)
	}
	return d.listAttestations(ctx, "", "")
}

// MaxAttestationPage bounds one page of PageAttestations.
const MaxAttestationPage = 1000

// PageAttestations returns at most limit (1..MaxAttestationPage) attestations
// with id > afterID, oldest first, optionally for one device ("" for all).
func (d *DB) PageAttestations(ctx context.Context, deviceID string, afterID int64, limit int) ([]Attestation, error) {
	if limit <= 0 || limit > MaxAttestationPage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxAttestationPage)
	}
	page := " LIMIT " + strconv.Itoa(limit)
	if deviceID != "" {
		return d.listAttestations(ctx, "WHERE device_id = ? AND id > ?", page, deviceID, afterID)
	}
	return d.listAttestations(ctx, "WHERE id > ?", page, afterID)
}

func (d *DB) listAttestations(ctx context.Context, where, suffix string, args ...any) ([]Attestation, error) {
	return queryAll(ctx, d.db, "listing attestations", d.q(`SELECT id, device_id, sequence, outcome, target_path, sha256, version, counter, envelope, received_at, leaf_index, cert_serial FROM attestations `+where+` ORDER BY id`+suffix), scanAttestation, args...)
}

func scanAttestation(s scanner) (Attestation, error) {
	var a Attestation
	var env string
	var at int64
	err := s.Scan(&a.ID, &a.DeviceID, &a.Sequence, &a.Outcome, &a.TargetPath, &a.SHA256, &a.Version, &a.Counter, &env, &at, &a.LeafIndex, &a.CertSerial)
	a.Envelope, a.ReceivedAt = []byte(env), fromTS(at)
	return a, err
}
