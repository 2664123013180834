// Package attest defines Foster's install attestation: an in-toto Statement
// v1 whose subject is the installed firmware target and whose predicate
// records what the device did, wrapped in a DSSE envelope signed with the
// device's own key (the key behind its Foster device certificate).
//
// Threat model: the envelope travels over untrusted paths (queued on a device
// for months, forwarded later), so nothing in it is trusted until Verify has
// checked the signature against a public key the caller already trusts (the
// device certificate, after chain verification). Verify also checks the
// statement is internally consistent (subject == predicate's new target), so a
// signed statement cannot claim one image in the subject and another in the
// predicate. Replay defence (Sequence) and target checks belong to the
// ingesting server, which has the state to judge them.
package attest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	ssldsse "github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
)

const (
	// PayloadType is the DSSE payload type of an in-toto statement.
	PayloadType = "application/vnd.in-toto+json"
	// StatementType is the in-toto Statement v1 type.
	StatementType = "https://in-toto.io/Statement/v1"
	// PredicateType identifies Foster's install predicate (docs/ATTESTATIONS.md).
	PredicateType = "https://foster-ota.dev/attestation/install/v1"
	// MaxEnvelopeSize bounds an envelope accepted anywhere.
	MaxEnvelopeSize = 64 << 10 // bytes
)

// Outcomes of an install.
const (
	OutcomeCommitted  = "committed"
	OutcomeRolledBack = "rolled-back"
	OutcomeFailed     = "failed"
)

// Typed verification failures.
var (
	ErrMalformed    = errors.New("malformed attestation")
	ErrBadSignature = errors.New("attestation signature does not verify")
)

// Target names a firmware target by TUF path and content.
type Target struct {
	Name           string `json:"name"`
	SHA256         string `json:"sha256"`
	Length         int64  `json:"length"`
	Version        string `json:"version,omitempty"`
	ReleaseCounter int64  `json:"release_counter,omitempty"`
}

// Install is the predicate: what a device did with a target.
type Install struct {
	Device          string    `json:"device"`
	Previous        *Target   `json:"previous,omitempty"`
	New             Target    `json:"new"`
	TargetsVersion  int64     `json:"targets_version"`
	SnapshotVersion int64     `json:"snapshot_version"`
	Outcome         string    `json:"outcome"`
	Reason          string    `json:"reason,omitempty"`
	BootCounter     int64     `json:"boot_counter"`
	Sequence        int64     `json:"sequence"`
	Time            time.Time `json:"time"`
}

type subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

type statement struct {
	Type          string    `json:"_type"`
	Subject       []subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
	Predicate     Install   `json:"predicate"`
}

// Validate checks the predicate's fields without any signature.
func (in Install) Validate() error {
	if in.Device == "" {
		return fmt.Errorf("%w: empty device", ErrMalformed)
	}
	if err := in.New.validate(); err != nil {
		return fmt.Errorf("%w: new target: %v", ErrMalformed, err)
	}
	if in.Previous != nil {
		if err := in.Previous.validate(); err != nil {
			return fmt.Errorf("%w: previous target: %v", ErrMalformed, err)
		}
	}
	switch in.Outcome {
	case OutcomeCommitted, OutcomeRolledBack, OutcomeFailed:
	default:
		return fmt.Errorf("%w: unknown outcome %q", ErrMalformed, in.Outcome)
	}
	if in.Sequence <= 0 {
		return fmt.Errorf("%w: sequence must be positive", ErrMalformed)
	}
	if len(in.Reason) > 1024 {
		return fmt.Errorf("%w: reason longer than 1024 bytes", ErrMalformed)
	}
	return nil
}

func (t Target) validate() error {
	if t.Name == "" || len(t.Name) > 512 {
		return errors.New("name must be 1-512 bytes")
	}
	if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("sha256 %q is not 64 hex characters", t.SHA256)
	}
	if t.Length < 0 {
		return errors.New("negative length")
	}
	return nil
}

// KeyID is the DSSE keyid of a device key: the lowercase hex SHA-256 of
// its DER SubjectPublicKeyInfo (the same bytes as the devices table's
// key_sha256). It lets independent DSSE verifiers (securesystemslib,
// go-securesystemslib) match a signature to the key that made it.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("device key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Sign wraps in into a DSSE-enveloped in-toto statement signed by signer,
// whose signature names the key by KeyID.
func Sign(signer signature.Signer, in Install) ([]byte, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	pub, err := signer.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("signing attestation: %w", err)
	}
	keyID, err := KeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("signing attestation: %w", err)
	}
	st := statement{
		Type:          StatementType,
		Subject:       []subject{{Name: in.New.Name, Digest: map[string]string{"sha256": in.New.SHA256}}},
		PredicateType: PredicateType,
		Predicate:     in,
	}
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("encoding statement: %w", err)
	}
	es, err := ssldsse.NewEnvelopeSigner(&dsse.SignerAdapter{SignatureSigner: signer, Pub: signer.PublicKey, PubKeyID: keyID})
	if err != nil {
		return nil, fmt.Errorf("signing attestation: %w", err)
	}
	env, err := es.SignPayload(context.Background(), PayloadType, payload)
	if err != nil {
		return nil, fmt.Errorf("signing attestation: %w", err)
	}
	return json.Marshal(env)
}

// Verify checks envelope's signature with pub and returns the predicate. A
// signature whose keyid is set must name pub (KeyID); envelopes signed
// before Foster set keyids (keyid "") verify as before.
func Verify(envelope []byte, pub crypto.PublicKey) (*Install, error) {
	kv, err := NewVerifier(pub)
	if err != nil {
		return nil, err
	}
	return kv.Verify(envelope)
}

// Verifier verifies envelopes signed by one device key. Making one costs
// an encoding and a hash of the key: a caller that verifies many envelopes
// of one device (an auditor reading the log) keeps it. Safe for concurrent
// use.
type Verifier struct {
	pub   crypto.PublicKey
	sv    signature.Verifier
	keyID string
}

// NewVerifier returns a Verifier for pub (an error wrapping ErrBadSignature
// when the key type is not supported).
func NewVerifier(pub crypto.PublicKey) (*Verifier, error) {
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: unsupported key: %v", ErrBadSignature, err)
	}
	keyID, err := KeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: unsupported key: %v", ErrBadSignature, err)
	}
	return &Verifier{pub: pub, sv: v, keyID: keyID}, nil
}

// Verify checks envelope's signature and returns the predicate, as the
// package-level Verify does.
func (kv *Verifier) Verify(envelope []byte) (*Install, error) {
	if len(envelope) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope larger than %d bytes", ErrMalformed, MaxEnvelopeSize)
	}
	env, ok := decodeCommonEnvelope(envelope)
	if !ok {
		if err := json.Unmarshal(envelope, &env); err != nil {
			return nil, fmt.Errorf("%w: envelope is not JSON: %v", ErrMalformed, err)
		}
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: dsse: unexpected payload type: got %q, want %q", ErrBadSignature, env.PayloadType, PayloadType)
	}
	ev, err := ssldsse.NewEnvelopeVerifier(&dsse.VerifierAdapter{SignatureVerifier: kv.sv, Pub: kv.pub, PubKeyID: kv.keyID})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	_, payload, err := ev.VerifyAndDecode(context.Background(), &env)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return parseStatement(payload)
}

// decodeCommonEnvelope decodes the one shape Sign writes (Go's encoding of
// a one-signature ssldsse.Envelope) without encoding/json: an auditor
// decodes a million of them reading a log. Anything else (ok false) is
// decoded by json.Unmarshal, which gives the same Envelope for what this
// accepts: the exact keys in Go's order and strings of base64 or hex
// characters, which hold no JSON escapes (FuzzDecodeCommonEnvelope). The
// signature is verified by the DSSE library either way.
func decodeCommonEnvelope(b []byte) (ssldsse.Envelope, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`{"payloadType":"`+PayloadType+`","payload":"`))
	if !ok {
		return ssldsse.Envelope{}, false
	}
	payload, rest, ok := cutChars(rest, isBase64Char)
	if !ok {
		return ssldsse.Envelope{}, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`","signatures":[{"keyid":"`)); !ok {
		return ssldsse.Envelope{}, false
	}
	keyID, rest, ok := cutChars(rest, isHexChar)
	if !ok {
		return ssldsse.Envelope{}, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`","sig":"`)); !ok {
		return ssldsse.Envelope{}, false
	}
	sig, rest, ok := cutChars(rest, isBase64Char)
	if !ok || string(rest) != `"}]}` {
		return ssldsse.Envelope{}, false
	}
	return ssldsse.Envelope{PayloadType: PayloadType, Payload: string(payload),
		Signatures: []ssldsse.Signature{{KeyID: string(keyID), Sig: string(sig)}}}, true
}

// cutChars splits b before its first byte that is not ok, which must be
// the closing quote of a JSON string.
func cutChars(b []byte, ok func(byte) bool) (chars, rest []byte, found bool) {
	for i, c := range b {
		if !ok(c) {
			return b[:i], b[i:], c == '"'
		}
	}
	return nil, nil, false
}

func isBase64Char(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '='
}

func isHexChar(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// PeekDevice returns the device claimed by an envelope without verifying it,
// so a server can find which certificate to verify against. Never trust the
// result before Verify succeeds.
func PeekDevice(envelope []byte) (string, error) {
	if len(envelope) > MaxEnvelopeSize {
		return "", fmt.Errorf("%w: envelope larger than %d bytes", ErrMalformed, MaxEnvelopeSize)
	}
	var env struct {
		Payload []byte `json:"payload"`
	}
	if err := json.Unmarshal(envelope, &env); err != nil {
		return "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	in, err := parseStatement(env.Payload)
	if err != nil {
		return "", err
	}
	return in.Device, nil
}

func parseStatement(payload []byte) (*Install, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var st statement
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%w: statement: %v", ErrMalformed, err)
	}
	if st.Type != StatementType {
		return nil, fmt.Errorf("%w: statement type %q, want %q", ErrMalformed, st.Type, StatementType)
	}
	if st.PredicateType != PredicateType {
		return nil, fmt.Errorf("%w: predicate type %q, want %q", ErrMalformed, st.PredicateType, PredicateType)
	}
	if err := st.Predicate.Validate(); err != nil {
		return nil, err
	}
	if len(st.Subject) != 1 || st.Subject[0].Name != st.Predicate.New.Name ||
		st.Subject[0].Digest["sha256"] != st.Predicate.New.SHA256 {
		return nil, fmt.Errorf("%w: subject does not match the installed target", ErrMalformed)
	}
	return &st.Predicate, nil
}
