package bpf

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestInstanceDir(t *testing.T) {
	if got, err := InstanceDir("", DefaultInstance); err != nil || got != "/sys/fs/bpf/xdplb/default" {
		t.Errorf("InstanceDir(default) = %q, %v", got, err)
	}
	if got, _ := InstanceDir("/tmp/b", "lb-1"); got != "/tmp/b/xdplb/lb-1" {
		t.Errorf("InstanceDir(/tmp/b, lb-1) = %q", got)
	}
	// No name may lead anywhere but one directory under <bpffs>/xdplb.
	for _, bad := range []string{"", ".", "..", "../..", "a/b", "/abs", ".hidden", "_build-x-1", "A", "x y", strings.Repeat("a", 33), "a\x00"} {
		dir, err := InstanceDir("/tmp/b", bad)
		if err == nil {
			t.Errorf("InstanceDir(%q) = %q, want an error", bad, dir)
		}
	}
	for _, good := range []string{"default", "lb-1", "a", "0", "x_y", strings.Repeat("a", 32)} {
		dir, err := InstanceDir("/tmp/b", good)
		if err != nil || filepath.Dir(dir) != "/tmp/b/xdplb" {
			t.Errorf("InstanceDir(%q) = %q, %v", good, dir, err)
		}
	}
}
