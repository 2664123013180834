// Package offline is the format of Foster's offline ("resurrection")
// bundle: one tar file that carries everything a device needs to verify and
// install one release without ever reaching fosterd (an air-gapped plant, a
// ship without uplink). fosterd writes it (`foster bundle export`), the
// agent reads it (`foster-agent install-bundle`); docs/OFFLINE.md is the
// user-facing description and the security argument.
//
// Layout. Members are named like the objects of fosterd's blob store, so an
// unpacked bundle is also a plain mirror of the repository (MIRROR/tuf/...,
// MIRROR/targets/...) that any static HTTP server can serve:
//
//	bundle.json                      Manifest: which release, for which model (a hint, unsigned)
//	tuf/1.root.json .. tuf/N.root.json  every root version, so a device holding any of them walks to N
//	tuf/timestamp.json               a timestamp signed for this bundle (same version as fosterd's
//	                                 current one, longer expiry, SignedAtField)
//	tuf/<S>.snapshot.json            the current snapshot re-signed with the same longer expiry
//	tuf/<T>.targets.json             the current top-level targets
//	tuf/<V>.models/<model>.json      the model's delegated role (and the hashed bins it needs:
//	tuf/<V>.models/<model>/bins-<x>.json)
//	ca.pem                           the Foster CA bundle (root and issuing CA), for the site
//	crl.der                          the current CRL, when the instance publishes one
//	targets/<model>/<version>/<sha256>.<file>   the image, last, so it can be streamed
//
// Threat model. A bundle travels on USB sticks and through mail rooms: every
// byte of it is untrusted. The agent trusts nothing in it that TUF does not
// sign: the manifest only says which target to look for, and the metadata
// and the image are verified by the same go-tuf client workflow, rollback
// floors and device policy as an online update. This package only bounds
// what a reader may be made to do: every member name is checked, every size
// is bounded before anything is read, and members are located (not
// loaded), so the image is read straight from the file.
package offline

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Member names.
const (
	ManifestName = "bundle.json"
	CAName       = "ca.pem"
	CRLName      = "crl.der"
	MetadataDir  = "tuf/"
	TargetsDir   = "targets/"
	// TimestampName is the bundle's timestamp metadata.
	TimestampName = MetadataDir + "timestamp.json"
)

// FormatVersion is the manifest format this package writes and reads.
const FormatVersion = 1

// SignedAtField is a member of the signed part of a bundle's timestamp
// metadata: when fosterd signed it (RFC 3339, UTC). An ordinary timestamp
// has none. TUF clients must keep fields they do not know, and the
// signature covers it, so only the timestamp key can set it; the agent uses
// it as evidence of the time (client/internal/clock) instead of the
// timestamp's expiry minus the usual lifetime, which a bundle's longer
// lifetime would push into the future.
const SignedAtField = "x-foster-bundle-signed-at"

// Lifetimes of a bundle's timestamp and snapshot.
const (
	DefaultLifetime = 30 * 24 * time.Hour
	MinLifetime     = time.Hour
	// MaxLifetime bounds every configuration: the longer a bundle lives,
	// the longer whoever holds it can show a device its (then old) view of
	// the repository (docs/OFFLINE.md).
	MaxLifetime = 365 * 24 * time.Hour
)

// Bounds on what a bundle may hold (every size read from a bundle is bounded).
const (
	MaxMembers      = 4096
	MaxNameLength   = 1024      // bytes
	MaxManifestSize = 64 << 10  // bytes
	MaxMetadataSize = 5000000   // bytes per metadata file: go-tuf's largest default (targets)
	MaxCASize       = 1 << 20   // bytes
	MaxCRLSize      = 16 << 20  // bytes
	MaxSmallTotal   = 256 << 20 // bytes of all members but targets
	MaxImageSize    = 64 << 30  // bytes of one target member
)

// ErrMalformed is wrapped by every error about a bundle's structure.
var ErrMalformed = errors.New("malformed bundle")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// Manifest is bundle.json. It is written by fosterd and is NOT signed: the
// agent uses Target to know which signed target to look for and Model to
// refuse a bundle for another model early with a clear message; everything
// it installs is judged on TUF-signed metadata. The other fields inform the
// people handling the bundle.
type Manifest struct {
	Format int    `json:"format"`
	Model  string `json:"model"`
	// HardwareID is the hardware id the export was asked for ("" for any
	// the image supports); HardwareIDs are the image's signed ones.
	HardwareID  string   `json:"hardware_id,omitempty"`
	HardwareIDs []string `json:"hardware_ids"`
	// Target is the TUF target path, Image its member name.
	Target         string `json:"target"`
	Image          string `json:"image"`
	Version        string `json:"version"`
	ReleaseCounter int64  `json:"release_counter"`
	Length         int64  `json:"length"` // bytes
	SHA256         string `json:"sha256"`
	MinFromVersion string `json:"min_from_version,omitempty"`
	// Staged names the rollout whose signed terms restrict which devices
	// accept the release ("" when every device of the model is offered it).
	Staged string `json:"staged,omitempty"`
	// Metadata are the TUF versions the bundle carries.
	Metadata Versions  `json:"metadata"`
	Created  time.Time `json:"created"`
	// Expires is when the first of the bundle's metadata expires: after it,
	// a device with a correct clock refuses the bundle (freeze defence).
	Expires time.Time `json:"expires"`
	// Server is the fosterd URL that exported it (informational).
	Server string `json:"server,omitempty"`
}

// Versions are TUF metadata versions.
type Versions struct {
	Root      int64 `json:"root"`
	Timestamp int64 `json:"timestamp"`
	Snapshot  int64 `json:"snapshot"`
	Targets   int64 `json:"targets"`
}

// ImageName is the member (and blob key) of target path p with SHA-256 hex
// sum: targets/<dir>/<sha256>.<base>, the consistent-snapshot name.
func ImageName(p, sum string) string {
	dir, base := path.Split(p)
	return TargetsDir + dir + sum + "." + base
}

// Validate checks a manifest's fields (not their truth: only TUF says that).
func (m *Manifest) Validate() error {
	switch {
	case m.Format > FormatVersion:
		return malformed("bundle format %d is newer than this program understands (%d): use a newer release", m.Format, FormatVersion)
	case m.Format != FormatVersion:
		return malformed("bundle format %d is not %d", m.Format, FormatVersion)
	case m.Model == "" || len(m.Model) > 64:
		return malformed("manifest has no valid model")
	case m.Length < 0 || m.Length > MaxImageSize:
		return malformed("manifest length %d out of range", m.Length)
	}
	if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != 32 {
		return malformed("manifest sha256 %q is not 64 hex digits", m.SHA256)
	}
	if err := validTargetPath(m.Target); err != nil {
		return err
	}
	if m.Image != ImageName(m.Target, m.SHA256) {
		return malformed("manifest image %q is not the member of target %q", m.Image, m.Target)
	}
	return nil
}

// ParseManifest decodes and validates bundle.json.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestSize {
		return nil, malformed("%s is larger than %d bytes", ManifestName, MaxManifestSize)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, malformed("%s: %v", ManifestName, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func validTargetPath(p string) error {
	if err := ValidName(TargetsDir + p); err != nil || strings.Count(p, "/") < 1 {
		return malformed("target path %q is not a clean relative path", p)
	}
	return nil
}

// ValidName checks a member name: a clean relative path of printable ASCII
// (no "..", no backslash, no leading "/"), ManifestName, CAName, CRLName or
// under MetadataDir (a .json file) or TargetsDir.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLength {
		return malformed("member name of %d bytes", len(name))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c > 0x7e || c == '\\' {
			return malformed("member name %q has a character outside printable ASCII", name)
		}
	}
	if strings.HasPrefix(name, "/") || path.Clean(name) != name {
		return malformed("member name %q is not a clean relative path", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "." || seg == ".." || strings.HasPrefix(seg, ".") {
			return malformed("member name %q has a dot segment", name)
		}
	}
	switch {
	case name == ManifestName, name == CAName, name == CRLName:
		return nil
	case strings.HasPrefix(name, MetadataDir) && strings.HasSuffix(name, ".json") && len(name) > len(MetadataDir)+len(".json"):
		return nil
	case strings.HasPrefix(name, TargetsDir) && len(name) > len(TargetsDir):
		return nil
	}
	return malformed("unexpected member %q", name)
}

// SizeLimit is the largest size a member named name may have.
func SizeLimit(name string) int64 {
	switch {
	case name == ManifestName:
		return MaxManifestSize
	case name == CAName:
		return MaxCASize
	case name == CRLName:
		return MaxCRLSize
	case strings.HasPrefix(name, TargetsDir):
		return MaxImageSize
	}
	return MaxMetadataSize
}

// Writer writes a bundle. Not safe for concurrent use.
type Writer struct {
	tw      *tar.Writer
	modTime time.Time
	names   map[string]bool
	small   int64
}

// NewWriter writes a bundle to w; every member gets modTime.
func NewWriter(w io.Writer, modTime time.Time) *Writer {
	return &Writer{tw: tar.NewWriter(w), modTime: modTime.UTC().Truncate(time.Second), names: map[string]bool{}}
}

// Add writes member name with data.
func (w *Writer) Add(name string, data []byte) error {
	return w.AddFrom(name, int64(len(data)), bytes.NewReader(data))
}

// AddFrom writes member name with exactly size bytes from r.
func (w *Writer) AddFrom(name string, size int64, r io.Reader) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if w.names[name] {
		return malformed("duplicate member %q", name)
	}
	if size < 0 || size > SizeLimit(name) {
		return malformed("member %q of %d bytes (at most %d)", name, size, SizeLimit(name))
	}
	if len(w.names) >= MaxMembers {
		return malformed("more than %d members", MaxMembers)
	}
	if !strings.HasPrefix(name, TargetsDir) {
		if w.small += size; w.small > MaxSmallTotal {
			return malformed("metadata larger than %d bytes in all", MaxSmallTotal)
		}
	}
	w.names[name] = true
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: w.modTime, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing bundle member %s: %w", name, err)
	}
	n, err := io.Copy(w.tw, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("writing bundle member %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("writing bundle member %s: got %d of %d bytes", name, n, size)
	}
	return nil
}

// Close writes the end of the archive (it does not close the underlying writer).
func (w *Writer) Close() error { return w.tw.Close() }

// Member locates one member's bytes in the archive.
type Member struct {
	Name         string
	Offset, Size int64
}

// Archive is a bundle file's table of contents: members are located, not
// loaded. Safe for concurrent use (reads go through io.ReaderAt).
type Archive struct {
	ra      io.ReaderAt
	members map[string]Member
	order   []string
}

// ReadArchive scans the tar headers of a bundle of size bytes: it reads
// each header, seeks over each body, and checks every name, type and size
// against the bounds above, and that every member lies inside the file.
func ReadArchive(ra io.ReaderAt, size int64) (*Archive, error) {
	sr := io.NewSectionReader(ra, 0, size)
	tr := tar.NewReader(sr)
	a := &Archive{ra: ra, members: map[string]Member{}}
	var small int64
	for n := 0; ; n++ {
		if n > MaxMembers {
			return nil, malformed("more than %d members", MaxMembers)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, malformed("reading tar headers: %v", err)
		}
		// "./" prefixes and directories appear when someone re-packs an
		// unpacked bundle (tar -C dir -cf bundle.tar .).
		name := strings.TrimPrefix(hdr.Name, "./")
		if hdr.Typeflag == tar.TypeDir {
			if d := strings.TrimSuffix(name, "/"); d != "" && d != "." && d != "tuf" && d != "targets" {
				if err := ValidName(d + "/x.json"); err != nil {
					return nil, malformed("unexpected directory %q", name)
				}
			}
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, malformed("member %q is not a regular file (tar type %q)", name, hdr.Typeflag)
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				// Its body is not its bytes: members must be read straight from the file.
				return nil, malformed("member %q is a sparse file", name)
			}
		}
		if err := ValidName(name); err != nil {
			return nil, err
		}
		if _, dup := a.members[name]; dup {
			return nil, malformed("duplicate member %q", name)
		}
		if hdr.Size < 0 || hdr.Size > SizeLimit(name) {
			return nil, malformed("member %q of %d bytes (at most %d)", name, hdr.Size, SizeLimit(name))
		}
		if !strings.HasPrefix(name, TargetsDir) {
			if small += hdr.Size; small > MaxSmallTotal {
				return nil, malformed("metadata larger than %d bytes in all", MaxSmallTotal)
			}
		}
		// The tar reader reads exactly the header blocks: the body starts here.
		off, err := sr.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		if off+hdr.Size > size {
			return nil, malformed("member %q ends at byte %d of a %d-byte file: the bundle is truncated", name, off+hdr.Size, size)
		}
		a.members[name] = Member{Name: name, Offset: off, Size: hdr.Size}
		a.order = append(a.order, name)
	}
	return a, nil
}

// Members lists the members in archive order.
func (a *Archive) Members() []Member {
	out := make([]Member, 0, len(a.order))
	for _, n := range a.order {
		out = append(out, a.members[n])
	}
	return out
}

// Open returns a reader of member name's bytes.
func (a *Archive) Open(name string) (*io.SectionReader, bool) {
	m, ok := a.members[name]
	if !ok {
		return nil, false
	}
	return io.NewSectionReader(a.ra, m.Offset, m.Size), true
}

// ReadAll reads a member that is not a target (bounded by SizeLimit).
func (a *Archive) ReadAll(name string) ([]byte, error) {
	r, ok := a.Open(name)
	if !ok {
		return nil, fmt.Errorf("bundle has no %s", name)
	}
	if r.Size() > SizeLimit(name) || strings.HasPrefix(name, TargetsDir) {
		return nil, malformed("member %q is too large to read whole", name)
	}
	b := make([]byte, r.Size())
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("reading bundle member %s: %w", name, err)
	}
	return b, nil
}

// Manifest reads and validates the archive's manifest (nil, nil when it has none).
func (a *Archive) Manifest() (*Manifest, error) {
	if _, ok := a.members[ManifestName]; !ok {
		return nil, nil
	}
	b, err := a.ReadAll(ManifestName)
	if err != nil {
		return nil, err
	}
	return ParseManifest(b)
}
