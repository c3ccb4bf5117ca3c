package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/apt"
	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/deb"
)

// This file: the guest's userland. By default a guest does not boot on the
// host's root file system but on a Debian root file system assembled from
// the packages of a release (bullseye: glibc 2.31, the generation of Ubuntu
// 20.04, where xdplb runs), so the tests see the target's libc, iproute2,
// keepalived and dpkg rather than the host's.

// hostUserland names the other mode: the host's own root file system,
// shared read-only (for a test that needs the host's tools).
const hostUserland = "host"

// defaultUserland is the Debian release guests boot by default.
const defaultUserland = "bullseye"

// userlandPackages are installed on top of the release's "required"
// packages (what debootstrap's minbase installs), with their dependencies:
// what the tests and the installed .deb run in the guest.
var userlandPackages = []string{
	"iproute2", "ethtool", "keepalived", "bpftool", "busybox", "procps", "kmod",
	"iputils-ping", "netbase", "util-linux", "mount",
}

// userlandFormat changes whenever the assembly does, so that a cached
// userland of an older recipe is assembled again.
const userlandFormat = 2

// Userland is a root file system in the cache:
//
//	userlands/<release>-<id>/userland.json   what it is (this struct)
//	userlands/<release>-<id>/root/           the file system the guest mounts
//	userlands/<release>-<id>/lock            flock(2)ed, shared, by each VM using it
//	userlands/.assemble-*                    one being assembled, renamed into place when whole
//
// id hashes the recipe and the package versions: a refresh that finds newer
// packages makes a new userland, and removes superseded ones no VM uses.
type Userland struct {
	Dist        string    `json:"dist"`
	ID          string    `json:"id"`
	Recipe      string    `json:"recipe"`
	Packages    []string  `json:"packages"` // name=version
	AssembledAt time.Time `json:"assembled_at"`
	Dir         string    `json:"-"`
}

// Root is the file system the guest boots.
func (u *Userland) Root() string { return filepath.Join(u.Dir, "root") }

func (u *Userland) String() string {
	return fmt.Sprintf("%s (%d packages, %s)", u.Dist, len(u.Packages), u.ID)
}

// recipe is what the userland of dist is made of, before versions.
func recipe(dist string) string {
	return fmt.Sprintf("format %d; %s; required + %s", userlandFormat, dist, strings.Join(userlandPackages, " "))
}

// use takes a shared lock on the userland for as long as a VM runs on it,
// so that no other vmrun removes it meanwhile.
func (u *Userland) use() (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(u.Dir, "lock"), os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func loadUserland(dir string) *Userland {
	b, err := os.ReadFile(filepath.Join(dir, "userland.json"))
	if err != nil {
		return nil
	}
	u := &Userland{}
	if json.Unmarshal(b, u) != nil || u.ID == "" {
		return nil
	}
	u.Dir = dir
	if _, err := os.Stat(filepath.Join(u.Root(), "usr", "bin", "ldd")); err != nil {
		return nil
	}
	return u
}

// userlands are the whole userlands of dist in the cache, newest first.
func (c *cache) userlands(dist string) []*Userland {
	entries, _ := os.ReadDir(c.path("userlands"))
	var us []*Userland
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), dist+"-") {
			continue
		}
		if u := loadUserland(c.path("userlands", e.Name())); u != nil && u.Dist == dist {
			us = append(us, u)
		}
	}
	slices.SortFunc(us, func(a, b *Userland) int { return b.AssembledAt.Compare(a.AssembledAt) })
	return us
}

// userland returns the root file system of Debian release spec from the
// cache, assembling it first when the cache has none of the current recipe
// (or refresh asks the archive for newer packages).
func (c *cache) userland(ctx context.Context, spec string, refresh bool) (*Userland, error) {
	d, ok := findDist(spec)
	if !ok {
		return nil, fmt.Errorf("userland %q: name a Debian release (%s) or %q", spec, distNames(), hostUserland)
	}
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	want := recipe(d.name)
	if !refresh {
		for _, u := range c.userlands(d.name) {
			if u.Recipe == want {
				return u, nil
			}
		}
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("assembling the %s userland needs root (its files keep their owners): run as root, or -userland host", d.name)
	}
	// Fresh lists: the archive drops superseded versions (security updates).
	root, err := c.aptRoot(ctx, d, true)
	if err != nil {
		return nil, err
	}
	required, err := root.Required(ctx)
	if err != nil {
		return nil, err
	}
	pkgs, err := root.Resolve(ctx, append(required, userlandPackages...)...)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range pkgs {
		names = append(names, p.String())
	}
	slices.Sort(names)
	sum := sha256.Sum256([]byte(want + "\n" + strings.Join(names, "\n")))
	id := hex.EncodeToString(sum[:6])
	dir := c.path("userlands", d.name+"-"+id)
	if u := loadUserland(dir); u != nil {
		return u, nil
	}
	c.env.logf("assembling the %s userland from %d packages (required + %s)", d.name, len(pkgs), strings.Join(userlandPackages, " "))
	start := time.Now()
	u := &Userland{Dist: d.name, ID: id, Recipe: want, Packages: names}
	if err := c.assemble(ctx, root, pkgs, u, dir); err != nil {
		return nil, err
	}
	c.env.logf("assembled %s in %s", u, time.Since(start).Round(time.Second))
	c.pruneUserlands(u)
	return u, nil
}

// pruneUserlands removes the other userlands of u's release that no VM is
// using.
func (c *cache) pruneUserlands(u *Userland) {
	for _, old := range c.userlands(u.Dist) {
		if old.Dir == u.Dir {
			continue
		}
		f, err := os.OpenFile(filepath.Join(old.Dir, "lock"), os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			c.env.logf("removing superseded userland %s", old)
			os.RemoveAll(old.Dir)
		}
		f.Close()
	}
}

// assemble downloads pkgs and unpacks them into a new directory renamed to
// dir when whole, with what their maintainer scripts would have made that
// the tests need (see configureRoot).
func (c *cache) assemble(ctx context.Context, root *apt.Root, pkgs []apt.Package, u *Userland, dir string) error {
	parent := c.path("userlands")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".assemble-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	debs := filepath.Join(tmp, "debs")
	rootfs := filepath.Join(tmp, "root")
	for _, d := range []string{debs, rootfs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	files, err := root.DownloadAll(ctx, pkgs, debs, c.env.logf)
	if err != nil {
		return err
	}
	// Versions may have changed (a package missing from the mirror).
	u.Packages = u.Packages[:0]
	for _, p := range pkgs {
		u.Packages = append(u.Packages, p.String())
	}
	slices.Sort(u.Packages)
	var status []string
	for i, p := range pkgs {
		paths, err := deb.Unpack(files[i], rootfs)
		if err != nil {
			return fmt.Errorf("unpack %s: %w", p, err)
		}
		ctl, err := deb.ControlFiles(files[i])
		if err != nil {
			return err
		}
		entry, infoName := dpkgEntry(ctl["control"], p.Arch)
		status = append(status, entry)
		info := map[string]string{"list": strings.Join(dpkgList(paths), "\n") + "\n"}
		for _, name := range []string{"md5sums", "conffiles"} {
			if c, ok := ctl[name]; ok {
				info[name] = c
			}
		}
		for ext, content := range info {
			if err := writeRootFile(rootfs, "var/lib/dpkg/info/"+infoName+"."+ext, content, 0o644); err != nil {
				return err
			}
		}
	}
	// The multiarch layout of the database (pkg:arch.list for Multi-Arch: same).
	if err := writeRootFile(rootfs, "var/lib/dpkg/info/format", "1\n", 0o644); err != nil {
		return err
	}
	if err := writeRootFile(rootfs, "var/lib/dpkg/status", strings.Join(status, "\n"), 0o644); err != nil {
		return err
	}
	if err := configureRoot(rootfs); err != nil {
		return fmt.Errorf("configure the %s userland: %w", u.Dist, err)
	}
	if err := os.RemoveAll(debs); err != nil {
		return err
	}
	u.AssembledAt = time.Now().UTC()
	b, err := json.MarshalIndent(u, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "userland.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	u.Dir = dir
	return nil
}

// dpkgEntry turns a package's control file into its entry in dpkg's
// status file (installed), and names its files in dpkg's info directory
// (pkg, or pkg:arch for a Multi-Arch: same package, as dpkg does).
func dpkgEntry(control, arch string) (entry, infoName string) {
	f := deb.ParseControl(control)
	infoName = f["Package"]
	if f["Multi-Arch"] == "same" {
		infoName += ":" + arch
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(control, "\n"), "\n") {
		b.WriteString(line + "\n")
		if strings.HasPrefix(line, "Package: ") {
			b.WriteString("Status: install ok installed\n")
		}
	}
	return b.String(), infoName
}

// dpkgList turns Unpack's paths into a dpkg file list ("/." first, no
// trailing slashes, each path once).
func dpkgList(paths []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		p = strings.TrimSuffix(p, "/")
		if p == "" {
			p = "/."
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func writeRootFile(rootfs, name, content string, mode os.FileMode) error {
	p := filepath.Join(rootfs, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), mode)
}

// configureRoot does, in the unpacked root file system, what the
// maintainer scripts of its packages would have done and the tests rely
// on, without running any of them: the users and groups (base-passwd), the
// dynamic linker's cache (libc-bin's ldconfig, run chrooted: it is the
// release's own static binary), the awk alternative (mawk), the zone (UTC),
// host names, /etc/mtab, dpkg's database directories, and the mount points
// the guest's init uses.
func configureRoot(rootfs string) error {
	r := func(p string) string { return filepath.Join(rootfs, p) }
	for _, pair := range [][2]string{
		{"usr/share/base-passwd/passwd.master", "etc/passwd"},
		{"usr/share/base-passwd/group.master", "etc/group"},
	} {
		if _, err := os.Stat(r(pair[1])); err == nil {
			continue
		}
		b, err := os.ReadFile(r(pair[0]))
		if err != nil {
			return fmt.Errorf("base-passwd: %w", err)
		}
		if err := writeRootFile(rootfs, pair[1], string(b), 0o644); err != nil {
			return err
		}
	}
	if _, err := os.Stat(r("etc/nsswitch.conf")); err != nil {
		if b, err := os.ReadFile(r("usr/share/base-files/nsswitch.conf")); err == nil {
			os.WriteFile(r("etc/nsswitch.conf"), b, 0o644)
		}
	}
	files := map[string]string{
		"etc/hostname": "xdplb-vm\n",
		"etc/hosts":    "127.0.0.1\tlocalhost xdplb-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	}
	for name, content := range files {
		if err := writeRootFile(rootfs, name, content, 0o644); err != nil {
			return err
		}
	}
	links := map[string]string{
		"etc/mtab":      "../proc/self/mounts",
		"etc/localtime": "/usr/share/zoneinfo/Etc/UTC",
		"var/run":       "/run",
		"var/lock":      "/run/lock",
	}
	if _, err := os.Stat(r("usr/bin/mawk")); err == nil {
		links["etc/alternatives/awk"] = "/usr/bin/mawk"
		links["usr/bin/awk"] = "/etc/alternatives/awk"
	}
	for name, target := range links {
		if st, err := os.Lstat(r(name)); err == nil && st.IsDir() {
			continue // the package made a directory: keep it
		}
		os.Remove(r(name))
		if err := os.MkdirAll(filepath.Dir(r(name)), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(target, r(name)); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"run", 0o755}, {"root", 0o700},
		{"tmp", 0o777 | os.ModeSticky}, {"var/tmp", 0o777 | os.ModeSticky}, {"lib/modules", 0o755},
		{"var/lib/dpkg/updates", 0o755}, {"var/lib/dpkg/triggers", 0o755}, {"var/lib/dpkg/alternatives", 0o755},
	} {
		if err := os.MkdirAll(r(d.name), 0o755); err != nil {
			return err
		}
		if err := os.Chmod(r(d.name), d.mode); err != nil {
			return err
		}
	}
	for _, name := range []string{"var/lib/dpkg/available", "var/lib/dpkg/diversions", "var/lib/dpkg/statoverride"} {
		if _, err := os.Stat(r(name)); err != nil {
			if err := os.WriteFile(r(name), nil, 0o644); err != nil {
				return err
			}
		}
	}
	out, err := exec.Command("chroot", rootfs, "/sbin/ldconfig").CombinedOutput()
	if err != nil {
		return fmt.Errorf("chroot ldconfig: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(r("etc/ld.so.cache")); err != nil {
		return errors.New("ldconfig wrote no /etc/ld.so.cache")
	}
	return nil
}
