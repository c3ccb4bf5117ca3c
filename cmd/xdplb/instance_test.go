package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/testenv"
)

// badInstances are instance names that would leave <bpffs>/xdplb/ if they
// were joined into a path.
var badInstances = []string{"", ".", "..", "../..", "../../..", "a/../..", "/etc", "x/y", ".hidden", "-rf"}

// TestEveryCommandValidatesTheInstance (issue 10 §3): every subcommand
// refuses an instance name that could leave <bpffs>/xdplb/, before it
// touches anything.
func TestEveryCommandValidatesTheInstance(t *testing.T) {
	env := map[string]string{"XDPLB_BPFFS": t.TempDir()}
	conf := filepath.Join(t.TempDir(), "xdplb.yaml")
	os.WriteFile(conf, []byte("iface: eth1\nvip: 10.10.10.100\nbackends: [10.10.10.50]\n"), 0o600)
	for _, name := range badInstances {
		for _, cmd := range [][]string{
			{"status"}, {"check"}, {"check", "--backends"}, {"flows"}, {"detach"}, {"backend", "drain", "10.10.10.50"},
			{"run", "--config", conf},
		} {
			args := append([]string{cmd[0], "--instance", name}, cmd[1:]...)
			_, stderr, code := runCLI(t, env, args...)
			if code == 0 || !strings.Contains(stderr, "want 1-32 characters") {
				t.Errorf("xdplb %q: exit %d, %q; want the instance name refused", args, code, stderr)
			}
		}
	}
}

// TestDetachBadInstanceDeletesNothing (issue 10 §3): `detach --instance`
// with "", ".." or "../.." on a private bpffs under /tmp fails with a clear
// error and removes nothing: not a canary file beside the mount (which
// "../.." once deleted with the whole of /tmp), not a pinned object in the
// bpffs root ("..") or of another instance ("").
func TestDetachBadInstanceDeletesNothing(t *testing.T) {
	testenv.RequireRoot(t, "mounts bpffs and pins a map")
	top, err := os.MkdirTemp("/tmp", "xdplb-instance-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(top)
	canary := filepath.Join(top, "canary")
	if err := os.WriteFile(canary, []byte("still here"), 0o600); err != nil {
		t.Fatal(err)
	}
	bpffs := filepath.Join(top, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	unrelated := filepath.Join(bpffs, "unrelated")
	other := filepath.Join(bpffs, "xdplb", "other")
	if err := os.MkdirAll(other, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{unrelated, filepath.Join(other, "flows")} {
		c, _ := m.Clone()
		if err := c.Pin(p); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	for _, name := range badInstances {
		stdout, stderr, code := runCLI(t, nil, "detach", "--bpffs", bpffs, "--instance", name)
		if code != 1 || !strings.Contains(stderr, "want 1-32 characters") || strings.Contains(stdout, "detached") {
			t.Errorf("detach --instance %q: exit %d, stdout %q, stderr %q; want a refusal", name, code, stdout, stderr)
		}
		for _, p := range []string{canary, unrelated, filepath.Join(other, "flows")} {
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("detach --instance %q removed %s: %v", name, p, err)
			}
		}
	}
}
