// Package backup writes and restores a whole Foster instance as one tar
// archive (optionally gzip-compressed), while fosterd keeps serving:
//
//	store/<table>/<part>.jsonl   the store, one JSON array per row (pkg/store dump.go),
//	                             read in one snapshot transaction
//	blobs/<key>                  every object of the blob store (TUF metadata, firmware)
//	instance/<path>              the data directory's files: config.json, certificates,
//	                             and the keys kept there
//	manifest.json                last: format, versions, counts, SHA-256 of every member
//
// Consistency: the store snapshot is taken holding the TUF publish lock,
// and timestamp.json is read under that lock, so the archive's repository
// is the one the store last recorded. Every other blob is written once and
// never changed (content-addressed targets, versioned metadata), and a
// publish writes everything before the timestamp.json that references it;
// so the objects listed after the snapshot include everything the store
// and that timestamp.json reference. Objects published later are copied
// too; no metadata of the archive references them.
//
// Threat model: the archive holds the private keys that are in the data
// directory; it is written 0600 and must be kept like them. The manifest's
// hashes detect corruption and truncation, not a forger (who could rewrite
// them): keep archives where only operators can write. A restore verifies
// the whole archive before it writes anything, and checks every member
// again as it restores it.
package backup

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/pkg/store"
)

// Format names the archive format in its manifest; FormatVersion is the
// version this package writes and reads.
const (
	Format        = "foster-backup"
	FormatVersion = 1
	// ManifestName is the last member of every archive.
	ManifestName = "manifest.json"
)

// Limits on what a restore reads from an archive.
const (
	MaxManifestSize = 256 << 20 // bytes
	MaxConfigSize   = 1 << 20   // bytes of instance/config.json
	MaxMembers      = 10_000_000
	// partSize bounds a store part, and so the memory a backup holds for
	// one (a row larger than it makes a part of its own).
	partSize = 4 << 20 // bytes
)

// ErrInvalid is wrapped by every error about an archive's content: not an
// archive, truncated, tampered with, or of an unknown format.
var ErrInvalid = errors.New("invalid backup archive")

// Manifest describes an archive.
type Manifest struct {
	Format        string    `json:"format"`
	FormatVersion int       `json:"format_version"`
	FosterVersion string    `json:"foster_version"`
	SchemaVersion int64     `json:"schema_version"`
	CreatedAt     time.Time `json:"created_at"`
	// StoreDialect is the backed-up store's ("sqlite" or "postgres"); a
	// restore may use either.
	StoreDialect string `json:"store_dialect"`
	// Blobs is the backed-up blob store's URL (it holds no credentials).
	Blobs string `json:"blobs"`
	// Timestamp is the version of the archive's tuf/timestamp.json.
	TimestampVersion int64       `json:"timestamp_version"`
	Counts           Counts      `json:"counts"`
	Tables           []TableDump `json:"tables"`
	Members          []Member    `json:"members"`
}

// Counts sum up an archive.
type Counts struct {
	Tables    int   `json:"tables"`
	Rows      int64 `json:"rows"`
	Blobs     int   `json:"blobs"`
	BlobBytes int64 `json:"blob_bytes"`
	Files     int   `json:"files"`
	KeyFiles  int   `json:"key_files"`
}

// TableDump is one table of the store in the archive.
type TableDump struct {
	store.TableInfo
	Rows  int64 `json:"rows"`
	Parts int   `json:"parts"`
}

// Member is one file of the archive.
type Member struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func partName(table string, part int) string { return fmt.Sprintf("store/%s/%06d.jsonl", table, part) }

var partRE = regexp.MustCompile(`^store/([A-Za-z_][A-Za-z0-9_]{0,62})/([0-9]{6})\.jsonl$`)

// writer writes members, hashing each into the manifest.
type writer struct {
	tw       *tar.Writer
	members  []Member
	now      time.Time
	progress *progress
}

func (w *writer) add(name string, size int64, r io.Reader) error {
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: w.now, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w.tw, h), r)
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("writing %s: read %d bytes, expected %d (did it change during the backup?)", name, n, size)
	}
	w.members = append(w.members, Member{Name: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))})
	w.progress.bytes(size)
	return nil
}

func (w *writer) addBytes(name string, b []byte) error {
	return w.add(name, int64(len(b)), bytes.NewReader(b))
}

// reader reads an archive's members in order, hashing each.
type reader struct {
	f   *os.File
	gz  *gzip.Reader
	tr  *tar.Reader
	cur *tar.Header
	h   hashCounter
}

type hashCounter struct {
	r    io.Reader
	hash interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *hashCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.hash.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func openArchive(name string) (*reader, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	r := &reader{f: f}
	br := bufio.NewReader(f)
	var src io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		if r.gz, err = gzip.NewReader(br); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
		}
		r.gz.Multistream(false)
		src = r.gz
	}
	r.tr = tar.NewReader(src)
	return r, nil
}

// next moves to the next member and returns its header (io.EOF at the end).
// Read the member from r.body().
func (r *reader) next() (*tar.Header, error) {
	hdr, err := r.tr.Next()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v (truncated or corrupt?)", ErrInvalid, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: member %q is not a regular file", ErrInvalid, hdr.Name)
	}
	if err := checkMemberName(hdr.Name); err != nil {
		return nil, err
	}
	r.cur = hdr
	r.h = hashCounter{r: r.tr, hash: sha256.New()}
	return hdr, nil
}

func (r *reader) body() io.Reader { return &r.h }

// finish reads what is left of the member and returns its SHA-256 and size.
func (r *reader) finish() (string, int64, error) {
	if _, err := io.Copy(io.Discard, &r.h); err != nil {
		return "", 0, fmt.Errorf("%w: reading %s: %v (truncated?)", ErrInvalid, r.cur.Name, err)
	}
	return hex.EncodeToString(r.h.hash.Sum(nil)), r.h.n, nil
}

// end checks that nothing follows the manifest (gzip's checksum included).
func (r *reader) end() error {
	if _, err := r.tr.Next(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("%w: members after %s", ErrInvalid, ManifestName)
		}
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if r.gz != nil {
		if _, err := io.Copy(io.Discard, r.gz); err != nil {
			return fmt.Errorf("%w: %v (truncated or corrupt?)", ErrInvalid, err)
		}
	}
	return nil
}

func (r *reader) close() error {
	if r.gz != nil {
		r.gz.Close()
	}
	return r.f.Close()
}

// checkMemberName accepts only the names a backup writes.
func checkMemberName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%w: member %q: %s", ErrInvalid, name, why) }
	switch {
	case name == ManifestName:
		return nil
	case strings.HasPrefix(name, "store/"):
		if !partRE.MatchString(name) {
			return bad("not a store part (store/TABLE/NNNNNN.jsonl)")
		}
	case strings.HasPrefix(name, "blobs/"):
		if err := blob.ValidKey(strings.TrimPrefix(name, "blobs/")); err != nil {
			return bad(err.Error())
		}
	case strings.HasPrefix(name, "instance/"):
		rel := strings.TrimPrefix(name, "instance/")
		if rel == "" || path.Clean(rel) != rel || path.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") || strings.ContainsAny(rel, "\\\x00") {
			return bad("not a clean relative path")
		}
	default:
		return bad("unknown member")
	}
	return nil
}

// Verified is what Verify learnt of an archive.
type Verified struct {
	Manifest *Manifest
	// Config is instance/config.json.
	Config []byte
	// Size is the archive's size on disk.
	Size int64
	// ManifestSHA256 is the manifest's own hash (a restore checks that it
	// reads the same manifest again).
	ManifestSHA256 string
}

// Verify reads the whole archive at name and checks it against its
// manifest: every member present once, in its place, with the size and
// SHA-256 the manifest records, the manifest last and nothing after it, a
// known format, and a schema version this build can restore.
func Verify(name string) (*Verified, error) {
	st, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	r, err := openArchive(name)
	if err != nil {
		return nil, err
	}
	defer r.close()
	v := &Verified{Size: st.Size()}
	var seen []Member
	names := map[string]bool{}
	for {
		hdr, err := r.next()
		if err == io.EOF {
			return nil, fmt.Errorf("%w: %s has no %s (truncated?)", ErrInvalid, name, ManifestName)
		}
		if err != nil {
			return nil, err
		}
		if names[hdr.Name] {
			return nil, fmt.Errorf("%w: member %q appears twice", ErrInvalid, hdr.Name)
		}
		names[hdr.Name] = true
		if len(seen) >= MaxMembers {
			return nil, fmt.Errorf("%w: more than %d members", ErrInvalid, MaxMembers)
		}
		if hdr.Name == ManifestName {
			b, err := io.ReadAll(io.LimitReader(r.body(), MaxManifestSize+1))
			if err != nil {
				return nil, fmt.Errorf("%w: reading %s: %v (truncated?)", ErrInvalid, ManifestName, err)
			}
			if len(b) > MaxManifestSize {
				return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, ManifestName, MaxManifestSize)
			}
			if err := r.end(); err != nil {
				return nil, err
			}
			m, err := parseManifest(b)
			if err != nil {
				return nil, err
			}
			if err := m.check(seen); err != nil {
				return nil, err
			}
			if v.Config == nil {
				return nil, fmt.Errorf("%w: no instance/config.json", ErrInvalid)
			}
			v.Manifest = m
			sum := sha256.Sum256(b)
			v.ManifestSHA256 = hex.EncodeToString(sum[:])
			return v, nil
		}
		if hdr.Name == "instance/config.json" {
			b, err := io.ReadAll(io.LimitReader(r.body(), MaxConfigSize+1))
			if err != nil {
				return nil, fmt.Errorf("%w: reading %s: %v (truncated?)", ErrInvalid, hdr.Name, err)
			}
			if len(b) > MaxConfigSize {
				return nil, fmt.Errorf("%w: instance/config.json is larger than %d bytes", ErrInvalid, MaxConfigSize)
			}
			v.Config = b
		}
		sum, n, err := r.finish()
		if err != nil {
			return nil, err
		}
		seen = append(seen, Member{Name: hdr.Name, Size: n, SHA256: sum})
	}
}

func parseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: parsing %s: %v", ErrInvalid, ManifestName, err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrInvalid, m.Format, Format)
	}
	if m.FormatVersion != FormatVersion {
		return nil, fmt.Errorf("%w: format version %d; this build reads version %d (restore with the release that wrote it, or a newer one)", ErrInvalid, m.FormatVersion, FormatVersion)
	}
	if m.SchemaVersion > store.SchemaVersion() {
		return nil, fmt.Errorf("%w: the backup's store is at schema version %d, this build knows versions up to %d: restore it with the release that made it (or a newer one)", store.ErrSchemaTooNew, m.SchemaVersion, store.SchemaVersion())
	}
	if m.SchemaVersion < 1 {
		return nil, fmt.Errorf("%w: schema version %d", ErrInvalid, m.SchemaVersion)
	}
	return &m, nil
}

// check compares the members read with the manifest's list, and the
// manifest's tables with its members.
func (m *Manifest) check(seen []Member) error {
	if len(seen) != len(m.Members) {
		return fmt.Errorf("%w: the archive has %d members, the manifest lists %d (truncated or tampered with)", ErrInvalid, len(seen), len(m.Members))
	}
	for i, got := range seen {
		want := m.Members[i]
		if got.Name != want.Name {
			return fmt.Errorf("%w: member %d is %s, the manifest lists %s", ErrInvalid, i+1, got.Name, want.Name)
		}
		if got.Size != want.Size || got.SHA256 != want.SHA256 {
			return fmt.Errorf("%w: %s: %d bytes with SHA-256 %s, the manifest records %d bytes with %s (corrupt or tampered with)", ErrInvalid, got.Name, got.Size, got.SHA256, want.Size, want.SHA256)
		}
	}
	parts := map[string]int{}
	for _, mem := range m.Members {
		if g := partRE.FindStringSubmatch(mem.Name); g != nil {
			parts[g[1]]++
		}
	}
	tables := map[string]bool{}
	for _, t := range m.Tables {
		if tables[t.Name] {
			return fmt.Errorf("%w: table %s listed twice", ErrInvalid, t.Name)
		}
		tables[t.Name] = true
		if parts[t.Name] != t.Parts || t.Parts < 0 || t.Rows < 0 || len(t.Columns) == 0 {
			return fmt.Errorf("%w: table %s: the manifest says %d parts, the archive has %d", ErrInvalid, t.Name, t.Parts, parts[t.Name])
		}
	}
	for name := range parts {
		if !tables[name] {
			return fmt.Errorf("%w: store parts of table %s, which the manifest does not list", ErrInvalid, name)
		}
	}
	return nil
}
