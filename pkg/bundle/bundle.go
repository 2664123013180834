// Package bundle is the offline evidence for one install attestation: the
// signed DSSE envelope, the device certificate chain it was verified with,
// its entry in fosterd's transparency log with an inclusion proof and a
// signed checkpoint, and the TUF metadata that signed the installed target.
// fosterd returns a bundle for every attestation it accepts; the device keeps
// it; `foster audit verify` checks it with nothing but three trust anchors.
//
// Threat model: a bundle is untrusted input from anyone (device, operator,
// auditor's mailbox). Verify trusts only the anchors in TrustRoots, obtained
// out of band: the Foster CA root (device identities), the TUF root
// (firmware signing keys) and the log's public key (the operator's
// commitment to one append-only history). From those it establishes that
// the device named in the attestation signed it with a key the CA certified
// for that device, that the operator logged exactly this attestation, and
// that the installed image is one the firmware signers released for that
// device's model. It does not check revocation (fosterd refuses revoked
// devices at ingest; the log's integrated time dates the acceptance) and
// ignores metadata expiry (an audit is about the past).
//
// Each failure wraps exactly one of the class errors below (ErrMalformed,
// ErrBadSignature, ErrUnknownCA, ErrNotInLog, ErrCheckpointSignature,
// ErrTargetNotSigned), so callers map classes to exit codes with errors.Is.
// docs/ATTESTATIONS.md specifies the formats.
package bundle

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

const (
	// MediaType identifies a bundle document.
	MediaType = "application/vnd.foster.install-bundle.v1+json"
	// EntryType identifies a transparency log entry (leaf) of an install attestation.
	EntryType = "https://foster-ota.dev/tlog/install-entry/v1"

	// MaxSize bounds a bundle document. The TUF targets metadata dominates
	// (go-tuf clients accept up to 5 MB of it).
	MaxSize = 16 << 20 // bytes
	// MaxEntrySize bounds a log entry: the envelope plus a short chain.
	MaxEntrySize = 128 << 10 // bytes
	// MaxChainLength bounds the certificates in a chain (leaf + intermediates).
	MaxChainLength = 4
	// MaxCertSize bounds one DER certificate.
	MaxCertSize = 8 << 10 // bytes
	// MaxRoots bounds the root metadata versions a bundle carries.
	MaxRoots = 64
	// MaxRootSize and MaxTargetsSize equal go-tuf's client defaults.
	MaxRootSize    = 512000  // bytes
	MaxTargetsSize = 5000000 // bytes
)

// Failure classes. `foster audit verify` maps each to an exit code
// (docs/ATTESTATIONS.md).
var (
	// ErrMalformed: the bundle or a part of it does not parse.
	ErrMalformed = errors.New("malformed bundle")
	// ErrBadSignature: the envelope's signature does not verify with the
	// certified device key, or the statement names another device.
	ErrBadSignature = errors.New("bad signature")
	// ErrUnknownCA: the certificate chain does not verify to the CA root at
	// the logged time, or the leaf is not a device certificate.
	ErrUnknownCA = errors.New("unknown CA")
	// ErrNotInLog: the inclusion proof does not put this entry in the
	// checkpointed tree. It is tlogverify's error of the same name.
	ErrNotInLog = tlogverify.ErrNotInLog
	// ErrCheckpointSignature: the checkpoint is not signed by the log key
	// (tlogverify.ErrBadCheckpointSignature).
	ErrCheckpointSignature = tlogverify.ErrBadCheckpointSignature
	// ErrTargetNotSigned: the installed image is not a target the TUF
	// repository (rooted in the trusted root) signed for the device's model.
	ErrTargetNotSigned = errors.New("target not signed")
)

// Entry is one leaf of the transparency log: what fosterd accepted and when.
// Its leaf bytes are Marshal's output, the only encoding ParseEntry accepts,
// so an entry has exactly one leaf hash.
type Entry struct {
	// Type is EntryType.
	Type string `json:"type"`
	// IntegratedTime is when fosterd accepted the attestation (Unix seconds,
	// fosterd's clock), the time the certificate chain is verified at.
	IntegratedTime int64 `json:"integrated_time"`
	// Envelope is the DSSE envelope exactly as the device sent it.
	Envelope []byte `json:"envelope"`
	// CertChain is the device certificate chain fosterd verified the
	// envelope (and the device's TLS connection) with: DER, leaf first, root
	// excluded.
	CertChain [][]byte `json:"cert_chain"`
}

// NewEntry builds the entry for an envelope accepted at t.
func NewEntry(envelope []byte, chain []*x509.Certificate, t time.Time) Entry {
	e := Entry{Type: EntryType, IntegratedTime: t.Unix(), Envelope: envelope}
	for _, c := range chain {
		e.CertChain = append(e.CertChain, c.Raw)
	}
	return e
}

// Marshal returns the canonical leaf bytes: compact JSON, fields in the
// order above, byte strings in standard padded base64.
func (e Entry) Marshal() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(e)
}

func (e Entry) validate() error {
	switch {
	case e.Type != EntryType:
		return fmt.Errorf("%w: entry type %q, want %q", ErrMalformed, truncate(e.Type), EntryType)
	case e.IntegratedTime <= 0:
		return fmt.Errorf("%w: entry has no integrated time", ErrMalformed)
	case len(e.Envelope) == 0 || len(e.Envelope) > attest.MaxEnvelopeSize:
		return fmt.Errorf("%w: envelope must be 1-%d bytes", ErrMalformed, attest.MaxEnvelopeSize)
	case len(e.CertChain) == 0 || len(e.CertChain) > MaxChainLength:
		return fmt.Errorf("%w: certificate chain must hold 1-%d certificates", ErrMalformed, MaxChainLength)
	}
	for i, c := range e.CertChain {
		if len(c) == 0 || len(c) > MaxCertSize {
			return fmt.Errorf("%w: certificate %d must be 1-%d bytes", ErrMalformed, i, MaxCertSize)
		}
	}
	return nil
}

// ParseEntry parses a log leaf. It accepts only the canonical encoding.
func ParseEntry(leaf []byte) (Entry, error) {
	if len(leaf) > MaxEntrySize {
		return Entry{}, fmt.Errorf("%w: entry is %d bytes, limit %d", ErrMalformed, len(leaf), MaxEntrySize)
	}
	if e, ok := parseCanonical(leaf); ok {
		return e, nil
	}
	return parseEntrySlow(leaf)
}

// parseEntrySlow decodes leaf as JSON and accepts it only if it re-encodes
// to the same bytes: the definition of canonical.
func parseEntrySlow(leaf []byte) (Entry, error) {
	var e Entry
	if err := strictUnmarshal(leaf, &e); err != nil {
		return Entry{}, fmt.Errorf("%w: entry: %v", ErrMalformed, err)
	}
	canon, err := e.Marshal()
	if err != nil {
		return Entry{}, err
	}
	if !bytes.Equal(canon, leaf) {
		return Entry{}, fmt.Errorf("%w: entry is not in canonical form", ErrMalformed)
	}
	return e, nil
}

// canonicalPrefix starts every canonical leaf (Marshal's field order).
var canonicalPrefix = []byte(`{"type":"` + EntryType + `","integrated_time":`)

// parseCanonical parses leaf if it is, byte for byte, what Marshal writes
// (ok false otherwise: ParseEntry then decodes it the slow way, which
// decides and explains). Reading a whole log, ParseEntry is on the hot
// path: this avoids a JSON decode and re-encode per entry. It accepts
// exactly the bytes Marshal produces: the fixed field order and prefix, a
// canonical positive decimal, and base64 strings that strict standard
// decoding accepts at their exact encoded length (no line breaks, padding
// bits zero), so the slow path's round trip would give the same bytes
// (FuzzParseEntryFastPath checks both agree).
func parseCanonical(leaf []byte) (Entry, bool) {
	rest, ok := bytes.CutPrefix(leaf, canonicalPrefix)
	if !ok {
		return Entry{}, false
	}
	i := 0
	for i < len(rest) && i < 19 && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || rest[0] == '0' {
		return Entry{}, false
	}
	t, err := strconv.ParseInt(string(rest[:i]), 10, 64)
	if err != nil {
		return Entry{}, false
	}
	e := Entry{Type: EntryType, IntegratedTime: t}
	if rest, ok = bytes.CutPrefix(rest[i:], []byte(`,"envelope":`)); !ok {
		return Entry{}, false
	}
	if e.Envelope, rest, ok = cutBase64(rest); !ok {
		return Entry{}, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"cert_chain":[`)); !ok {
		return Entry{}, false
	}
	for {
		var der []byte
		if der, rest, ok = cutBase64(rest); !ok || len(e.CertChain) == MaxChainLength {
			return Entry{}, false
		}
		e.CertChain = append(e.CertChain, der)
		if r, more := bytes.CutPrefix(rest, []byte(",")); more {
			rest = r
			continue
		}
		break
	}
	if string(rest) != "]}" || e.validate() != nil {
		return Entry{}, false
	}
	return e, true
}

// cutBase64 decodes the JSON string of canonical standard base64 at the
// start of b and returns the rest.
func cutBase64(b []byte) (out, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != '"' {
		return nil, nil, false
	}
	end := bytes.IndexByte(b[1:], '"')
	if end < 0 {
		return nil, nil, false
	}
	enc := b[1 : 1+end]
	out = make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	n, err := base64.StdEncoding.Strict().Decode(out, enc)
	if err != nil || base64.StdEncoding.EncodedLen(n) != len(enc) {
		return nil, nil, false
	}
	return out[:n], b[2+end:], true
}

// Certificates parses the entry's chain.
func (e Entry) Certificates() ([]*x509.Certificate, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	out := make([]*x509.Certificate, 0, len(e.CertChain))
	for i, der := range e.CertChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrMalformed, i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// Bundle is the document fosterd returns for an accepted attestation
// (DIR/attestations/bundles/<sequence>.json on the device).
type Bundle struct {
	// MediaType is the bundle format, MediaType.
	MediaType string `json:"media_type"`
	// Envelope is the DSSE envelope exactly as the device sent it.
	Envelope []byte `json:"envelope"`
	// CertChain is the device certificate chain in PEM, leaf first.
	CertChain string `json:"cert_chain"`
	// IntegratedTime is when fosterd accepted the envelope (Unix seconds).
	IntegratedTime int64 `json:"integrated_time"`
	// Log proves the entry built from the three fields above is in the log.
	Log LogProof `json:"log"`
	// TUF is the signed metadata listing the installed target.
	TUF TUFEvidence `json:"tuf"`
}

// LogProof is an RFC 6962 inclusion proof against a signed checkpoint.
type LogProof struct {
	LeafIndex      int64    `json:"leaf_index"`
	TreeSize       int64    `json:"tree_size"`
	InclusionProof [][]byte `json:"inclusion_proof"`
	// Checkpoint is the C2SP signed note committing to TreeSize leaves.
	Checkpoint string `json:"checkpoint"`
}

// TUFEvidence is the TUF metadata an auditor needs to check that the
// installed target was signed, starting from the root they trust.
type TUFEvidence struct {
	// Roots are root metadata versions 2..N (N the root when fosterd
	// accepted the attestation), each signed by its predecessor and itself.
	Roots []json.RawMessage `json:"roots"`
	// Targets is the top-level targets metadata: of the snapshot the device
	// reports having used when the repository still has it, else of the
	// one current at ingest.
	Targets json.RawMessage `json:"targets"`
	// Delegations is the chain of delegated targets metadata, of the same
	// snapshot, from Targets down to the role that lists the installed
	// target (say models/<model>, then a hashed bin); empty when Targets
	// lists it itself.
	Delegations []DelegatedRole `json:"delegations,omitempty"`
}

// DelegatedRole is one delegated targets role's metadata.
type DelegatedRole struct {
	Name     string          `json:"name"`
	Metadata json.RawMessage `json:"metadata"`
}

// MaxDelegations bounds the delegation chain a bundle carries.
const MaxDelegations = 8

// Parse parses a bundle document (at most MaxSize bytes). It checks the
// shape only; Verifier.Verify checks the evidence.
func Parse(raw []byte) (*Bundle, error) {
	b, err := decode(raw)
	if err != nil {
		return nil, err
	}
	if _, err := b.validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// decode parses the JSON of a bundle without checking its contents.
func decode(raw []byte) (*Bundle, error) {
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(raw), MaxSize)
	}
	var b Bundle
	if err := strictUnmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &b, nil
}

// validate checks the bundle's shape and returns the entry it claims.
func (b *Bundle) validate() (Entry, error) {
	if err := b.checkShape(); err != nil {
		return Entry{}, err
	}
	return b.Entry()
}

func (b *Bundle) checkShape() error {
	switch {
	case b.MediaType != MediaType:
		return fmt.Errorf("%w: media type %q, want %q", ErrMalformed, truncate(b.MediaType), MediaType)
	case b.Log.LeafIndex < 0 || b.Log.TreeSize <= b.Log.LeafIndex:
		return fmt.Errorf("%w: leaf index %d outside a tree of %d", ErrMalformed, b.Log.LeafIndex, b.Log.TreeSize)
	case len(b.Log.InclusionProof) > tlogverify.MaxProofLength:
		return fmt.Errorf("%w: inclusion proof longer than %d hashes", ErrMalformed, tlogverify.MaxProofLength)
	case len(b.Log.Checkpoint) == 0 || len(b.Log.Checkpoint) > tlogverify.MaxCheckpointSize:
		return fmt.Errorf("%w: checkpoint must be 1-%d bytes", ErrMalformed, tlogverify.MaxCheckpointSize)
	case len(b.TUF.Roots) > MaxRoots:
		return fmt.Errorf("%w: more than %d root versions", ErrMalformed, MaxRoots)
	case len(b.TUF.Targets) == 0 || len(b.TUF.Targets) > MaxTargetsSize:
		return fmt.Errorf("%w: targets metadata must be 1-%d bytes", ErrMalformed, MaxTargetsSize)
	}
	for i, r := range b.TUF.Roots {
		if len(r) > MaxRootSize {
			return fmt.Errorf("%w: root metadata %d exceeds %d bytes", ErrMalformed, i, MaxRootSize)
		}
	}
	if len(b.TUF.Delegations) > MaxDelegations {
		return fmt.Errorf("%w: more than %d delegated roles", ErrMalformed, MaxDelegations)
	}
	for i, d := range b.TUF.Delegations {
		if d.Name == "" || len(d.Name) > 256 || len(d.Metadata) == 0 || len(d.Metadata) > MaxTargetsSize {
			return fmt.Errorf("%w: delegated role %d needs a name and 1-%d bytes of metadata", ErrMalformed, i, MaxTargetsSize)
		}
	}
	return nil
}

// Entry rebuilds the log entry the bundle claims is in the log.
func (b *Bundle) Entry() (Entry, error) {
	e := Entry{Type: EntryType, IntegratedTime: b.IntegratedTime, Envelope: b.Envelope}
	rest := []byte(b.CertChain)
	if len(rest) > MaxChainLength*(2*MaxCertSize) {
		return Entry{}, fmt.Errorf("%w: certificate chain PEM too large", ErrMalformed)
	}
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return Entry{}, fmt.Errorf("%w: PEM block %q in the certificate chain", ErrMalformed, truncate(blk.Type))
		}
		e.CertChain = append(e.CertChain, blk.Bytes)
		if len(e.CertChain) > MaxChainLength {
			break
		}
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return Entry{}, fmt.Errorf("%w: trailing data after the certificate chain", ErrMalformed)
	}
	if err := e.validate(); err != nil {
		return Entry{}, err
	}
	return e, nil
}

// ChainPEM encodes a DER chain as PEM.
func ChainPEM(chain [][]byte) string {
	var buf bytes.Buffer
	for _, der := range chain {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return buf.String()
}

// Marshal encodes the bundle (indented, for people who open the file).
func (b *Bundle) Marshal() ([]byte, error) {
	if _, err := b.validate(); err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding bundle: %w", err)
	}
	return append(out, '\n'), nil
}

// strictUnmarshal decodes exactly one JSON value with no unknown fields.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
