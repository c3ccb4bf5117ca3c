package main

import (
	"archive/tar"
	"bufio"
	"context"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Kernel is one unpacked kernel in the cache: the image and its modules, with
// modules.dep built by depmod.
type Kernel struct {
	Release   string    `json:"release"` // uname -r
	Package   string    `json:"package"`
	Version   string    `json:"version"`
	Dist      string    `json:"dist,omitempty"`
	FetchedAt time.Time `json:"fetched_at"`
	Dir       string    `json:"-"` // holds boot/vmlinuz-<release> and lib/modules/<release>
}

func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }
func (k *Kernel) ModDir() string  { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

func (k *Kernel) String() string {
	if k.Package == "" {
		return k.Release
	}
	return fmt.Sprintf("%s (%s %s)", k.Release, k.Package, k.Version)
}

// dist is a Debian release whose generic amd64 kernel the matrix can boot.
type dist struct {
	name     string
	suites   []string // in the main archive
	security string   // suite in the security archive
	aliases  []string
}

var dists = []dist{
	{"bullseye", []string{"bullseye"}, "bullseye-security", []string{"5.10", "debian11"}},
	{"bookworm", []string{"bookworm", "bookworm-updates"}, "bookworm-security", []string{"6.1", "debian12"}},
	{"trixie", []string{"trixie", "trixie-updates"}, "trixie-security", []string{"6.12", "debian13"}},
}

func findDist(spec string) (dist, bool) {
	for _, d := range dists {
		if spec == d.name || slices.Contains(d.aliases, spec) {
			return d, true
		}
	}
	return dist{}, false
}

// Module trees nobody needs inside a test VM, left out of the cache to keep
// it small (paths under lib/modules/<release>/kernel/).
var skipModuleTrees = []string{
	"drivers/gpu", "drivers/media", "drivers/infiniband", "drivers/scsi", "drivers/staging",
	"drivers/usb", "drivers/hid", "drivers/input", "drivers/iio", "drivers/bluetooth",
	"drivers/isdn", "drivers/mtd", "drivers/video", "drivers/hwmon", "drivers/platform",
	"drivers/mmc", "drivers/ata", "drivers/target", "drivers/thunderbolt", "drivers/edac",
	"drivers/leds", "drivers/mfd", "drivers/net/ethernet", "drivers/net/wireless",
	"drivers/net/can", "drivers/net/usb", "drivers/net/wwan", "drivers/net/ieee802154",
	"drivers/nfc", "drivers/power", "drivers/regulator", "drivers/rtc", "drivers/spi",
	"drivers/i2c", "drivers/pinctrl", "drivers/gpio", "drivers/w1", "drivers/watchdog",
	"drivers/atm", "drivers/firewire", "drivers/pcmcia", "drivers/memstick", "drivers/md",
	"drivers/nvme", "drivers/misc", "drivers/crypto", "drivers/soundwire",
	"sound", "net/wireless", "net/mac80211", "net/bluetooth", "net/nfc", "net/mac802154",
	"fs/btrfs", "fs/xfs", "fs/ocfs2", "fs/gfs2", "fs/nfs", "fs/nfsd", "fs/cifs", "fs/smb",
	"fs/ceph", "fs/ntfs3", "fs/ubifs", "fs/f2fs", "fs/jfs", "fs/reiserfs", "fs/nilfs2",
	"fs/ext4", "fs/bcachefs",
}

func cmdFetch(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	refresh := fs.Bool("refresh", false, "ask the archive for the newest kernel even if one is cached")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitUsage}
	}
	if fs.NArg() == 0 {
		return &exitError{code: exitUsage, err: errors.New("fetch: name at least one kernel (e.g. bullseye bookworm)")}
	}
	c := &cache{env: e}
	for _, spec := range fs.Args() {
		k, err := c.resolve(ctx, spec, *refresh)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s\t%s\t%s\t%s\n", spec, k.Release, k.Package+" "+k.Version, k.Dir)
	}
	return nil
}

// cache keeps private apt roots, downloaded .debs and unpacked kernels under
// one directory, so repeated runs work offline.
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

// resolve turns a kernel spec into an unpacked kernel, downloading it if the
// cache does not have it (or refresh is set and the archive has a newer one).
func (c *cache) resolve(ctx context.Context, spec string, refresh bool) (*Kernel, error) {
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	if strings.HasSuffix(spec, ".deb") {
		return c.unpack(spec, "", "")
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
		pkg, err := root.kernelPackage(ctx)
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
		if _, err := root.show(ctx, pkg); err != nil {
			continue
		}
		return c.download(ctx, root, pkg)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("kernel %q: %w", spec, errors.Join(errs...))
	}
	return nil, fmt.Errorf("kernel %q: no package linux-image-%s in %s; name a Debian release (bullseye, bookworm, trixie) or a .deb file", spec, release, distNames())
}

func distNames() string {
	var names []string
	for _, d := range dists {
		names = append(names, d.name)
	}
	return strings.Join(names, ", ")
}

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

func (c *cache) cached(release string) *Kernel {
	if release == "" || strings.ContainsAny(release, "/") || strings.HasPrefix(release, ".") {
		return nil
	}
	dir := c.path("kernels", release)
	b, err := os.ReadFile(filepath.Join(dir, "kernel.json"))
	if err != nil {
		return nil
	}
	k := &Kernel{}
	if err := json.Unmarshal(b, k); err != nil || k.Release != release {
		return nil
	}
	k.Dir = dir
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil
	}
	return k
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

func (c *cache) download(ctx context.Context, root *aptRoot, pkg string) (*Kernel, error) {
	fields, err := root.show(ctx, pkg)
	if err != nil {
		return nil, err
	}
	version := fields["Version"]
	release := strings.TrimPrefix(pkg, "linux-image-")
	if k := c.cached(release); k != nil && k.Version == version {
		if k.Dist != root.dist.name {
			k.Dist = root.dist.name
			_ = writeJSON(filepath.Join(k.Dir, "kernel.json"), k)
		}
		return k, nil
	}
	debs := c.path("debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	c.env.logf("downloading %s %s (%s)", pkg, version, root.dist.name)
	if _, err := root.apt(ctx, debs, "apt-get", "-q", "download", pkg+"="+version); err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	matches, _ := filepath.Glob(filepath.Join(debs, pkg+"_*_amd64.deb"))
	var deb string
	for _, m := range matches {
		if strings.Contains(m, "_"+strings.ReplaceAll(version, ":", "%3a")+"_") {
			deb = m
		}
	}
	if deb == "" {
		return nil, fmt.Errorf("download %s: apt-get reported success but no .deb in %s", pkg, debs)
	}
	k, err := c.unpack(deb, pkg, version)
	if err != nil {
		return nil, err
	}
	k.Dist = root.dist.name
	if err := writeJSON(filepath.Join(k.Dir, "kernel.json"), k); err != nil {
		return nil, err
	}
	// Keep one kernel and one .deb per Debian release.
	for _, old := range c.kernels() {
		if old.Dist == k.Dist && old.Release != k.Release {
			c.env.logf("removing superseded kernel %s from the cache", old)
			os.RemoveAll(old.Dir)
		}
	}
	// The unpacked kernel is the cache; the .deb is not needed any more.
	for _, m := range matches {
		os.Remove(m)
	}
	return k, nil
}

// unpack extracts the kernel image and its modules from a linux-image .deb
// into kernels/<release> and runs depmod there.
func (c *cache) unpack(deb, pkg, version string) (*Kernel, error) {
	kernels := c.path("kernels")
	if err := os.MkdirAll(kernels, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(kernels, ".unpack-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	release, err := extractKernel(deb, tmp)
	if err != nil {
		return nil, fmt.Errorf("unpack %s: %w", deb, err)
	}
	if err := depmod(tmp, release); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", deb, err)
	}
	bz := filepath.Join(tmp, "boot", "vmlinuz-"+release)
	if err := extractVmlinux(bz, filepath.Join(tmp, "boot", "vmlinux-"+release)); err != nil {
		c.env.logf("%v: will boot the bzImage (slower under TCG)", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	if pkg == "" {
		pkg, version = debIdentity(deb)
	}
	k := &Kernel{Release: release, Package: pkg, Version: version, FetchedAt: time.Now().UTC()}
	if err := writeJSON(filepath.Join(tmp, "kernel.json"), k); err != nil {
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

// debIdentity reads Package and Version from a .deb's control file.
func debIdentity(deb string) (pkg, version string) {
	out, err := exec.Command("dpkg-deb", "-f", deb, "Package", "Version").Output()
	if err != nil {
		return filepath.Base(deb), ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Package: "); ok {
			pkg = v
		}
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			version = v
		}
	}
	return pkg, version
}

// extractKernel copies boot/vmlinuz-* and the modules (less skipModuleTrees)
// from deb into dir/boot and dir/lib/modules, and returns the release.
func extractKernel(deb, dir string) (string, error) {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("run dpkg-deb (apt-get install dpkg): %w", err)
	}
	release, xerr := extractTar(out, dir)
	io.Copy(io.Discard, out)
	werr := cmd.Wait()
	if xerr != nil {
		return "", xerr
	}
	if werr != nil {
		return "", fmt.Errorf("dpkg-deb --fsys-tarfile: %w: %s", werr, strings.TrimSpace(stderr.String()))
	}
	if release == "" {
		return "", errors.New("no boot/vmlinuz-* in package: is it a linux-image package?")
	}
	if _, err := os.Stat(filepath.Join(dir, "lib", "modules", release)); err != nil {
		return "", fmt.Errorf("no modules for %s in package: %w", release, err)
	}
	return release, nil
}

func extractTar(r io.Reader, dir string) (release string, err error) {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return release, nil
		}
		if err != nil {
			return "", fmt.Errorf("read package data: %w", err)
		}
		name, keep := keepPath(h.Name)
		if !keep {
			continue
		}
		if rel, ok := strings.CutPrefix(name, "boot/vmlinuz-"); ok {
			release = rel
		}
		dst := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return "", err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return "", err
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return "", err
			}
		}
	}
}

// keepPath maps a path in a linux-image package to where it goes in the
// cache, and says whether it is wanted at all.
func keepPath(name string) (string, bool) {
	name = strings.TrimPrefix(strings.TrimPrefix(name, "./"), "/")
	name = strings.TrimPrefix(name, "usr/") // trixie ships usr/lib/modules
	if strings.HasPrefix(name, "boot/vmlinuz-") {
		return name, true
	}
	rest, ok := strings.CutPrefix(name, "lib/modules/")
	if !ok {
		return "", false
	}
	// rest = <release>/kernel/<tree>/...
	parts := strings.SplitN(rest, "/", 3)
	if len(parts) == 3 && parts[1] == "kernel" {
		for _, skip := range skipModuleTrees {
			if parts[2] == skip || strings.HasPrefix(parts[2], skip+"/") {
				return "", false
			}
		}
	}
	return name, true
}

// depmod builds modules.dep and the alias indexes for base/lib/modules/release,
// with kmod's depmod or else busybox's.
func depmod(base, release string) error {
	var cmd *exec.Cmd
	if p, err := exec.LookPath("depmod"); err == nil {
		cmd = exec.Command(p, "-b", base, release)
	} else if p, err := exec.LookPath("busybox"); err == nil {
		cmd = exec.Command(p, "depmod", "-b", base, release)
	} else {
		return errors.New("depmod not found: run tests/vm/deps.sh (apt-get install kmod)")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("depmod %s: %w: %s", release, err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(filepath.Join(base, "lib", "modules", release, "modules.dep")); err != nil {
		return fmt.Errorf("depmod %s wrote no modules.dep: %w", release, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// aptRoot is a private apt configuration and state for one Debian release,
// used only to download kernel packages: nothing is installed on the host.
type aptRoot struct {
	dir  string
	dist dist
}

func (c *cache) aptRoot(ctx context.Context, d dist, update bool) (*aptRoot, error) {
	r := &aptRoot{dir: c.path("apt", d.name), dist: d}
	for _, sub := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(r.dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create private apt root: %w", err)
		}
	}
	status := filepath.Join(r.dir, "state", "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return nil, err
		}
	}
	mirror, security, err := hostMirrors()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "sources.list"), []byte(sourcesList(d, mirror, security)), 0o644); err != nil {
		return nil, err
	}
	lists, _ := filepath.Glob(filepath.Join(r.dir, "state", "lists", "*Packages*"))
	if update || len(lists) == 0 {
		c.env.logf("updating the private apt lists for %s", d.name)
		if _, err := r.apt(ctx, "", "apt-get", "-q", "update"); err != nil {
			return nil, fmt.Errorf("apt-get update for %s (private root %s): %w", d.name, r.dir, err)
		}
	}
	return r, nil
}

func sourcesList(d dist, mirror, security string) string {
	keyring := "/usr/share/keyrings/debian-archive-keyring.gpg"
	opt := ""
	if _, err := os.Stat(keyring); err == nil {
		opt = "[signed-by=" + keyring + "] "
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by tests/vm/vmrun: %s kernels only\n", d.name)
	for _, s := range d.suites {
		fmt.Fprintf(&b, "deb %s%s %s main\n", opt, mirror, s)
	}
	if security != "" && d.security != "" {
		fmt.Fprintf(&b, "deb %s%s %s main\n", opt, security, d.security)
	}
	return b.String()
}

func (r *aptRoot) opts() []string {
	o := func(kv string) []string { return []string{"-o", kv} }
	var args []string
	for _, kv := range []string{
		"Dir::Etc::SourceList=" + filepath.Join(r.dir, "sources.list"),
		"Dir::Etc::SourceParts=" + filepath.Join(r.dir, "sources.list.d"),
		"Dir::Etc::Preferences=" + filepath.Join(r.dir, "preferences"),
		"Dir::Etc::PreferencesParts=" + filepath.Join(r.dir, "preferences.d"),
		"Dir::State=" + filepath.Join(r.dir, "state"),
		"Dir::State::status=" + filepath.Join(r.dir, "state", "status"),
		"Dir::Cache=" + filepath.Join(r.dir, "cache"),
		"APT::Architecture=amd64",
		"Acquire::Languages=none",
		"APT::Sandbox::User=root",
	} {
		args = append(args, o(kv)...)
	}
	return args
}

// apt runs apt-get or apt-cache against the private root, in dir if set.
func (r *aptRoot) apt(ctx context.Context, dir, tool string, args ...string) (string, error) {
	full := append(r.opts(), args...)
	cmd := exec.CommandContext(ctx, tool, full...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	var out, stderr strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return out.String(), nil
}

// show returns the candidate version's control fields of pkg.
func (r *aptRoot) show(ctx context.Context, pkg string) (map[string]string, error) {
	out, err := r.apt(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return nil, err
	}
	fields := parseControl(out)
	if fields["Package"] != pkg {
		return nil, fmt.Errorf("apt-cache show %s: no such package in %s", pkg, r.dist.name)
	}
	return fields, nil
}

// kernelPackage is the versioned package that linux-image-amd64 points to.
func (r *aptRoot) kernelPackage(ctx context.Context) (string, error) {
	meta, err := r.show(ctx, "linux-image-amd64")
	if err != nil {
		return "", err
	}
	pkg := kernelDep(meta["Depends"])
	if pkg == "" {
		return "", fmt.Errorf("linux-image-amd64 in %s depends on no kernel image: %q", r.dist.name, meta["Depends"])
	}
	return pkg, nil
}

// kernelDep picks the generic kernel image out of a Depends field such as
// "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
func kernelDep(depends string) string {
	for _, alt := range strings.FieldsFunc(depends, func(r rune) bool { return r == ',' || r == '|' }) {
		name, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
		if strings.HasPrefix(name, "linux-image-") && strings.HasSuffix(name, "-amd64") && !strings.Contains(name, "cloud") && !strings.Contains(name, "-rt-") {
			return name
		}
	}
	return ""
}

// parseControl reads the first stanza of Debian control data.
func parseControl(s string) map[string]string {
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}

// hostMirrors finds the Debian archive and security archive the host's apt
// uses, so the private roots go where the host's apt goes (XDPLB_VM_MIRROR and
// XDPLB_VM_SECURITY_MIRROR override).
func hostMirrors() (mirror, security string, err error) {
	mirror, security = os.Getenv("XDPLB_VM_MIRROR"), os.Getenv("XDPLB_VM_SECURITY_MIRROR")
	if mirror == "" || security == "" {
		var files []string
		files = append(files, "/etc/apt/sources.list")
		more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
		files = append(files, more...)
		var uris []string
		for _, f := range files {
			if !strings.HasSuffix(f, ".list") && !strings.HasSuffix(f, ".sources") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			uris = append(uris, aptURIs(string(b), strings.HasSuffix(f, ".sources"))...)
		}
		m, s := pickMirrors(uris)
		if mirror == "" {
			mirror = m
		}
		if security == "" {
			security = s
		}
	}
	if mirror == "" {
		return "", "", errors.New("no Debian archive in /etc/apt/sources.list{,.d}: set XDPLB_VM_MIRROR to a Debian mirror URI (…/debian)")
	}
	return mirror, security, nil
}

// aptURIs lists the URIs of the deb (binary) sources in a sources.list
// (one-line format) or a .sources (deb822) file.
func aptURIs(text string, deb822 bool) []string {
	var uris []string
	if deb822 {
		for _, stanza := range strings.Split(text, "\n\n") {
			f := parseControl(stanza)
			if f["Enabled"] == "no" || (f["Types"] != "" && !slices.Contains(strings.Fields(f["Types"]), "deb")) {
				continue
			}
			uris = append(uris, strings.Fields(f["URIs"])...)
		}
		return uris
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		i := 1
		if strings.HasPrefix(fields[1], "[") {
			for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
				i++
			}
			i++
		}
		if i < len(fields) {
			uris = append(uris, fields[i])
		}
	}
	return uris
}

// pickMirrors takes the first URI ending in /debian as the archive and the
// first ending in /debian-security as the security archive; without the
// latter it guesses the security archive beside the archive.
func pickMirrors(uris []string) (mirror, security string) {
	for _, u := range uris {
		u = strings.TrimSuffix(u, "/")
		switch {
		case strings.HasSuffix(u, "/debian-security") && security == "":
			security = u
		case strings.HasSuffix(u, "/debian") && mirror == "":
			mirror = u
		}
	}
	if security == "" && mirror != "" {
		security = mirror + "-security"
	}
	return mirror, security
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// bootImage is the file qemu should boot for k. Under TCG, decompressing the
// kernel takes seconds of emulated time, so the cache keeps the uncompressed
// vmlinux (an ELF with a PVH entry point, which qemu boots directly) next to
// the bzImage; XDPLB_VM_BOOT=bzimage boots the bzImage instead.
func bootImage(k *Kernel) string {
	if os.Getenv("XDPLB_VM_BOOT") == "bzimage" {
		return k.Vmlinuz()
	}
	vmlinux := filepath.Join(k.Dir, "boot", "vmlinux-"+k.Release)
	if _, err := os.Stat(vmlinux); err == nil {
		return vmlinux
	}
	if err := extractVmlinux(k.Vmlinuz(), vmlinux); err != nil {
		return k.Vmlinuz()
	}
	return vmlinux
}

// Magic numbers of the compressors a bzImage payload may use, and the tool
// that undoes each.
var payloadFormats = []struct {
	magic string
	tool  []string
}{
	{"\xfd7zXZ\x00", []string{"xz", "-dc", "--single-stream"}},
	{"\x28\xb5\x2f\xfd", []string{"zstd", "-dc"}},
	{"\x1f\x8b\x08", []string{"gzip", "-dc"}},
}

// extractVmlinux writes the ELF kernel inside a bzImage to dst if it has a
// PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), the way qemu can boot it.
func extractVmlinux(bzImage, dst string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	for _, f := range payloadFormats {
		i := strings.Index(string(b), f.magic)
		if i < 0 {
			continue
		}
		cmd := exec.Command(f.tool[0], f.tool[1:]...)
		cmd.Stdin = strings.NewReader(string(b[i:]))
		out, _ := cmd.Output() // trailing data after the stream makes some tools complain
		if !hasPVHNote(out) {
			continue
		}
		tmp := dst + ".tmp"
		if err := os.WriteFile(tmp, out, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	}
	return errors.New("no ELF kernel with a PVH entry inside " + bzImage)
}

func hasPVHNote(img []byte) bool {
	f, err := elf.NewFile(strings.NewReader(string(img)))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := binary.LittleEndian.Uint32(data[0:4])
			descsz := binary.LittleEndian.Uint32(data[4:8])
			typ := binary.LittleEndian.Uint32(data[8:12])
			name := data[12:min(len(data), 12+int(namesz))]
			if typ == 18 && strings.TrimRight(string(name), "\x00") == "Xen" { // XEN_ELFNOTE_PHYS32_ENTRY
				return true
			}
			next := 12 + align4(int(namesz)) + align4(int(descsz))
			if next > len(data) || next <= 0 {
				break
			}
			data = data[next:]
		}
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }
