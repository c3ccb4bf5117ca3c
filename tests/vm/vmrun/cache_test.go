package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/deb/debtest"
)

// testCache is a cache in a temporary directory. The mirrors point nowhere,
// so anything that would reach for the archive fails instead.
func testCache(t *testing.T) (*cache, *bytes.Buffer) {
	t.Helper()
	t.Setenv("XDPLB_VM_MIRROR", "http://archive.invalid/debian")
	t.Setenv("XDPLB_VM_SECURITY_MIRROR", "http://archive.invalid/debian-security")
	t.Setenv("XDPLB_VM_LOGDIR", "")
	t.Setenv("XDPLB_VM_BOOT", "")
	var log bytes.Buffer
	return &cache{env: &env{stdout: &log, stderr: &log, cacheDir: filepath.Join(t.TempDir(), "cache")}}, &log
}

// buildKernelDeb makes a linux-image package of release holding files.
func buildKernelDeb(t *testing.T, release, version string, files map[string]string) string {
	return debtest.Build(t, "linux-image-"+release, version, files)
}

func TestCacheAddDeb(t *testing.T) {
	if _, err := exec.LookPath("depmod"); err != nil {
		if _, err := exec.LookPath("busybox"); err != nil {
			t.Skip("no depmod (apt-get install kmod)")
		}
	}
	const rel = "1.2.3-test-amd64"
	mods := "lib/modules/" + rel + "/"
	deb := buildKernelDeb(t, rel, "1.2.3-1", map[string]string{
		"boot/vmlinuz-" + rel:                           "MZ not really a kernel",
		"boot/System.map-" + rel:                        "skipped",
		mods + "kernel/fs/9p/9p.ko":                     "kept",
		mods + "kernel/net/9p/9pnet_virtio.ko":          "kept",
		mods + "kernel/drivers/gpu/drm/drm.ko":          "skipped",
		mods + "kernel/drivers/net/ethernet/e1000.ko":   "skipped",
		mods + "modules.builtin":                        "kernel/drivers/virtio/virtio_pci.ko\n",
		"usr/share/doc/linux-image-" + rel + "/changes": "skipped",
	})
	c, log := testCache(t)
	before := time.Now().UTC()
	k, err := c.resolve(context.Background(), deb, false)
	if err != nil {
		t.Fatal(err)
	}
	want := &Kernel{Release: rel, Package: "linux-image-" + rel, Version: "1.2.3-1", FetchedAt: k.FetchedAt, Dir: c.path("kernels", rel)}
	if !reflect.DeepEqual(k, want) {
		t.Errorf("kernel = %+v\nwant %+v", k, want)
	}
	if k.FetchedAt.Before(before) {
		t.Errorf("FetchedAt %v before the fetch (%v)", k.FetchedAt, before)
	}
	if got := c.cached(rel); got == nil || !got.FetchedAt.Equal(k.FetchedAt) || got.Package != k.Package {
		t.Errorf("cached(%q) = %+v, want the kernel just added", rel, got)
	}
	var files []string
	filepath.WalkDir(c.path("kernels"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(c.path("kernels"), p)
			files = append(files, rel)
		}
		return nil
	})
	for _, f := range []string{
		rel + "/kernel.json", rel + "/boot/vmlinuz-" + rel,
		rel + "/" + mods + "kernel/fs/9p/9p.ko", rel + "/" + mods + "kernel/net/9p/9pnet_virtio.ko",
		rel + "/" + mods + "modules.builtin", rel + "/" + mods + "modules.dep",
	} {
		if !slices.Contains(files, f) {
			t.Errorf("no %s in the cache", f)
		}
	}
	for _, f := range files {
		if strings.Contains(f, "System.map") || strings.Contains(f, "drm") || strings.Contains(f, "e1000") ||
			strings.Contains(f, "usr/share") || strings.HasPrefix(f, ".unpack-") {
			t.Errorf("%s in the cache", f)
		}
	}
	// The fake bzImage holds no vmlinux: boot the bzImage, say so.
	if _, err := os.Stat(k.Vmlinux()); err == nil {
		t.Error("a vmlinux came out of a fake bzImage")
	}
	if got := bootImage(k); got != k.Vmlinuz() {
		t.Errorf("bootImage = %s, want %s", got, k.Vmlinuz())
	}
	if !strings.Contains(log.String(), "will boot the bzImage") {
		t.Errorf("log does not say the bzImage will boot:\n%s", log)
	}
	if _, err := os.Stat(deb); err != nil {
		t.Errorf("the named .deb is gone: %v", err)
	}

	// The same package again comes from the cache; -refresh unpacks it
	// again, replacing the kernel.
	again, err := c.resolve(context.Background(), deb, false)
	if err != nil {
		t.Fatal(err)
	}
	if !again.FetchedAt.Equal(k.FetchedAt) || again.Dir != k.Dir {
		t.Errorf("second resolve: %+v, want the cached %+v", again, k)
	}
	k2, err := c.resolve(context.Background(), deb, true)
	if err != nil {
		t.Fatal(err)
	}
	if !k2.FetchedAt.After(k.FetchedAt) || k2.Dir != k.Dir {
		t.Errorf("resolve with refresh: %+v, want a fresh unpack into %s", k2, k.Dir)
	}
	// Another version of the package is unpacked over it.
	newer := buildKernelDeb(t, rel, "1.2.3-2", map[string]string{"boot/vmlinuz-" + rel: "MZ", mods + "modules.builtin": ""})
	k3, err := c.resolve(context.Background(), newer, false)
	if err != nil {
		t.Fatal(err)
	}
	if k3.Version != "1.2.3-2" || k3.Dir != k.Dir {
		t.Errorf("resolve of version 1.2.3-2: %+v", k3)
	}
}

func TestCacheAddNotAKernel(t *testing.T) {
	deb := buildKernelDeb(t, "9.9", "1", map[string]string{"usr/share/doc/x/README": "no kernel here"})
	c, _ := testCache(t)
	_, err := c.resolve(context.Background(), deb, false)
	if err == nil || !strings.Contains(err.Error(), "is it a linux-image package?") {
		t.Fatalf("err = %v, want one saying there is no kernel", err)
	}
	if entries, _ := os.ReadDir(c.path("kernels")); len(entries) != 0 {
		t.Errorf("kernels/ holds %v after a failed unpack", entries)
	}
}

// putKernel writes a kernel into the cache by hand, as add leaves it.
func putKernel(t *testing.T, c *cache, k Kernel, withImage bool) {
	t.Helper()
	k.Dir = c.path("kernels", k.Release)
	if err := os.MkdirAll(filepath.Join(k.Dir, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := k.save(); err != nil {
		t.Fatal(err)
	}
	if withImage {
		if err := os.WriteFile(k.Vmlinuz(), []byte("MZ"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCacheLookup serves kernels from the cache alone: the mirrors point
// nowhere, so a look-up that reached for the archive would fail.
func TestCacheLookup(t *testing.T) {
	c, _ := testCache(t)
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	putKernel(t, c, Kernel{Release: "5.10.0-40-amd64", Package: "linux-image-5.10.0-40-amd64", Version: "5.10.250-1", Dist: "bullseye", FetchedAt: t0}, true)
	putKernel(t, c, Kernel{Release: "5.10.0-46-amd64", Package: "linux-image-5.10.0-46-amd64", Version: "5.10.262-1", Dist: "bullseye", FetchedAt: t0.Add(time.Hour)}, true)
	putKernel(t, c, Kernel{Release: "6.1.0-56-amd64", Dist: "bookworm", FetchedAt: t0}, false) // no image: not whole
	putKernel(t, c, Kernel{Release: "local", Package: "linux-image-local", FetchedAt: t0.Add(2 * time.Hour)}, true)
	// A kernel.json that names another release, and a kernel being unpacked.
	putKernel(t, c, Kernel{Release: "other", FetchedAt: t0}, true)
	if err := os.Rename(c.path("kernels", "other"), c.path("kernels", "renamed")); err != nil {
		t.Fatal(err)
	}
	putKernel(t, c, Kernel{Release: ".unpack-1", FetchedAt: t0}, true)

	var releases []string
	for _, k := range c.kernels() {
		releases = append(releases, k.Release)
	}
	if want := []string{"5.10.0-40-amd64", "5.10.0-46-amd64", "local"}; !reflect.DeepEqual(releases, want) {
		t.Errorf("kernels = %q, want %q", releases, want)
	}
	if k := c.cachedDist("bookworm"); k != nil {
		t.Errorf("cachedDist(bookworm) = %v, want none (no image)", k)
	}
	for _, bad := range []string{"", "../kernels/local", ".unpack-1", "renamed"} {
		if k := c.cached(bad); k != nil {
			t.Errorf("cached(%q) = %v, want nil", bad, k)
		}
	}
	for spec, want := range map[string]string{
		"bullseye":                    "5.10.0-46-amd64", // the newest fetched for the release
		"5.10":                        "5.10.0-46-amd64",
		"debian11":                    "5.10.0-46-amd64",
		"5.10.0-40-amd64":             "5.10.0-40-amd64",
		"linux-image-5.10.0-40-amd64": "5.10.0-40-amd64",
		"local":                       "local",
	} {
		k, err := c.resolve(context.Background(), spec, false)
		if err != nil {
			t.Errorf("resolve(%q): %v", spec, err)
			continue
		}
		if k.Release != want || k.Dir != c.path("kernels", want) {
			t.Errorf("resolve(%q) = %s in %s, want %s", spec, k.Release, k.Dir, want)
		}
	}
	if _, err := os.Stat(c.path("apt")); err == nil {
		t.Error("a look-up served from the cache made an apt root")
	}
	if _, err := os.Stat(c.path("lock")); err != nil {
		t.Errorf("resolve took no lock file: %v", err)
	}
}

func TestLogFile(t *testing.T) {
	c, _ := testCache(t)
	dir := c.path("logs")
	os.MkdirAll(dir, 0o755)
	for i := range 105 {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("20260101T0000%02d.000-run-x.log", i)), nil, 0o644)
	}
	got := c.logFile("matrix", "5.10.0-46-amd64")
	if filepath.Dir(got) != dir || !strings.HasSuffix(got, "-matrix-5.10.0-46-amd64.log") {
		t.Errorf("logFile = %s", got)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(left) != 100 || filepath.Base(left[0]) != "20260101T000005.000-run-x.log" {
		t.Errorf("%d logs left, first %s; want the newest 100", len(left), filepath.Base(left[0]))
	}
	t.Setenv("XDPLB_VM_LOGDIR", filepath.Join(t.TempDir(), "elsewhere"))
	if got := c.logFile("run", "x"); !strings.HasPrefix(got, os.Getenv("XDPLB_VM_LOGDIR")+"/") {
		t.Errorf("logFile with XDPLB_VM_LOGDIR = %s", got)
	}
}
