// Package buildinfo tells which build of a Foster program is running: the
// module version, the VCS commit it was built from and the Go toolchain, as
// the Go linker recorded them (runtime/debug.ReadBuildInfo). Every program's
// --version prints it and fosterd logs it at start, so an operator can say
// exactly what runs on a host or a device.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is what one binary knows about its own build.
type Info struct {
	// Program is the command's name (fosterd, foster, foster-agent).
	Program string
	// Version is the main module's version: a release tag (v1.2.3), a
	// pseudo-version derived from the VCS (v0.0.0-20261206011825-52fcd4a12345,
	// with +dirty when the tree had changes), or "(devel)" when the build
	// recorded none.
	Version string
	// Commit is the VCS revision ("" when the build did not stamp it:
	// go build -buildvcs=false, or a tree without its .git).
	Commit string
	// CommitTime is the commit's time, RFC 3339 ("" when unknown).
	CommitTime string
	// Modified is true when the tree had uncommitted changes.
	Modified bool
	// GoVersion is the toolchain that built the binary (go1.26.8).
	GoVersion string
	// Platform is GOOS/GOARCH.
	Platform string
}

// Read returns the running binary's build information.
func Read(program string) Info {
	bi, ok := debug.ReadBuildInfo()
	return From(program, bi, ok)
}

// From extracts Info from what debug.ReadBuildInfo returned.
func From(program string, bi *debug.BuildInfo, ok bool) Info {
	in := Info{Program: program, Version: "(devel)", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if !ok || bi == nil {
		return in
	}
	if bi.Main.Version != "" {
		in.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		in.GoVersion = bi.GoVersion
	}
	var goos, goarch string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.time":
			in.CommitTime = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		case "GOOS":
			goos = s.Value
		case "GOARCH":
			goarch = s.Value
		}
	}
	if goos != "" && goarch != "" {
		in.Platform = goos + "/" + goarch
	}
	return in
}

// String is the one line --version prints:
//
//	fosterd v0.0.0-20261206011825-52fcd4a12345 commit 52fcd4a1234567890abcdef (2026-12-06T01:18:25Z) go1.26.8 linux/amd64
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s commit ", i.Program, i.Version)
	if i.Commit == "" {
		b.WriteString("unknown")
	} else {
		b.WriteString(i.Commit)
		if i.Modified {
			b.WriteString("-modified")
		}
	}
	if i.CommitTime != "" {
		fmt.Fprintf(&b, " (%s)", i.CommitTime)
	}
	fmt.Fprintf(&b, " %s %s", i.GoVersion, i.Platform)
	return b.String()
}

// LogAttrs are the fields fosterd logs at start.
func (i Info) LogAttrs() []any {
	return []any{"version", i.Version, "commit", i.Commit, "modified", i.Modified, "go", i.GoVersion}
}
