package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Every program says which build it is: module version, the commit it was
// built from (when built from a git checkout) and the Go toolchain.
func TestVersion(t *testing.T) {
	e := &Env{t: t}
	// go build stamps the commit only in a checkout whose .git is a
	// directory (a clone, as in CI; not a git worktree, whose .git is a file).
	commit := ""
	if fi, err := os.Stat(filepath.Join(moduleRoot(), ".git")); err == nil && fi.IsDir() {
		git := exec.Command("git", "rev-parse", "HEAD")
		git.Dir = moduleRoot()
		if out, err := git.Output(); err == nil {
			commit = strings.TrimSpace(string(out))
		}
	}
	for _, bin := range []string{"fosterd", "foster", "foster-agent"} {
		out := strings.TrimSpace(e.MustRun(bin, "--version").Stdout)
		f := strings.Fields(out)
		if len(f) < 6 || f[0] != bin || f[2] != "commit" || !strings.Contains(out, " "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH) {
			t.Errorf("%s --version = %q, want \"%s VERSION commit COMMIT ... %s %s/%s\"", bin, out, bin, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			continue
		}
		if commit != "" && !strings.HasPrefix(f[3], commit) {
			t.Errorf("%s --version = %q, want commit %s (git rev-parse HEAD)", bin, out, commit)
		}
	}
}
