package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// No Docker daemon runs here, so deploy/Dockerfile is not built in the
// tests; this keeps it saying what the OCI image says: final stage on an
// image without a shell, the same user, entrypoint, command, volume, port
// and health check, and no RUN after the build stage.
func TestDockerfileMatchesImage(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // instructions per stage, continuation lines joined
	var cur string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cur = cur+line, ""
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("instruction before FROM: %q", line)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], line)
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stages", len(stages))
	}
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final[0], "FROM gcr.io/distroless/static") && final[0] != "FROM scratch" {
		t.Errorf("final stage %q: want distroless/static or scratch (no shell)", final[0])
	}
	get := func(kw string) string {
		for _, ins := range final {
			if rest, ok := strings.CutPrefix(ins, kw+" "); ok {
				return strings.TrimSpace(rest)
			}
		}
		t.Errorf("final stage has no %s", kw)
		return ""
	}
	execForm := func(kw string) []string {
		var v []string
		if err := json.Unmarshal([]byte(get(kw)), &v); err != nil {
			t.Errorf("%s is not in exec form (JSON array): %v", kw, err)
		}
		return v
	}
	for _, ins := range final {
		if strings.HasPrefix(ins, "RUN ") {
			t.Errorf("final stage runs %q: it has no shell to run it with", ins)
		}
	}
	if u := get("USER"); u != "65532:65532" {
		t.Errorf("USER %q, want 65532:65532", u)
	}
	if e := execForm("ENTRYPOINT"); !slices.Equal(e, []string{Entrypoint}) {
		t.Errorf("ENTRYPOINT %q, want [%s]", e, Entrypoint)
	}
	if c := execForm("CMD"); !slices.Equal(c, []string{"--data-dir", DataDir, "--listen", ":8443", "--log-format", "json"}) {
		t.Errorf("CMD %q differs from the OCI image's", c)
	}
	if v := get("VOLUME"); !strings.Contains(v, `"`+DataDir+`"`) {
		t.Errorf("VOLUME %s, want %s", v, DataDir)
	}
	if p := get("EXPOSE"); p != Port {
		t.Errorf("EXPOSE %s, want %s", p, Port)
	}
	if h := get("HEALTHCHECK"); !strings.Contains(h, "--probe") {
		t.Errorf("HEALTHCHECK %s, want fosterd --probe", h)
	}
	if strings.Contains(string(b), "--init") {
		t.Errorf("the Dockerfile passes --init: an empty volume must not become a new CA")
	}
}
