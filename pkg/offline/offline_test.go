package offline_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/offline"
)

func manifest(image []byte) *offline.Manifest {
	sum := sha256.Sum256(image)
	h := hex.EncodeToString(sum[:])
	return &offline.Manifest{
		Format: offline.FormatVersion, Model: "edge-gw", Target: "edge-gw/2.0.0/fw.bin",
		Image: offline.ImageName("edge-gw/2.0.0/fw.bin", h), Version: "2.0.0", ReleaseCounter: 2,
		Length: int64(len(image)), SHA256: h, HardwareIDs: []string{},
	}
}

func write(t *testing.T, image []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := offline.NewWriter(&buf, time.Now())
	m := manifest(image)
	mb, _ := json.Marshal(m)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{offline.ManifestName, mb},
		{"tuf/1.root.json", []byte(`{"root":1}`)},
		{"tuf/timestamp.json", []byte(`{"ts":1}`)},
		{"tuf/3.models/edge-gw.json", []byte(`{"role":3}`)},
		{offline.CAName, []byte("-----BEGIN CERTIFICATE-----\n")},
	} {
		if err := w.Add(f.name, f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.AddFrom(m.Image, int64(len(image)), bytes.NewReader(image)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTripLocatesMembersWithoutLoadingThem(t *testing.T) {
	image := bytes.Repeat([]byte("firmware"), 100000)
	b := write(t, image)
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := a.Manifest()
	if err != nil || m == nil {
		t.Fatalf("manifest: %v %v", m, err)
	}
	r, ok := a.Open(m.Image)
	if !ok {
		t.Fatal("no image member")
	}
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, image) {
		t.Fatal("image member differs")
	}
	// The member is a window on the file: its offset points at the bytes.
	last := a.Members()[len(a.Members())-1]
	if last.Name != m.Image || !bytes.Equal(b[last.Offset:last.Offset+last.Size], image) {
		t.Fatalf("image member at %d+%d is not the image", last.Offset, last.Size)
	}
	if role, err := a.ReadAll("tuf/3.models/edge-gw.json"); err != nil || string(role) != `{"role":3}` {
		t.Fatalf("role: %q %v", role, err)
	}
	if _, err := a.ReadAll(m.Image); err == nil {
		t.Fatal("read a target member whole")
	}
}

func tarOf(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestReadArchiveRefusesHostileArchives(t *testing.T) {
	good := write(t, bytes.Repeat([]byte("i"), 4096))
	tests := []struct {
		name string
		b    []byte
	}{
		{"path traversal", tarOf(t, &tar.Header{Name: "tuf/../../etc/passwd.json", Size: 1})},
		{"absolute path", tarOf(t, &tar.Header{Name: "/tuf/1.root.json", Size: 1})},
		{"hidden file", tarOf(t, &tar.Header{Name: "tuf/.x.json", Size: 1})},
		{"unexpected member", tarOf(t, &tar.Header{Name: "install.sh", Size: 1})},
		{"symlink", tarOf(t, &tar.Header{Name: "tuf/1.root.json", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"})},
		{"hard link", tarOf(t, &tar.Header{Name: "tuf/1.root.json", Typeflag: tar.TypeLink, Linkname: "bundle.json"})},
		{"device node", tarOf(t, &tar.Header{Name: "tuf/1.root.json", Typeflag: tar.TypeChar})},
		{"duplicate member", tarOf(t, &tar.Header{Name: "tuf/1.root.json", Size: 1}, &tar.Header{Name: "tuf/1.root.json", Size: 2})},
		{"oversized metadata", tarOf(t, &tar.Header{Name: "tuf/timestamp.json", Size: offline.MaxMetadataSize + 1})},
		{"oversized manifest", tarOf(t, &tar.Header{Name: "bundle.json", Size: offline.MaxManifestSize + 1})},
		{"sparse member", bytes.Replace(tarOf(t, &tar.Header{Name: "tuf/1.root.json", Size: 1, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"VENDOR.xxxxxxxxx": "1"}}), []byte("VENDOR.xxxxxxxxx"), []byte("GNU.sparse.major"), 1)},
		{"truncated", good[:len(good)-1024-2000]},
		{"not a tar", []byte(strings.Repeat("garbage!", 200))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := offline.ReadArchive(bytes.NewReader(tt.b), int64(len(tt.b)))
			if !errors.Is(err, offline.ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// An unpacked bundle packed again with tar (directories, "./" names) reads the same.
func TestReadArchiveAcceptsARepackedBundle(t *testing.T) {
	b := tarOf(t, &tar.Header{Name: "./", Typeflag: tar.TypeDir}, &tar.Header{Name: "./tuf/", Typeflag: tar.TypeDir},
		&tar.Header{Name: "./tuf/3.models/", Typeflag: tar.TypeDir}, &tar.Header{Name: "./tuf/3.models/edge-gw.json", Size: 3},
		&tar.Header{Name: "./targets/edge-gw/1.0.0/", Typeflag: tar.TypeDir})
	a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Open("tuf/3.models/edge-gw.json"); !ok {
		t.Fatalf("members %+v", a.Members())
	}
}

func TestReadArchiveRefusesTooManyMembers(t *testing.T) {
	var hdrs []*tar.Header
	for i := range offline.MaxMembers + 2 {
		hdrs = append(hdrs, &tar.Header{Name: "tuf/" + strings.Repeat("a", 1+i%50) + string(rune('a'+i%26)) + hex.EncodeToString([]byte{byte(i), byte(i >> 8)}) + ".json"})
	}
	b := tarOf(t, hdrs...)
	if _, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b))); !errors.Is(err, offline.ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
}

func TestManifestValidation(t *testing.T) {
	good := manifest([]byte("image"))
	for name, mutate := range map[string]func(m *offline.Manifest){
		"newer format":      func(m *offline.Manifest) { m.Format = 2 },
		"no model":          func(m *offline.Manifest) { m.Model = "" },
		"traversal target":  func(m *offline.Manifest) { m.Target = "../x/fw.bin" },
		"image not target":  func(m *offline.Manifest) { m.Image = "targets/other/fw.bin" },
		"bad sha256":        func(m *offline.Manifest) { m.SHA256 = "zz" },
		"negative length":   func(m *offline.Manifest) { m.Length = -1 },
		"oversized length":  func(m *offline.Manifest) { m.Length = offline.MaxImageSize + 1 },
		"target at the top": func(m *offline.Manifest) { m.Target = "fw.bin"; m.Image = offline.ImageName(m.Target, m.SHA256) },
	} {
		t.Run(name, func(t *testing.T) {
			m := *good
			mutate(&m)
			b, _ := json.Marshal(m)
			if _, err := offline.ParseManifest(b); !errors.Is(err, offline.ErrMalformed) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	b, _ := json.Marshal(good)
	if _, err := offline.ParseManifest(b); err != nil {
		t.Fatal(err)
	}
}

func TestWriterRefusesWhatReadersRefuse(t *testing.T) {
	w := offline.NewWriter(io.Discard, time.Now())
	if err := w.Add("../escape.json", nil); err == nil {
		t.Fatal("wrote a traversal name")
	}
	if err := w.Add("tuf/1.root.json", nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Add("tuf/1.root.json", nil); err == nil {
		t.Fatal("wrote a duplicate")
	}
	if err := w.AddFrom("tuf/2.root.json", 10, strings.NewReader("short")); err == nil {
		t.Fatal("wrote a short member")
	}
}

func FuzzReadArchive(f *testing.F) {
	f.Add(tarOfF(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := offline.ReadArchive(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, m := range a.Members() {
			if m.Offset < 0 || m.Size < 0 || m.Offset+m.Size > int64(len(b)) {
				t.Fatalf("member %+v outside the %d-byte input", m, len(b))
			}
		}
		a.Manifest()
	})
}

func tarOfF(f *testing.F) []byte {
	var buf bytes.Buffer
	w := offline.NewWriter(&buf, time.Unix(0, 0))
	mb, _ := json.Marshal(manifest([]byte("img")))
	w.Add(offline.ManifestName, mb)
	w.Add("tuf/1.root.json", []byte("{}"))
	m := manifest([]byte("img"))
	w.AddFrom(m.Image, 3, strings.NewReader("img"))
	w.Close()
	return buf.Bytes()
}
