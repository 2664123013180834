package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFrom(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/foster-ota/foster", Version: "v0.0.0-20261206011825-52fcd4a12345+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "arm64"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "52fcd4a1234567890abcdef0123456789abcdef0"},
			{Key: "vcs.time", Value: "2026-12-06T01:18:25Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"stamped, modified tree", stamped, true,
			"fosterd v0.0.0-20261206011825-52fcd4a12345+dirty commit 52fcd4a1234567890abcdef0123456789abcdef0-modified (2026-12-06T01:18:25Z) go1.26.8 linux/arm64"},
		{"built with -buildvcs=false", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "amd64"}}}, true,
			"fosterd (devel) commit unknown go1.26.8 linux/amd64"},
		{"no build info", nil, false,
			"fosterd (devel) commit unknown " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := From("fosterd", tt.bi, tt.ok).String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

// The test binary itself has build information: Read must find the
// toolchain that built it.
func TestReadRunningBinary(t *testing.T) {
	in := Read("buildinfo.test")
	if in.GoVersion != runtime.Version() || in.Program != "buildinfo.test" || in.Version == "" {
		t.Fatalf("Read() = %+v", in)
	}
}
