package bpf

import (
	"fmt"
	"path/filepath"
	"regexp"
)

// Where the data path runs and how it attaches: the names every layer
// (configuration, loader, status) uses.

// Hook is where the program runs.
type Hook string

const (
	// HookXDP runs the XDP program (native or generic mode).
	HookXDP Hook = "xdp"
	// HookTC runs the TC program on clsact/tcx ingress, where XDP can't run.
	HookTC Hook = "tc"
)

// XDPMode is the XDP attach mode asked for.
type XDPMode string

const (
	// XDPAuto tries native (driver) mode, then falls back to generic.
	XDPAuto    XDPMode = "auto"
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
)

// An instance's state on bpffs:
//
//	<bpffs>/xdplb/<instance>/            the instance directory, made atomically
//	    <map name>                       every map of the data path (flows, backends, ...)
//	    prog_xdp | prog_tc               the program attached
//	    link_xdp | link_tc               its bpf_link, where the kernel has one
//	<bpffs>/xdplb/_build-<instance>-<pid>  an instance being built (renamed into place)
const (
	// DefaultBPFFS is where bpffs is mounted unless told otherwise.
	DefaultBPFFS = "/sys/fs/bpf"
	// BPFFSEnv overrides DefaultBPFFS, e.g. for tests on a private bpffs.
	BPFFSEnv = "XDPLB_BPFFS"
	// DefaultInstance names the instance when none is given.
	DefaultInstance = "default"
	// StateDirName is the directory under bpffs that holds the instances.
	StateDirName = "xdplb"
)

// instanceName keeps an instance name usable as one path element under
// <bpffs>/xdplb/: no separators, no dots, nothing hidden.
var instanceName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// ValidateInstance reports whether name can name an instance. Every
// command checks it before building a path from it.
func ValidateInstance(name string) error {
	if !instanceName.MatchString(name) {
		return fmt.Errorf("instance %q: want 1-32 characters of a-z, 0-9, _ and -, starting with a letter or digit", name)
	}
	return nil
}

// StateDir is the directory holding every instance under bpffs.
func StateDir(bpffs string) string {
	if bpffs == "" {
		bpffs = DefaultBPFFS
	}
	return filepath.Join(bpffs, StateDirName)
}

// InstanceDir is the directory of one instance's pins. It refuses a name
// that ValidateInstance refuses, so no path can leave StateDir.
func InstanceDir(bpffs, instance string) (string, error) {
	if err := ValidateInstance(instance); err != nil {
		return "", err
	}
	return filepath.Join(StateDir(bpffs), instance), nil
}

// Pin names of the programs and links, per hook.
func (h Hook) ProgPin() string { return "prog_" + string(h) }
func (h Hook) LinkPin() string { return "link_" + string(h) }

// Hooks lists both hooks.
var Hooks = []Hook{HookXDP, HookTC}

// Prog is the name of the program the hook runs.
func (h Hook) Prog() string {
	if h == HookTC {
		return ProgTC
	}
	return ProgXDP
}
