package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Modules the initramfs loads before it can mount the host's root: the
// virtio PCI transport, 9p over virtio, and overlayfs for the writable layer.
// virtio-rng feeds the guest's entropy pool so getrandom(2) does not block on
// 5.x kernels. Anything else (veth, sch_ingress, ...) the guest kernel loads on
// demand through modprobe from the cache, bind-mounted at /lib/modules.
var (
	initModules     = []string{"virtio_pci", "9pnet_virtio", "9p"}
	optionalModules = []string{"overlay", "virtio_rng"}
)

// moduleIndex is modules.dep of one kernel: module name → path and deps.
type moduleIndex struct {
	path    map[string]string   // name → path relative to the modules dir
	deps    map[string][]string // name → names it needs
	builtin map[string]bool
}

// modName turns "kernel/fs/9p/9p.ko.xz" into "9p" and "virtio-rng" into "virtio_rng".
func modName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func parseModulesDep(dep, builtin io.Reader) (*moduleIndex, error) {
	idx := &moduleIndex{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := modName(mod)
		idx.path[name] = strings.TrimSpace(mod)
		for _, d := range strings.Fields(deps) {
			idx.deps[name] = append(idx.deps[name], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if builtin != nil {
		sc = bufio.NewScanner(builtin)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" {
				idx.builtin[modName(line)] = true
			}
		}
	}
	return idx, nil
}

// loadOrder lists the modules to insmod, dependencies first, for the wanted
// modules; built-in ones are left out. Missing optional modules are skipped.
func (idx *moduleIndex) loadOrder(required, optional []string) ([]string, error) {
	var order []string
	seen := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if seen[name] || idx.builtin[name] {
			return nil
		}
		if _, ok := idx.path[name]; !ok {
			return fmt.Errorf("module %s (needed by %s) is neither in modules.dep nor built in", name, strings.Join(stack, " → "))
		}
		for _, s := range stack {
			if s == name {
				return fmt.Errorf("module dependency loop: %s → %s", strings.Join(stack, " → "), name)
			}
		}
		for _, d := range idx.deps[name] {
			if err := visit(d, append(stack, name)); err != nil {
				return err
			}
		}
		seen[name] = true
		order = append(order, name)
		return nil
	}
	for _, m := range required {
		if err := visit(modName(m), []string{"initramfs"}); err != nil {
			return nil, err
		}
	}
	for _, m := range optional {
		name := modName(m)
		if _, ok := idx.path[name]; !ok {
			continue
		}
		if err := visit(name, []string{"initramfs"}); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModule returns a module's bytes, decompressed (busybox insmod takes
// plain ELF only).
func readModule(file string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(file, ".ko"):
		return os.ReadFile(file)
	case strings.HasSuffix(file, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(file, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(file, ".ko.gz"):
		tool = "gzip"
	default:
		return nil, fmt.Errorf("module %s: unknown compression", file)
	}
	out, err := exec.Command(tool, "-dc", file).Output()
	if err != nil {
		return nil, fmt.Errorf("decompress %s (apt-get install xz-utils zstd): %w", file, err)
	}
	return out, nil
}

// staticBusybox finds a statically linked busybox on the host.
func staticBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p, nil
		}
	}
	return "", errors.New("no static busybox found: run tests/vm/deps.sh (apt-get install busybox-static)")
}

// initramfs is what goes into the guest's initial RAM disk.
type initramfs struct {
	kernel  *Kernel
	busybox string
	files   map[string]string // extra files: path in archive → content
}

// write builds a newc cpio archive with busybox, the modules needed to reach
// the host's root, and the files (init, the command script).
func (ir *initramfs) write(w io.Writer) error {
	moddir := ir.kernel.ModDir()
	dep, err := os.Open(filepath.Join(moddir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("kernel %s has no modules.dep (remove %s and fetch again): %w", ir.kernel.Release, ir.kernel.Dir, err)
	}
	defer dep.Close()
	builtin, _ := os.Open(filepath.Join(moddir, "modules.builtin"))
	if builtin != nil {
		defer builtin.Close()
	}
	var bi io.Reader
	if builtin != nil {
		bi = builtin
	}
	idx, err := parseModulesDep(dep, bi)
	if err != nil {
		return fmt.Errorf("read modules.dep of %s: %w", ir.kernel.Release, err)
	}
	order, err := idx.loadOrder(initModules, optionalModules)
	if err != nil {
		return fmt.Errorf("kernel %s: %w (a cloud kernel lacks 9p: use Debian's generic linux-image-*-amd64)", ir.kernel.Release, err)
	}

	cw := newCpio(w)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lower", "rw", "modules", "xdplb-vm"} {
		cw.dir(d, 0o755)
	}
	bb, err := os.ReadFile(ir.busybox)
	if err != nil {
		return err
	}
	cw.file("bin/busybox", 0o755, bb)
	cw.symlink("bin/sh", "busybox")
	var list bytes.Buffer
	for _, name := range order {
		data, err := readModule(filepath.Join(moddir, idx.path[name]))
		if err != nil {
			return err
		}
		cw.file("modules/"+name+".ko", 0o644, data)
		fmt.Fprintln(&list, name+".ko")
	}
	cw.file("modules/order", 0o644, list.Bytes())
	for name, content := range ir.files {
		mode := uint32(0o644)
		if strings.HasSuffix(name, ".sh") || name == "init" {
			mode = 0o755
		}
		cw.file(name, mode, []byte(content))
	}
	return cw.close()
}

// cpioWriter writes the "newc" cpio format the kernel unpacks into its rootfs.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	n   int64
	err error
}

func newCpio(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	nlink := 1
	if mode&sIFDIR != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.ino++
	c.put([]byte(hdr))
	c.put(append([]byte(name), 0))
	c.pad()
	c.put(data)
	c.pad()
}

func (c *cpioWriter) put(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.put(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string, perm uint32)            { c.entry(name, sIFDIR|perm, nil) }
func (c *cpioWriter) file(name string, perm uint32, b []byte) { c.entry(name, sIFREG|perm, b) }
func (c *cpioWriter) symlink(name, target string)             { c.entry(name, sIFLNK|0o777, []byte(target)) }
func (c *cpioWriter) close() error                            { c.entry("TRAILER!!!", 0, nil); return c.err }
