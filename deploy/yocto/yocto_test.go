// Package yocto holds meta-foster, a Yocto/OpenEmbedded layer that puts
// foster-agent into a device image (docs/YOCTO.md), and the test that checks
// what can be checked without bitbake: the agent accepts the layer's config,
// every file the recipe installs exists, and the unit, drop-in, health check
// and RAUC example agree with each other.
package yocto

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/foster-ota/foster/client"
)

const recipeDir = "meta-foster/recipes-foster/foster-agent"

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The agent refuses a config it does not understand (unknown fields, an
// installer it lacks): the layer's config must be one it accepts, and must
// select the RAUC installer the recipe depends on.
func TestLayerConfigIsAcceptedByTheAgent(t *testing.T) {
	cfg, err := client.LoadFileConfig(filepath.Join(recipeDir, "files", "config.json"))
	if err != nil {
		t.Fatalf("foster-agent refuses the layer's config.json: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("layer config.json: %v", err)
	}
	if cfg.Installer != "rauc" {
		t.Fatalf("layer config.json selects installer %q; the recipe RDEPENDS on rauc", cfg.Installer)
	}
	if _, err := cfg.BuildInstaller(t.TempDir()); err != nil {
		t.Fatalf("building the layer's installer: %v", err)
	}
	// The health check it names is the one the recipe installs.
	if got := cfg.HealthCheck.Command; len(got) == 0 || got[0] != "/usr/libexec/foster/health" {
		t.Fatalf("health_check.command = %v, want the recipe's /usr/libexec/foster/health", got)
	}
}

// Every file:// the recipe fetches is in the layer, every repository file it
// installs exists, and the Go package it builds is the agent.
func TestRecipeReferencesExist(t *testing.T) {
	bb := read(t, filepath.Join(recipeDir, "foster-agent_git.bb"))
	srcURI := regexp.MustCompile(`(?s)SRC_URI = "(.*?)"`).FindStringSubmatch(bb)
	if srcURI == nil {
		t.Fatal("recipe has no SRC_URI")
	}
	files := regexp.MustCompile(`file://([^ \\"]+)`).FindAllStringSubmatch(srcURI[1], -1)
	if len(files) < 3 {
		t.Fatalf("recipe fetches %d local files, want config.json, data-partition.conf, health", len(files))
	}
	for _, m := range files {
		if _, err := os.Stat(filepath.Join(recipeDir, "files", m[1])); err != nil {
			t.Errorf("recipe fetches file://%s: %v", m[1], err)
		}
	}
	repo := filepath.Join("..", "..")
	for _, m := range regexp.MustCompile(`\$\{S\}/src/\$\{GO_IMPORT\}/(\S+)`).FindAllStringSubmatch(bb, -1) {
		if _, err := os.Stat(filepath.Join(repo, m[1])); err != nil {
			t.Errorf("recipe installs %s from the repository: %v", m[1], err)
		}
	}
	if !strings.Contains(bb, `GO_INSTALL = "${GO_IMPORT}/cmd/foster-agent"`) {
		t.Error("recipe does not build cmd/foster-agent")
	}
	if _, err := os.Stat(filepath.Join(repo, "cmd", "foster-agent", "main.go")); err != nil {
		t.Errorf("GO_INSTALL names cmd/foster-agent: %v", err)
	}
	if st, err := os.Stat(filepath.Join(recipeDir, "files", "health")); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("files/health must exist and be executable: %v", err)
	}
	if out, err := exec.Command("sh", "-n", filepath.Join(recipeDir, "files", "health")).CombinedOutput(); err != nil {
		t.Errorf("files/health: sh -n: %v\n%s", err, out)
	}
}

// The drop-in moves the state to the data partition: it must reset
// ExecStart (a second ExecStart= would be an error for Type=exec), run the
// same binary as the unit, and let the agent write where it now keeps state.
func TestDropInRunsTheUnitsBinaryOnTheDataPartition(t *testing.T) {
	unit := read(t, filepath.Join("..", "systemd", "foster-agent.service"))
	drop := read(t, filepath.Join(recipeDir, "files", "data-partition.conf"))
	unitExec := directive(unit, "ExecStart")
	dropExec := directive(drop, "ExecStart")
	if len(unitExec) != 1 || len(dropExec) != 2 || dropExec[0] != "" {
		t.Fatalf("drop-in ExecStart lines %q: want an empty reset and one command (unit has %q)", dropExec, unitExec)
	}
	bin := strings.Fields(unitExec[0])[0]
	cmd := strings.Fields(dropExec[1])
	if cmd[0] != bin {
		t.Fatalf("drop-in runs %s, the unit %s", cmd[0], bin)
	}
	state := ""
	for i, a := range cmd {
		if a == "--state-dir" && i+1 < len(cmd) {
			state = cmd[i+1]
		}
	}
	if !strings.HasPrefix(state, "/data/") || cmd[len(cmd)-1] != "run" {
		t.Fatalf("drop-in command %q: want --state-dir on /data and the run command", dropExec[1])
	}
	rw := strings.Join(directive(drop, "ReadWritePaths"), " ")
	if !strings.Contains(rw, state) {
		t.Fatalf("ReadWritePaths %q does not include the state dir %s (ProtectSystem=strict would make it read-only)", rw, state)
	}
	// RAUC keeps its status on /data too (system.conf data-directory).
	conf := read(t, filepath.Join(recipeDir, "files", "system.conf.example"))
	m := regexp.MustCompile(`(?m)^data-directory=(\S+)`).FindStringSubmatch(conf)
	if m == nil || !strings.Contains(rw, m[1]) {
		t.Fatalf("RAUC's data-directory %v is not in ReadWritePaths %q", m, rw)
	}
	// The bundle is downloaded under the state dir (download_dir unset), so
	// it is on the data partition, not the read-only rootfs.
	cfg, err := client.LoadFileConfig(filepath.Join(recipeDir, "files", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if dl := cfg.RAUC.Dir; dl != "" && !strings.Contains(rw, dl) {
		t.Fatalf("the RAUC download dir %q is not in ReadWritePaths %q", dl, rw)
	}
}

// The RAUC example is the shape RAUC requires: a [system] section with
// compatible and bootloader, and two rootfs slots with devices.
func TestRAUCSystemConfExampleIsComplete(t *testing.T) {
	sections := map[string]map[string]string{}
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(read(t, filepath.Join(recipeDir, "files", "system.conf.example"))))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			cur = l[1 : len(l)-1]
			sections[cur] = map[string]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || cur == "" {
				t.Fatalf("system.conf.example: malformed line %q", l)
			}
			sections[cur][k] = v
		}
	}
	if s := sections["system"]; s["compatible"] == "" || s["bootloader"] == "" {
		t.Fatalf("[system] needs compatible and bootloader: %v", s)
	}
	for _, slot := range []string{"slot.rootfs.0", "slot.rootfs.1"} {
		if s := sections[slot]; s["device"] == "" || s["bootname"] == "" {
			t.Fatalf("[%s] needs device and bootname: %v", slot, s)
		}
	}
}

func directive(unit, key string) []string {
	var out []string
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}
