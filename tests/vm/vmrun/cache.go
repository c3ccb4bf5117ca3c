package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/apt"
	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/vmlinux"
)

// cache keeps what vmrun fetched under one directory ($XDPLB_VM_CACHE,
// default /var/cache/xdplb-vm), so that later runs work offline:
//
//	lock                    flock(2)ed by a vmrun process while it resolves a kernel
//	apt/<release>/          the private apt root of a Debian release (package apt)
//	debs/                   downloaded .deb files, deleted once unpacked
//	kernels/<uname -r>/     one unpacked kernel (Kernel): kernel.json,
//	                        boot/vmlinuz-*, boot/vmlinux-*, lib/modules/<uname -r>/
//	kernels/.unpack-*       a kernel being unpacked, renamed into place when whole
//	logs/                   console logs, the last 100 ($XDPLB_VM_LOGDIR overrides)
//
// It keeps one kernel per Debian release: fetching a newer one removes the
// one it supersedes.
type cache struct {
	env *env
}

func (c *cache) path(elem ...string) string {
	return filepath.Join(append([]string{c.env.cacheDir}, elem...)...)
}

// lock serialises changes to the cache between concurrent vmrun processes.
func (c *cache) lock() (unlock func(), err error) {
	if err := os.MkdirAll(c.env.cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir (set XDPLB_VM_CACHE to a writable dir): %w", err)
	}
	f, err := os.OpenFile(c.path("lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cache: %w", err)
	}
	return func() { f.Close() }, nil
}

// resolve turns a kernel spec into an unpacked kernel: a .deb file (or a
// series of the kernels beside the repository, see shared.go) is served
// from the cache when the same package and version are there, and unpacked
// otherwise or when refresh asks; a Debian release is served from the
// cache unless refresh asks the archive for a newer kernel; a release or
// package name is served from the cache, or else looked for in every
// release's archive.
func (c *cache) resolve(ctx context.Context, spec string, refresh bool) (*Kernel, error) {
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	if series, ok := sharedSeries(spec); ok {
		file, err := sharedKernelDeb(series)
		if err != nil {
			return nil, err
		}
		spec = file
	}
	if strings.HasSuffix(spec, ".deb") {
		if !refresh {
			pkg, version := debIdentity(spec)
			for _, k := range c.kernels() {
				if k.Dist == "" && k.Package == pkg && k.Version == version && version != "" {
					return k, nil
				}
			}
		}
		return c.add(spec, "", "", "")
	}
	if d, ok := findDist(spec); ok {
		if !refresh {
			if k := c.cachedDist(d.name); k != nil {
				return k, nil
			}
		}
		root, err := c.aptRoot(ctx, d, true)
		if err != nil {
			return nil, err
		}
		pkg, err := kernelPackage(ctx, root)
		if err != nil {
			return nil, err
		}
		return c.download(ctx, root, pkg)
	}

	release := strings.TrimPrefix(spec, "linux-image-")
	if k := c.cached(release); k != nil {
		return k, nil
	}
	var errs []error
	for _, d := range dists {
		root, err := c.aptRoot(ctx, d, refresh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pkg := "linux-image-" + release
		if _, err := root.Show(ctx, pkg); err != nil {
			continue
		}
		return c.download(ctx, root, pkg)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("kernel %q: %w", spec, errors.Join(errs...))
	}
	return nil, fmt.Errorf("kernel %q: no package linux-image-%s in %s; name a Debian release (bullseye, bookworm, trixie) or a .deb file", spec, release, distNames())
}

// kernels are the whole kernels in the cache.
func (c *cache) kernels() []*Kernel {
	entries, _ := os.ReadDir(c.path("kernels"))
	var ks []*Kernel
	for _, ent := range entries {
		if k := c.cached(ent.Name()); k != nil {
			ks = append(ks, k)
		}
	}
	return ks
}

// cached is the kernel of that release in the cache, or nil.
func (c *cache) cached(release string) *Kernel {
	if release == "" || strings.ContainsAny(release, "/") || strings.HasPrefix(release, ".") {
		return nil
	}
	return loadKernel(c.path("kernels", release), release)
}

// cachedDist is the newest cached kernel fetched for Debian release d.
func (c *cache) cachedDist(d string) *Kernel {
	var best *Kernel
	for _, k := range c.kernels() {
		if k.Dist == d && (best == nil || k.FetchedAt.After(best.FetchedAt)) {
			best = k
		}
	}
	return best
}

// aptRoot opens the private apt root of d in the cache, and updates its
// package lists if asked to or if it has none.
func (c *cache) aptRoot(ctx context.Context, d dist, update bool) (*apt.Root, error) {
	mirror, security, err := mirrors()
	if err != nil {
		return nil, err
	}
	root, err := apt.Open(c.path("apt", d.name), d.name, d.sources(mirror, security))
	if err != nil {
		return nil, err
	}
	if update || !root.HasLists() {
		c.env.logf("updating the private apt lists for %s", d.name)
		if err := root.Update(ctx); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// download brings the candidate version of the linux-image package pkg of
// root's release into the cache, unless the cache has that version already.
func (c *cache) download(ctx context.Context, root *apt.Root, pkg string) (*Kernel, error) {
	fields, err := root.Show(ctx, pkg)
	if err != nil {
		return nil, err
	}
	version := fields["Version"]
	release := strings.TrimPrefix(pkg, "linux-image-")
	if k := c.cached(release); k != nil && k.Version == version {
		if k.Dist != root.Name {
			k.Dist = root.Name
			_ = k.save()
		}
		return k, nil
	}
	debs := c.path("debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	c.env.logf("downloading %s %s (%s)", pkg, version, root.Name)
	file, err := root.Download(ctx, pkg, version, debs)
	if err != nil {
		return nil, err
	}
	k, err := c.add(file, pkg, version, root.Name)
	if err != nil {
		return nil, err
	}
	// Keep one kernel per Debian release.
	for _, old := range c.kernels() {
		if old.Dist == k.Dist && old.Release != k.Release {
			c.env.logf("removing superseded kernel %s from the cache", old)
			os.RemoveAll(old.Dir)
		}
	}
	// The unpacked kernel is the cache; the .deb is not needed any more.
	for _, f := range apt.Downloaded(debs, pkg) {
		os.Remove(f)
	}
	return k, nil
}

// add unpacks the linux-image package file into kernels/<release>: the image
// and the modules (keepPath), depmod's indexes, the vmlinux inside the image
// and kernel.json. It builds the kernel in kernels/.unpack-* and renames it
// into place, replacing a kernel of the same release. An empty pkg is read,
// with the version, from the package.
func (c *cache) add(file, pkg, version, dist string) (*Kernel, error) {
	kernels := c.path("kernels")
	if err := os.MkdirAll(kernels, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(kernels, ".unpack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	release, err := extractKernel(file, tmp)
	if err != nil {
		return nil, fmt.Errorf("unpack %s: %w", file, err)
	}
	if err := depmod(tmp, release); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", file, err)
	}
	k := &Kernel{Release: release, Package: pkg, Version: version, Dist: dist, Dir: tmp}
	if err := vmlinux.Extract(k.Vmlinuz(), k.Vmlinux()); err != nil {
		c.env.logf("%v: will boot the bzImage (slower under TCG)", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if k.Package == "" {
		k.Package, k.Version = debIdentity(file)
	}
	k.FetchedAt = time.Now().UTC()
	if err := k.save(); err != nil {
		return nil, err
	}
	dst := filepath.Join(kernels, release)
	if err := os.RemoveAll(dst); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return nil, err
	}
	k.Dir = dst
	return k, nil
}

// logFile names a new console log and prunes old ones.
func (c *cache) logFile(kind, name string) string {
	dir := os.Getenv("XDPLB_VM_LOGDIR")
	if dir == "" {
		dir = c.path("logs")
	}
	os.MkdirAll(dir, 0o755) // an error shows when the log is created
	if old, _ := filepath.Glob(filepath.Join(dir, "*.log")); len(old) > 100 {
		sort.Strings(old)
		for _, f := range old[:len(old)-100] {
			os.Remove(f)
		}
	}
	stamp := time.Now().UTC().Format("20060102T150405.000")
	return filepath.Join(dir, fmt.Sprintf("%s-%s-%s.log", stamp, kind, name))
}
