package daemon

import (
	"runtime"

	"github.com/xdplb/xdplb/bpf"
)

// BuildInfo is what `xdplb version` prints, and the labels of the
// xdplb_build_info metric.
type BuildInfo struct {
	Version   string   `json:"version"`
	GoVersion string   `json:"go_version"`
	OS        string   `json:"os"`
	Arch      string   `json:"arch"`
	Hooks     []string `json:"hooks"`
}

// Build describes this binary.
func Build() BuildInfo {
	hooks := make([]string, len(bpf.Hooks))
	for i, h := range bpf.Hooks {
		hooks[i] = string(h)
	}
	return BuildInfo{Version: Version, GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, Hooks: hooks}
}
