package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/deb"
	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/vmlinux"
)

// This file: one kernel as the cache holds it, and what vmrun takes from a
// linux-image package to make it.

// Kernel is one unpacked kernel in the cache: the image and its modules, with
// modules.dep built by depmod.
type Kernel struct {
	Release   string    `json:"release"` // uname -r
	Package   string    `json:"package"`
	Version   string    `json:"version"`
	Dist      string    `json:"dist,omitempty"` // the Debian release it was fetched for; "" for a .deb file
	FetchedAt time.Time `json:"fetched_at"`
	Dir       string    `json:"-"` // holds kernel.json, boot/ and lib/modules/<release>
}

// kernelJSON is the file in a kernel's directory that says what it is.
const kernelJSON = "kernel.json"

// Vmlinuz is the compressed kernel image (bzImage) from the package.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }

// Vmlinux is the uncompressed ELF kernel taken out of Vmlinuz (package
// vmlinux); it may be missing.
func (k *Kernel) Vmlinux() string { return filepath.Join(k.Dir, "boot", "vmlinux-"+k.Release) }

// ModDir holds the kernel's modules and depmod's indexes.
func (k *Kernel) ModDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

func (k *Kernel) String() string {
	if k.Package == "" {
		return k.Release
	}
	return fmt.Sprintf("%s (%s %s)", k.Release, k.Package, k.Version)
}

// save writes kernel.json into k.Dir.
func (k *Kernel) save() error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(k.Dir, kernelJSON), append(b, '\n'), 0o644)
}

// loadKernel reads the kernel in dir, made for release; nil unless it is
// whole (kernel.json for that release and the image).
func loadKernel(dir, release string) *Kernel {
	b, err := os.ReadFile(filepath.Join(dir, kernelJSON))
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

// bootImage is the file qemu should boot for k. Under TCG, decompressing the
// kernel takes seconds of emulated time, so the cache keeps the uncompressed
// vmlinux (an ELF with a PVH entry point, which qemu boots directly) next to
// the bzImage, and makes it here for a kernel cached without one;
// XDPLB_VM_BOOT=bzimage boots the bzImage instead.
func bootImage(k *Kernel) string {
	if os.Getenv("XDPLB_VM_BOOT") == "bzimage" {
		return k.Vmlinuz()
	}
	if _, err := os.Stat(k.Vmlinux()); err == nil {
		return k.Vmlinux()
	}
	if err := vmlinux.Extract(k.Vmlinuz(), k.Vmlinux()); err != nil {
		return k.Vmlinuz()
	}
	return k.Vmlinux()
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

// keepPath maps a path in a linux-image package to where it goes in the
// kernel's directory, and says whether it is wanted at all: the image
// (boot/vmlinuz-*) and the modules, less skipModuleTrees.
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

// extractKernel writes what keepPath keeps of the linux-image package file
// into dir (dir/boot, dir/lib/modules) and returns the kernel's release.
func extractKernel(file, dir string) (string, error) {
	var release string
	err := deb.Extract(file, dir, func(name string) (string, bool) {
		dst, keep := keepPath(name)
		if rel, ok := strings.CutPrefix(dst, "boot/vmlinuz-"); keep && ok {
			release = rel
		}
		return dst, keep
	})
	if err != nil {
		return "", err
	}
	if release == "" {
		return "", errors.New("no boot/vmlinuz-* in package: is it a linux-image package?")
	}
	if _, err := os.Stat(filepath.Join(dir, "lib", "modules", release)); err != nil {
		return "", fmt.Errorf("no modules for %s in package: %w", release, err)
	}
	return release, nil
}

// debIdentity reads Package and Version from a .deb's control file; without
// dpkg-deb's answer the package is the file's name.
func debIdentity(file string) (pkg, version string) {
	f, err := deb.Fields(file, "Package", "Version")
	if err != nil {
		return filepath.Base(file), ""
	}
	return f["Package"], f["Version"]
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
