// Package tlogverify verifies evidence from Foster's install-attestation
// transparency log offline: signed checkpoints, inclusion proofs and
// consistency proofs. It has no database and no network, so the foster CLI
// (`foster audit verify`) and any third-party auditor can import it.
//
// Threat model: everything handed to this package (checkpoint, proof, leaf)
// comes from an untrusted party, typically a bundle that travelled through
// the device, the operator and the auditor's mailbox. The only trust anchor is
// the log's public key (a C2SP signed-note verifier key, "log key"), obtained
// out of band. From it:
//
//   - ParseCheckpoint accepts a checkpoint only if the log key signed it and
//     its origin is the key's name (a checkpoint of another log signed with
//     the same key does not pass as this log's). Forged or edited
//     checkpoints fail with ErrBadCheckpointSignature.
//   - VerifyInclusion proves a leaf is at an index of the tree a checkpoint
//     commits to (ErrNotInLog otherwise), so the operator cannot show an
//     auditor an attestation it never logged.
//   - VerifyConsistency proves a later checkpoint extends an earlier one
//     (ErrInconsistent otherwise), so the operator cannot rewrite history or
//     show different parties different trees (a split view) without two
//     signed checkpoints that, compared, prove the misbehaviour.
//
// Hashing is RFC 6962 (SHA-256, 0x00 leaf / 0x01 node prefixes) via
// github.com/transparency-dev/merkle. Checkpoints follow C2SP tlog-checkpoint:
// body "<origin>\n<size>\n<base64 root>\n" (extension lines are allowed and
// ignored), signed as a C2SP signed note (golang.org/x/mod/sumdb/note).
package tlogverify

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

const (
	// MaxCheckpointSize bounds a signed checkpoint accepted by ParseCheckpoint.
	MaxCheckpointSize = 16 << 10 // bytes
	// MaxProofLength bounds the number of hashes in a proof. RFC 6962 proofs
	// for trees of up to 2^63 leaves need at most 2*63 hashes.
	MaxProofLength = 128
	// HashSize is the size of every RFC 6962 (SHA-256) hash.
	HashSize = 32
)

// Verification failures, typed so callers branch with errors.Is. Each error
// returned by this package wraps exactly one of them.
var (
	// ErrBadCheckpointSignature: the checkpoint is not signed by the log key
	// (wrong key, edited body, missing signature) or names another log.
	ErrBadCheckpointSignature = errors.New("forged checkpoint: not signed by the log key")
	// ErrNotInLog: the inclusion proof does not put this leaf at this index
	// of the checkpointed tree.
	ErrNotInLog = errors.New("not in log: inclusion proof does not match the checkpoint")
	// ErrInconsistent: the two checkpoints cannot both be views of one
	// append-only log (split view, rewritten history or a shrunk tree).
	ErrInconsistent = errors.New("split view: checkpoints are not consistent")
	// ErrMalformed: the input is not a well-formed checkpoint or proof.
	ErrMalformed = errors.New("malformed checkpoint or proof")
)

// Checkpoint is a verified commitment of the log to the tree of its first
// Size leaves, whose RFC 6962 root hash is Root.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   []byte
}

// ParseCheckpoint verifies that signed is a checkpoint signed by verifier
// (the log key) whose origin is the key's name, and returns its contents.
// It reads at most MaxCheckpointSize bytes.
func ParseCheckpoint(signed []byte, verifier note.Verifier) (Checkpoint, error) {
	if verifier == nil {
		return Checkpoint{}, fmt.Errorf("%w: no log key to verify the checkpoint with", ErrMalformed)
	}
	if len(signed) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint is %d bytes, limit %d", ErrMalformed, len(signed), MaxCheckpointSize)
	}
	n, err := note.Open(signed, note.VerifierList(verifier))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			return Checkpoint{}, fmt.Errorf("%w: no signature by %s", ErrBadCheckpointSignature, verifier.Name())
		case errors.As(err, &invalid):
			return Checkpoint{}, fmt.Errorf("%w: %v", ErrBadCheckpointSignature, err)
		default:
			return Checkpoint{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	cp, err := parseBody(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != verifier.Name() {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint is for log %q, the key is for %q", ErrBadCheckpointSignature, cp.Origin, verifier.Name())
	}
	return cp, nil
}

// parseBody parses a C2SP tlog-checkpoint body (already authenticated).
func parseBody(text string) (Checkpoint, error) {
	lines := strings.SplitAfter(text, "\n")
	// SplitAfter leaves a final "" after the trailing newline.
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint body needs origin, size and root lines", ErrMalformed)
	}
	lines = lines[:len(lines)-1]
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\n")
		if i >= 3 && lines[i] == "" {
			return Checkpoint{}, fmt.Errorf("%w: empty extension line in checkpoint", ErrMalformed)
		}
	}
	origin, sizeText, rootText := lines[0], lines[1], lines[2]
	if origin == "" {
		return Checkpoint{}, fmt.Errorf("%w: empty checkpoint origin", ErrMalformed)
	}
	size, err := parseSize(sizeText)
	if err != nil {
		return Checkpoint{}, err
	}
	root, err := base64.StdEncoding.Strict().DecodeString(rootText)
	if err != nil || len(root) != HashSize {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint root is not a base64 %d-byte hash", ErrMalformed, HashSize)
	}
	if size == 0 && !bytes.Equal(root, rfc6962.DefaultHasher.EmptyRoot()) {
		return Checkpoint{}, fmt.Errorf("%w: empty tree with a non-empty root", ErrMalformed)
	}
	return Checkpoint{Origin: origin, Size: size, Root: root}, nil
}

// parseSize accepts a canonical decimal: digits only, no sign, no leading zero.
func parseSize(s string) (int64, error) {
	bad := s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0')
	for i := 0; i < len(s) && !bad; i++ {
		bad = s[i] < '0' || s[i] > '9'
	}
	if bad {
		return 0, fmt.Errorf("%w: checkpoint size %q is not a canonical decimal", ErrMalformed, truncate(s))
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: checkpoint size %q: %v", ErrMalformed, truncate(s), err)
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// VerifyInclusion checks that leaf (the raw leaf data, hashed here as an RFC
// 6962 leaf) is at index in the tree cp commits to. cp must come from
// ParseCheckpoint.
func VerifyInclusion(leaf []byte, index int64, cp Checkpoint, proofHashes [][]byte) error {
	if err := checkCheckpoint(cp); err != nil {
		return err
	}
	if index < 0 {
		return fmt.Errorf("%w: negative leaf index %d", ErrMalformed, index)
	}
	if index >= cp.Size {
		return fmt.Errorf("%w: index %d is beyond the checkpoint's tree of %d leaves", ErrNotInLog, index, cp.Size)
	}
	if err := checkProof(proofHashes); err != nil {
		return err
	}
	h := rfc6962.DefaultHasher
	err := proof.VerifyInclusion(h, uint64(index), uint64(cp.Size), h.HashLeaf(leaf), proofHashes, cp.Root)
	return classify(err, ErrNotInLog, fmt.Sprintf("leaf %d of %d", index, cp.Size))
}

// VerifyConsistency checks that newer extends older: the tree older commits
// to is a prefix of the tree newer commits to. Two checkpoints of one size
// with different roots are a split view and fail with ErrInconsistent, as
// does a newer checkpoint smaller than the older one (rollback).
func VerifyConsistency(older, newer Checkpoint, proofHashes [][]byte) error {
	if err := checkCheckpoint(older); err != nil {
		return err
	}
	if err := checkCheckpoint(newer); err != nil {
		return err
	}
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: checkpoints of different logs (%q, %q)", ErrMalformed, older.Origin, newer.Origin)
	}
	if newer.Size < older.Size {
		return fmt.Errorf("%w: rollback: tree shrank from %d to %d leaves", ErrInconsistent, older.Size, newer.Size)
	}
	if newer.Size == older.Size && !bytes.Equal(older.Root, newer.Root) {
		return fmt.Errorf("%w: two different trees of %d leaves", ErrInconsistent, older.Size)
	}
	if err := checkProof(proofHashes); err != nil {
		return err
	}
	h := rfc6962.DefaultHasher
	err := proof.VerifyConsistency(h, uint64(older.Size), uint64(newer.Size), proofHashes, older.Root, newer.Root)
	return classify(err, ErrInconsistent, fmt.Sprintf("tree of %d leaves to %d", older.Size, newer.Size))
}

func checkCheckpoint(cp Checkpoint) error {
	if cp.Size < 0 || len(cp.Root) != HashSize {
		return fmt.Errorf("%w: checkpoint needs a size >= 0 and a %d-byte root", ErrMalformed, HashSize)
	}
	return nil
}

func checkProof(p [][]byte) error {
	if len(p) > MaxProofLength {
		return fmt.Errorf("%w: proof has %d hashes, limit %d", ErrMalformed, len(p), MaxProofLength)
	}
	for i, h := range p {
		if len(h) != HashSize {
			return fmt.Errorf("%w: proof hash %d is %d bytes, want %d", ErrMalformed, i, len(h), HashSize)
		}
	}
	return nil
}

// classify maps the merkle library's errors: a root mismatch is the attack
// (mismatch), anything else is a proof of the wrong shape.
func classify(err, mismatch error, what string) error {
	if err == nil {
		return nil
	}
	var rm proof.RootMismatchError
	if errors.As(err, &rm) {
		return fmt.Errorf("%w: %s: computed root does not match the checkpoint", mismatch, what)
	}
	return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
}
