package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSharedKernelDeb(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDPLB_VM_KERNEL_DIR", dir)
	if _, err := sharedKernelDeb("5.4"); err == nil || !strings.Contains(err.Error(), "no linux-image-5.4.*.deb in "+dir) ||
		!strings.Contains(err.Error(), "XDPLB_VM_KERNEL_DIR") {
		t.Errorf("empty dir: %v", err)
	}
	for _, f := range []string{"linux-image-5.4.9-qemu_5.4.9-1_amd64.deb", "linux-image-5.4.286-qemu_5.4.286-1_amd64.deb",
		"linux-image-5.4.30-qemu_5.4.30-1_amd64.deb", "linux-image-5.10.1-qemu_5.10.1-1_amd64.deb"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	got, err := sharedKernelDeb("5.4")
	if err != nil || filepath.Base(got) != "linux-image-5.4.286-qemu_5.4.286-1_amd64.deb" {
		t.Errorf("sharedKernelDeb = %q, %v; want the newest 5.4", got, err)
	}
	for spec, want := range map[string]bool{"5.4": true, "linux-5.4": true, "5.10": false, "bullseye": false} {
		if _, ok := sharedSeries(spec); ok != want {
			t.Errorf("sharedSeries(%q) = %v", spec, ok)
		}
	}
}

// The repository is found from a directory inside it, and the kernels are
// looked for beside it.
func TestSharedKernelDirs(t *testing.T) {
	t.Setenv("XDPLB_VM_KERNEL_DIR", "")
	dirs, err := sharedKernelDirs()
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs(filepath.Join("..", "..", ".."))
	if want := filepath.Join(filepath.Dir(repo), "shared", "kernels"); len(dirs) == 0 || dirs[0] != want {
		t.Errorf("sharedKernelDirs = %q, want %q first", dirs, want)
	}
}

// A clone of a repository on this machine finds the kernels beside the
// repository it was cloned from.
func TestSharedKernelDirsOfAClone(t *testing.T) {
	t.Setenv("XDPLB_VM_KERNEL_DIR", "")
	top := t.TempDir()
	upstream := filepath.Join(top, "work", "main")
	kernels := filepath.Join(top, "work", "shared", "kernels")
	os.MkdirAll(kernels, 0o755)
	deb := filepath.Join(kernels, "linux-image-5.4.286-qemu_5.4.286-1_amd64.deb")
	os.WriteFile(deb, nil, 0o644)
	git := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %q: %v %s", args, err, out)
		}
	}
	git("init", "-q", upstream)
	os.WriteFile(filepath.Join(upstream, "go.mod"), []byte("module "+module+"\n"), 0o644)
	git("-C", upstream, "add", "go.mod")
	git("-C", upstream, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
	clone := filepath.Join(top, "ci", "clone")
	git("clone", "-q", upstream, clone)
	t.Chdir(clone)
	got, err := sharedKernelDeb("5.4")
	if err != nil || got != deb {
		t.Errorf("sharedKernelDeb in a clone = %q, %v; want %q", got, err, deb)
	}
}
