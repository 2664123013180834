package install

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/internal/fetch"
)

var ctx = context.Background()

func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\nset -e\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// Fake U-Boot and GRUB tools that keep their environment in $ENVFILE, with
// the real tools' interfaces (fw_setenv -s SCRIPT, grub-editenv FILE set/unset/list).
func fakeTools(t *testing.T) (dir, envFile string) {
	t.Helper()
	dir = t.TempDir()
	envFile = filepath.Join(dir, "env")
	os.WriteFile(envFile, nil, 0o644)
	t.Setenv("ENVFILE", envFile)
	script(t, dir, "fw_printenv", `cat "$ENVFILE"`+"\n")
	script(t, dir, "fw_setenv", `[ "$1" = "-s" ] || { echo "want -s" >&2; exit 2; }
while read -r k v; do
  grep -v "^$k=" "$ENVFILE" > "$ENVFILE.tmp" || true
  if [ -n "$v" ]; then echo "$k=$v" >> "$ENVFILE.tmp"; fi
  mv "$ENVFILE.tmp" "$ENVFILE"
done < "$2"
`)
	script(t, dir, "grub-editenv", `f="$1"; cmd="$2"; shift 2
case "$cmd" in
list) cat "$f" ;;
set) for kv in "$@"; do k="${kv%%=*}"; grep -v "^$k=" "$f" > "$f.tmp" || true; echo "$kv" >> "$f.tmp"; mv "$f.tmp" "$f"; done ;;
unset) for k in "$@"; do grep -v "^$k=" "$f" > "$f.tmp" || true; mv "$f.tmp" "$f"; done ;;
*) exit 2 ;;
esac
`)
	return dir, envFile
}

func TestBootEnvBackends(t *testing.T) {
	tools, envFile := fakeTools(t)
	backends := map[string]EnvConfig{
		"file":  {Backend: "file", File: filepath.Join(t.TempDir(), "env")},
		"uboot": {Backend: "uboot", Printenv: []string{filepath.Join(tools, "fw_printenv")}, Setenv: []string{filepath.Join(tools, "fw_setenv")}},
		"grub":  {Backend: "grub", Editenv: filepath.Join(tools, "grub-editenv"), File: envFile},
	}
	for name, cfg := range backends {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(envFile, []byte("bootdelay=3\n"), 0o644)
			env, err := NewBootEnv(cfg, Command{Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := env.Set(ctx, map[string]string{"boot_part": "b", "upgrade_available": "1", "bootcount": "0"}); err != nil {
				t.Fatal(err)
			}
			if err := env.Set(ctx, map[string]string{"bootcount": "2", "upgrade_available": ""}); err != nil {
				t.Fatal(err)
			}
			got, err := env.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got["boot_part"] != "b" || got["bootcount"] != "2" {
				t.Fatalf("env %v", got)
			}
			if _, ok := got["upgrade_available"]; ok {
				t.Fatalf("not unset: %v", got)
			}
			if name != "file" && got["bootdelay"] != "3" {
				t.Fatalf("other variables lost: %v", got)
			}
			if err := env.Set(ctx, map[string]string{"bad name": "x"}); err == nil {
				t.Fatal("accepted a name with a space")
			}
			if err := env.Set(ctx, map[string]string{"x": "a\nb"}); err == nil {
				t.Fatal("accepted a newline")
			}
		})
	}
	if _, err := NewBootEnv(EnvConfig{Backend: "lilo"}, Command{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v", err)
	}
}

func TestBootEnvToolFailureIsReported(t *testing.T) {
	dir := t.TempDir()
	fail := script(t, dir, "fw_setenv", "echo 'Cannot access MTD device' >&2; exit 1\n")
	env, _ := NewBootEnv(EnvConfig{Backend: "uboot", Printenv: []string{"true"}, Setenv: []string{fail}}, Command{})
	err := env.Set(ctx, map[string]string{"a": "1"})
	if err == nil || !strings.Contains(err.Error(), "Cannot access MTD device") {
		t.Fatalf("err = %v", err)
	}
}

func TestBootedSlot(t *testing.T) {
	dir := t.TempDir()
	cmdline := filepath.Join(dir, "cmdline")
	slots := map[string]string{"a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3"}
	tests := []struct {
		cmdline, key, want string
		ok                 bool
	}{
		{"console=ttyS0 foster.slot=b root=/dev/mmcblk0p2", "", "b", true},
		{"console=ttyS0 root=/dev/mmcblk0p3 rootwait", "", "b", true},
		{"rauc.slot=a quiet", "rauc.slot", "a", true},
		{"foster.slot=c", "", "", false},
		{"root=/dev/sda1", "", "", false},
	}
	for _, tt := range tests {
		os.WriteFile(cmdline, []byte(tt.cmdline+"\n"), 0o644)
		got, err := BootedSlot{Cmdline: cmdline, Key: tt.key, Slots: slots}.Detect()
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("%q: %q %v", tt.cmdline, got, err)
		}
	}
}

func expect(data []byte) fetch.Expected {
	s := sha256.Sum256(data)
	return fetch.Expected{Name: "m/1/fw", Length: int64(len(data)), SHA256: s[:]}
}

func TestABInstaller(t *testing.T) {
	dir := t.TempDir()
	cfg := ABConfig{
		Slots:     map[string]string{"a": filepath.Join(dir, "a"), "b": filepath.Join(dir, "b")},
		Env:       EnvConfig{Backend: "file", File: filepath.Join(dir, "env")},
		Cmdline:   filepath.Join(dir, "cmdline"),
		BootLimit: 3,
	}
	for _, p := range cfg.Slots {
		os.WriteFile(p, []byte("image"), 0o644)
	}
	os.WriteFile(cfg.Cmdline, []byte("foster.slot=a"), 0o644)
	os.WriteFile(cfg.Env.File, []byte("boot_part=b\nupgrade_available=1\n"), 0o644) // a stale trial
	ab, err := NewAB(cfg, Command{})
	if err != nil {
		t.Fatal(err)
	}
	dest, err := ab.Prepare(ctx)
	if err != nil || dest.Path != cfg.Slots["b"] || !dest.InPlace || dest.From != "a" || dest.To != "b" {
		t.Fatalf("prepare: %+v %v", dest, err)
	}
	env := ab.env.(*FileEnv)
	if e, _ := env.Get(ctx); e["boot_part"] != "a" || e["upgrade_available"] != "0" {
		t.Fatalf("stale trial still armed while b is overwritten: %v", e)
	}
	plan := Plan{Image: dest.Path, From: "a", To: "b"}
	for range 2 { // idempotent
		if err := ab.Install(ctx, plan); err != nil {
			t.Fatal(err)
		}
	}
	if e, _ := env.Get(ctx); e["boot_part"] != "b" || e["upgrade_available"] != "1" || e["bootcount"] != "0" || e["bootlimit"] != "3" {
		t.Fatalf("trial not armed: %v", e)
	}
	env.Set(ctx, map[string]string{"bootcount": "2"})
	if err := ab.Install(ctx, plan); err != nil { // repeated after a crash: keeps counting
		t.Fatal(err)
	}
	if st, _ := ab.Status(ctx); !st.Trial || st.BootCount != 2 || st.BootLimit != 3 || st.Overflow() {
		t.Fatalf("status %+v", st)
	}
	if r, _ := ab.Running(ctx, plan); r != RunningOld {
		t.Fatalf("running %v before the reboot", r)
	}
	os.WriteFile(cfg.Cmdline, []byte("root="+cfg.Slots["b"]), 0o644)
	if r, _ := ab.Running(ctx, plan); r != RunningNew {
		t.Fatalf("running %v after the reboot", r)
	}
	if err := ab.Commit(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if e, _ := env.Get(ctx); e["boot_part"] != "b" || e["upgrade_available"] != "0" || e["bootcount"] != "0" {
		t.Fatalf("not committed: %v", e)
	}
	if err := ab.Rollback(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if e, _ := env.Get(ctx); e["boot_part"] != "a" || e["upgrade_available"] != "0" {
		t.Fatalf("not rolled back: %v", e)
	}
	if _, err := NewAB(ABConfig{Slots: map[string]string{"a": "x"}, Env: cfg.Env}, Command{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("one slot accepted: %v", err)
	}
}

func TestFileInstallerKeepsPreviousUntilCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app")
	os.WriteFile(path, []byte("old"), 0o755)
	f, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dest, _ := f.Prepare(ctx)
	os.WriteFile(dest.Path, []byte("new"), 0o600)
	plan := Plan{Image: dest.Path, Want: expect([]byte("new"))}
	for range 2 { // idempotent: the second run finds the rename done
		if err := f.Install(ctx, plan); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if r, _ := f.Running(ctx, plan); r != RunningNew {
		t.Fatal(r)
	}
	for range 2 {
		if err := f.Rollback(ctx, plan); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("rollback left %q", b)
	}

	// Install again and commit: .previous goes away.
	dest, _ = f.Prepare(ctx)
	os.WriteFile(dest.Path, []byte("new"), 0o600)
	if err := f.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".previous"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(".previous kept after commit")
	}

	// No file before: rollback removes the new one.
	fresh, _ := NewFile(filepath.Join(dir, "fresh"))
	dest, _ = fresh.Prepare(ctx)
	os.WriteFile(dest.Path, []byte("new"), 0o600)
	fresh.Install(ctx, Plan{Image: dest.Path, Want: expect([]byte("new"))})
	fresh.Rollback(ctx, Plan{Image: dest.Path, Want: expect([]byte("new"))})
	if _, err := os.Stat(fresh.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("new file kept after rollback")
	}
}

// rauc: the verified bundle keeps its name (RAUC wants .raucb), is handed to
// `rauc install`, and the booted slot comes from `rauc status`.
func TestRAUCInstaller(t *testing.T) {
	bin := t.TempDir()
	log := filepath.Join(bin, "log")
	t.Setenv("RAUCLOG", log)
	t.Setenv("RAUCBOOTED", "A")
	script(t, bin, "rauc", `echo "$*" >> "$RAUCLOG"
case "$1 $2" in
"status --output-format=json") echo "{\"compatible\":\"edge-gw\",\"booted\":\"$RAUCBOOTED\"}" ;;
esac
`)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	in, err := NewCommand("rauc", CommandConfig{}, filepath.Join(t.TempDir(), "dl"), Command{})
	if err != nil {
		t.Fatal(err)
	}
	dest, err := in.Prepare(ctx)
	if err != nil || dest.From != "A" {
		t.Fatalf("%+v %v", dest, err)
	}
	dest = FinalName(dest, "edge-gw/2.0.0/update.raucb")
	if filepath.Base(dest.Final) != "update.raucb" {
		t.Fatalf("final %s", dest.Final)
	}
	os.WriteFile(dest.Final, []byte("bundle"), 0o600)
	plan := Plan{Image: dest.Final, From: "A"}
	if err := in.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	if r, _ := in.Running(ctx, plan); r != RunningOld {
		t.Fatalf("running %v before reboot", r)
	}
	t.Setenv("RAUCBOOTED", "B")
	if r, _ := in.Running(ctx, plan); r != RunningNew {
		t.Fatalf("running %v after reboot", r)
	}
	in.Commit(ctx, plan)
	in.Rollback(ctx, plan)
	in.Cleanup(plan)
	b, _ := os.ReadFile(log)
	for _, want := range []string{"install " + dest.Final, "status mark-good", "status mark-bad"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("rauc was not called with %q:\n%s", want, b)
		}
	}
	if _, err := os.Stat(dest.Final); !errors.Is(err, os.ErrNotExist) {
		t.Error("bundle kept after cleanup")
	}
}

func TestSWUpdateAndScriptInstallers(t *testing.T) {
	bin := t.TempDir()
	log := filepath.Join(bin, "log")
	t.Setenv("TOOLLOG", log)
	script(t, bin, "swupdate", `echo "swupdate $*" >> "$TOOLLOG"`+"\n")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	sw, err := NewCommand("swupdate", CommandConfig{}, t.TempDir(), Command{})
	if err != nil || !sw.Reboots() {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "update.swu")
	os.WriteFile(img, []byte("swu"), 0o600)
	if err := sw.Install(ctx, Plan{Image: img}); err != nil {
		t.Fatal(err)
	}

	// script: the user's command, with the image path substituted and in the environment.
	sc, err := NewCommand("script", CommandConfig{
		Install:  []string{"/bin/sh", "-c", `echo "install $1 $FOSTER_VERSION" >> "$TOOLLOG"`, "sh", "{image}"},
		Rollback: []string{"/bin/sh", "-c", `echo rollback >> "$TOOLLOG"`},
	}, t.TempDir(), Command{})
	if err != nil || sc.Reboots() {
		t.Fatal(err)
	}
	if err := sc.Install(ctx, Plan{Image: img, Version: "2.0.0"}); err != nil {
		t.Fatal(err)
	}
	sc.Rollback(ctx, Plan{Image: img})
	b, _ := os.ReadFile(log)
	for _, want := range []string{"swupdate -i " + img, "install " + img + " 2.0.0", "rollback"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("missing %q in:\n%s", want, b)
		}
	}

	failing, _ := NewCommand("script", CommandConfig{Install: []string{"/bin/sh", "-c", "echo disk full >&2; exit 3"}}, t.TempDir(), Command{})
	if err := failing.Install(ctx, Plan{Image: img}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v", err)
	}
	slow, _ := NewCommand("script", CommandConfig{Install: []string{"sleep", "10"}}, t.TempDir(), Command{Timeout: 100 * time.Millisecond})
	if err := slow.Install(ctx, Plan{Image: img}); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err = %v", err)
	}
	if _, err := NewCommand("script", CommandConfig{}, t.TempDir(), Command{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("script without command: %v", err)
	}
}

// fw_printenv / grub-editenv output and the kernel command line are parsed
// on every run: any bytes give variables or an error, never a panic, and a
// variable the agent writes reads back.
func FuzzParseEnv(f *testing.F) {
	f.Add([]byte("boot_part=a\nupgrade_available=1\nbootcount=2\n"))
	f.Add([]byte("# GRUB Environment Block\nboot_part=b\n#####"))
	f.Add([]byte("bootcmd=run distro_bootcmd; echo =x\n\x00\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		vars := parseEnv(b)
		for k := range vars {
			if k == "" || strings.ContainsAny(k, " \t=") {
				t.Fatalf("bad name %q", k)
			}
		}
		dir := t.TempDir()
		cmdline := filepath.Join(dir, "cmdline")
		os.WriteFile(cmdline, b, 0o644)
		BootedSlot{Cmdline: cmdline, Slots: map[string]string{"a": "/dev/a", "b": "/dev/b"}}.Detect()
	})
}
