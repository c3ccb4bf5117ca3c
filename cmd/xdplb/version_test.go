package main

import (
	"runtime/debug"
	"testing"
)

func TestResolveVersion(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name string
		set  string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"ldflags win", "v1.2.0-3-gabcdef0", &debug.BuildInfo{Main: debug.Module{Version: "v9.9.9"}}, true, "v1.2.0-3-gabcdef0"},
		{"go install of a tag", "dev", &debug.BuildInfo{Main: debug.Module{Version: "v1.3.0"}}, true, "v1.3.0"},
		{"go install of a commit", "dev", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261130081200-08cbaa1f00aa"}}, true, "v0.0.0-20261130081200-08cbaa1f00aa"},
		{"go build in a checkout", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("08cbaa1f00aa11223344", "false")}, true, "08cbaa1f00aa"},
		{"go build in a dirty checkout", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("08cbaa1f00aa11223344", "true")}, true, "08cbaa1f00aa-dirty"},
		{"nothing known", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true, "dev"},
		{"no build info", "", nil, false, "dev"},
	}
	for _, tc := range tests {
		if got := resolveVersion(tc.set, tc.bi, tc.ok); got != tc.want {
			t.Errorf("%s: resolveVersion = %q, want %q", tc.name, got, tc.want)
		}
	}
}
