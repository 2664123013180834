package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	stubOnce sync.Once
	stubPath string
	stubErr  error
)

// TestMain removes the stub binary stubBinaries builds.
func TestMain(m *testing.M) {
	code := m.Run()
	if stubPath != "" {
		os.RemoveAll(filepath.Dir(stubPath))
	}
	os.Exit(code)
}

// stubBinaries puts a tiny static Go program under each of Programs' names
// in a fresh directory: the image is about packaging, and building the real
// fosterd here would cost minutes (make image does that). The stub is built
// once, in seconds.
func stubBinaries(t *testing.T) string {
	t.Helper()
	stubOnce.Do(func() {
		dir, err := os.MkdirTemp("", "foster-image-stub-")
		if err != nil {
			stubErr = err
			return
		}
		src := filepath.Join(dir, "stub.go")
		if stubErr = os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"stub\") }\n"), 0o644); stubErr != nil {
			return
		}
		stubPath = filepath.Join(dir, "stub")
		cmd := exec.Command("go", "build", "-o", stubPath, src)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GO111MODULE=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			stubErr = fmt.Errorf("building a stub binary: %v\n%s", err, out)
		}
	})
	if stubErr != nil {
		t.Fatal(stubErr)
	}
	b, err := os.ReadFile(stubPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, p := range Programs {
		if err := os.WriteFile(filepath.Join(bin, p), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func buildImage(t *testing.T, o options) (v1.Image, options) {
	t.Helper()
	o.out = filepath.Join(t.TempDir(), "oci")
	o.tar = filepath.Join(t.TempDir(), "fosterd.tar")
	if o.tag == "" {
		o.tag = "foster/fosterd:test"
	}
	if _, err := build(o); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(o.out)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "foster/fosterd:test" {
		t.Fatalf("index.json: %+v, want one image named foster/fosterd:test", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, o
}

type entry struct {
	mode     int64
	uid, gid int
	dir      bool
}

func filesOf(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]entry{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			files[path.Clean("/"+h.Name)] = entry{mode: h.Mode, uid: h.Uid, gid: h.Gid, dir: h.Typeflag == tar.TypeDir}
		}
		rc.Close()
	}
	return files
}

func TestImageRunsFosterdAsNonRootWithoutShell(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(bundle, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644)
	img, o := buildImage(t, options{binDir: stubBinaries(t), caBundle: bundle})

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("User = %q, want 65532:65532 (never root)", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/fosterd"}) {
		t.Errorf("Entrypoint = %q, want [/usr/local/bin/fosterd]", c.Entrypoint)
	}
	if !slices.Contains(c.Cmd, DataDir) || slices.Contains(c.Cmd, "--init") {
		t.Errorf("Cmd = %q, want --data-dir %s and no --init (an empty volume must not become a new CA)", c.Cmd, DataDir)
	}
	if _, ok := c.Volumes[DataDir]; !ok {
		t.Errorf("Volumes = %v, want %s", c.Volumes, DataDir)
	}
	if c.Healthcheck == nil || !slices.Contains(c.Healthcheck.Test, "--probe") || c.Healthcheck.Test[1] != Entrypoint {
		t.Errorf("Healthcheck = %+v, want fosterd --probe (there is no shell or curl)", c.Healthcheck)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}

	files := filesOf(t, img)
	for name, e := range files {
		base := path.Base(name)
		if slices.Contains([]string{"sh", "bash", "ash", "dash", "busybox", "su", "sudo", "apk", "apt", "dpkg"}, base) {
			t.Errorf("image holds %s: no shell or package manager belongs in it", name)
		}
		if e.mode&0o6000 != 0 {
			t.Errorf("%s is setuid/setgid (%o)", name, e.mode)
		}
		if strings.HasSuffix(base, ".key") || strings.Contains(name, "/keys") {
			t.Errorf("image holds %s: keys are never baked in", name)
		}
	}
	want := map[string]entry{
		"/usr/local/bin/fosterd":             {mode: 0o755},
		"/usr/local/bin/foster":              {mode: 0o755},
		"/etc/passwd":                        {mode: 0o644},
		"/etc/group":                         {mode: 0o644},
		"/etc/ssl/certs/ca-certificates.crt": {mode: 0o644},
		"/var/lib/foster":                    {mode: 0o700, uid: UID, gid: UID, dir: true},
		"/home/nonroot":                      {mode: 0o700, uid: UID, gid: UID, dir: true},
		"/tmp":                               {mode: 0o1777, dir: true},
	}
	for name, w := range want {
		if got, ok := files[name]; !ok || got != w {
			t.Errorf("%s: %+v (present %v), want %+v", name, got, ok, w)
		}
	}
	for name, e := range files {
		if _, ok := want[name]; !ok && !e.dir {
			t.Errorf("unexpected file %s in the image", name)
		}
	}

	// The docker-load tarball holds the same image.
	tb, err := tarball.ImageFromPath(o.tar, nil)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.ConfigName()
	d2, err := tb.ConfigName()
	if err != nil || d1 != d2 {
		t.Errorf("tarball config %v (%v), layout config %v", d2, err, d1)
	}
}

// The same binaries give the same image, byte for byte.
func TestImageIsReproducible(t *testing.T) {
	bin := stubBinaries(t)
	a, _ := buildImage(t, options{binDir: bin})
	b, _ := buildImage(t, options{binDir: bin})
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of the same binaries: %s and %s", da, db)
	}
}

func TestImageRefusesWhatCannotRun(t *testing.T) {
	bin := stubBinaries(t)
	os.WriteFile(filepath.Join(bin, "foster"), []byte("#!/bin/sh\necho not a static binary\n"), 0o755)
	_, err := build(options{binDir: bin, out: filepath.Join(t.TempDir(), "oci"), tag: "foster/fosterd:test"})
	if err == nil || !strings.Contains(err.Error(), "not a Linux executable") {
		t.Fatalf("build with a script as foster: %v, want a refusal", err)
	}
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "keep"), nil, 0o644)
	_, err = build(options{binDir: stubBinaries(t), out: out, tag: "foster/fosterd:test"})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("build into a non-empty directory: %v, want a refusal", err)
	}
}
