package tlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// NewSigner makes the log's checkpoint signer from an Ed25519 signature.Signer
// (a key file or a KMS URI, like every other Foster key) and returns the
// verifier key ("vkey", DIR/log.pub) auditors pin. C2SP signed notes are
// Ed25519, so other key types are refused. The signer signs a test message
// and checks it against vkey, so a KMS key that is not what it claims fails
// here rather than in every checkpoint.
func NewSigner(ctx context.Context, origin string, s signature.Signer) (note.Signer, string, error) {
	if err := checkOrigin(origin); err != nil {
		return nil, "", err
	}
	pub, err := s.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, "", fmt.Errorf("tlog: log key: %w", err)
	}
	edPub, ok := pub.(ed25519.PublicKey)
	if !ok {
		return nil, "", fmt.Errorf("%w: the log key must be Ed25519 (C2SP signed notes), got %T", ErrInvalid, pub)
	}
	vkey, err := note.NewEd25519VerifierKey(origin, edPub)
	if err != nil {
		return nil, "", fmt.Errorf("tlog: log key: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, "", fmt.Errorf("tlog: log key: %w", err)
	}
	ns := &noteSigner{name: origin, hash: v.KeyHash(), s: s}
	msg := []byte("foster tlog key self-test\n")
	sig, err := ns.Sign(msg)
	if err != nil {
		return nil, "", fmt.Errorf("tlog: log key: %w", err)
	}
	if !v.Verify(msg, sig) {
		return nil, "", errors.New("tlog: log key signs with another key than its public key says")
	}
	return ns, vkey, nil
}

type noteSigner struct {
	name string
	hash uint32
	s    signature.Signer
}

func (n *noteSigner) Name() string    { return n.name }
func (n *noteSigner) KeyHash() uint32 { return n.hash }
func (n *noteSigner) Sign(msg []byte) ([]byte, error) {
	return n.s.SignMessage(bytes.NewReader(msg))
}

// Origin is the log's origin (checkpoint first line, key name).
func (l *Log) Origin() string { return l.origin }

// ProveInclusion returns the inclusion proof of leaf index against cp, a
// checkpoint this log signed (Append's or Checkpoint's), and the size cp
// commits to.
func (l *Log) ProveInclusion(ctx context.Context, index int64, cp []byte) (size int64, hashes [][]byte, err error) {
	size, err = CheckpointSize(cp)
	if err != nil {
		return 0, nil, err
	}
	if index < 0 || index >= size {
		return 0, nil, fmt.Errorf("%w: inclusion of leaf %d in a tree of %d", ErrInvalid, index, size)
	}
	// The log signed cp, so its size is within the (append-only) log: no
	// need to read the current size.
	nodes, err := proof.Inclusion(uint64(index), uint64(size))
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	hashes, err = l.rehash(ctx, nodes)
	return size, hashes, err
}

// CheckpointSize reads the tree size from a checkpoint without verifying
// it: use it only on checkpoints this process's log produced (auditors use
// pkg/tlogverify).
func CheckpointSize(cp []byte) (int64, error) {
	lines := bytes.SplitN(cp, []byte("\n"), 3)
	if len(lines) < 3 {
		return 0, fmt.Errorf("%w: not a checkpoint", ErrInvalid)
	}
	n, err := strconv.ParseInt(string(lines[1]), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: checkpoint size %q", ErrInvalid, lines[1])
	}
	return n, nil
}
