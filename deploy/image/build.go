package main

import (
	"archive/tar"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed facts; deploy/Dockerfile, deploy/compose and
// deploy/helm use the same (the tests check they agree).
const (
	UID        = 65532 // "nonroot", as in distroless
	DataDir    = "/var/lib/foster"
	Entrypoint = "/usr/local/bin/fosterd"
	Port       = "8443/tcp"
)

// Programs are the binaries in the image, under /usr/local/bin.
var Programs = []string{"fosterd", "foster"}

type options struct {
	binDir, out, tar, tag, caBundle, arch string
}

// epoch is the time of every file and of the image, so that the same
// binaries give the same image digest.
var epoch = time.Unix(0, 0).UTC()

func build(o options) (v1.Hash, error) {
	var none v1.Hash
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return none, fmt.Errorf("--tag: %w", err)
	}
	var files []file
	var version, revision, goarch string
	for _, p := range Programs {
		path := filepath.Join(o.binDir, p)
		b, err := os.ReadFile(path)
		if err != nil {
			return none, err
		}
		arch, err := checkStatic(path)
		if err != nil {
			return none, err
		}
		goarch = arch
		if p == "fosterd" {
			if bi, err := buildinfo.ReadFile(path); err == nil {
				version = bi.Main.Version
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						revision = s.Value
					}
				}
			}
		}
		files = append(files, file{name: "usr/local/bin/" + p, mode: 0o755, data: b})
	}
	if o.arch != "" {
		goarch = o.arch
	}
	if o.caBundle != "" {
		b, err := os.ReadFile(o.caBundle)
		if err != nil {
			return none, fmt.Errorf("--ca-bundle: %w", err)
		}
		files = append(files, file{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: b})
	}
	files = append(files,
		file{name: "etc/passwd", mode: 0o644, data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, UID)},
		file{name: "etc/group", mode: 0o644, data: fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", UID)},
		file{name: "home/nonroot", dir: true, mode: 0o700, uid: UID},
		file{name: "tmp", dir: true, mode: 0o1777},
		file{name: DataDir[1:], dir: true, mode: 0o700, uid: UID},
	)
	layerTar, err := tarOf(files)
	if err != nil {
		return none, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return none, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return none, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return none, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = goarch, "linux"
	cf.Created = v1.Time{Time: epoch}
	uid := fmt.Sprintf("%d:%d", UID, UID)
	cf.Config = v1.Config{
		User:       uid,
		Entrypoint: []string{Entrypoint},
		// A dev instance on the volume: create one with --init once, or
		// mount an instance made by foster init (docs/OPERATIONS.md).
		Cmd:          []string{"--data-dir", DataDir, "--listen", ":8443", "--log-format", "json"},
		WorkingDir:   DataDir,
		ExposedPorts: map[string]struct{}{Port: {}},
		Volumes:      map[string]struct{}{DataDir: {}},
		Env:          []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		Healthcheck: &v1.HealthConfig{
			Test:     []string{"CMD", Entrypoint, "--data-dir", DataDir, "--listen", ":8443", "--probe"},
			Interval: 10 * time.Second, Timeout: 5 * time.Second, StartPeriod: 30 * time.Second, Retries: 3,
		},
		Labels: map[string]string{
			"org.opencontainers.image.title":    "fosterd",
			"org.opencontainers.image.source":   "https://github.com/foster-ota/foster",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.revision": revision,
		},
	}
	if o.caBundle == "" {
		cf.Config.Env = nil
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return none, err
	}
	if err := writeLayout(o.out, img, ref); err != nil {
		return none, err
	}
	if o.tar != "" {
		if err := tarball.WriteToFile(o.tar, ref, img); err != nil {
			return none, fmt.Errorf("writing %s: %w", o.tar, err)
		}
	}
	return img.Digest()
}

func writeLayout(dir string, img v1.Image, ref name.Tag) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%s is not empty: refusing to write an OCI layout into it", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.String(),
	}))
}

// checkStatic refuses a binary the empty base cannot run: not a Linux ELF
// executable, or one that needs a dynamic loader or shared libraries (built
// with cgo). It returns the binary's GOARCH.
func checkStatic(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: not a Linux executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0: make build): the image has no libc", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return "", fmt.Errorf("%s needs shared libraries %v (build it with CGO_ENABLED=0)", path, libs)
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_ARM:
		return "arm", nil
	case elf.EM_RISCV:
		return "riscv64", nil
	}
	return "", fmt.Errorf("%s: unsupported machine %v", path, f.Machine)
}

type file struct {
	name string
	dir  bool
	mode int64
	uid  int
	data []byte
}

// tarOf writes files, with their parent directories, as one layer. Owners
// are numeric: root unless a file says otherwise; times are epoch.
func tarOf(files []file) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	var parents func(string) error
	parents = func(p string) error {
		d := filepath.Dir(p)
		if d == "." || seen[d] {
			return nil
		}
		if err := parents(d); err != nil {
			return err
		}
		seen[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	for _, f := range files {
		if err := parents(f.name); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.uid, ModTime: epoch, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
			seen[f.name] = true
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
