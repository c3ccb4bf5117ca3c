package main

import (
	"runtime/debug"

	"github.com/xdplb/xdplb/control/daemon"
)

// unsetVersion is daemon.Version when no -ldflags -X set it.
const unsetVersion = "dev"

func init() {
	bi, ok := debug.ReadBuildInfo()
	daemon.Version = resolveVersion(daemon.Version, bi, ok)
}

// resolveVersion says which version this binary is: the one the build set
// through -ldflags -X (the Makefile's `git describe`); else the module's
// version from the build info (`go install github.com/xdplb/xdplb/cmd/xdplb@v1.2.3`
// records v1.2.3, or a pseudo-version); else the VCS revision go build
// stamped (-buildvcs); else "dev".
func resolveVersion(set string, bi *debug.BuildInfo, ok bool) string {
	if set != "" && set != unsetVersion {
		return set
	}
	if !ok || bi == nil {
		return unsetVersion
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return unsetVersion
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
