// Package preflight decides, from facts about the node, whether xdplb can
// run there and how well: the kernel and its BPF features, bpffs, BTF, the
// frontend interface (its driver, its XDP support, what makes native XDP
// fail or crawl on virtio_net, whether XDP_TX out of a veth reaches
// anything), and keepalived's configuration. `xdplb doctor` prints its
// checks, one pass/warn/fail line each with what to change; `xdplb run`
// logs them at start and asks XDPMode which mode --xdp-mode auto takes.
//
// It is pure: the facts are gathered by control/daemon (uname, statfs,
// netlink, ethtool ioctls, files), so every decision is tested here
// without root and without a network.
package preflight

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/xdplb/xdplb/bpf"
)

// Result of a check.
type Result string

const (
	Pass Result = "pass"
	Warn Result = "warn"
	Fail Result = "fail"
	// Info is a fact worth knowing that is neither good nor bad.
	Info Result = "info"
)

// Check is one line of doctor's report.
type Check struct {
	Name   string `json:"name"`
	Result Result `json:"result"`
	Detail string `json:"detail"`
	// Fix says what to change, for warn and fail.
	Fix string `json:"fix,omitempty"`
}

func (c Check) String() string {
	s := fmt.Sprintf("%-4s  %-12s %s", c.Result, c.Name, c.Detail)
	if c.Fix != "" {
		s += "\n" + strings.Repeat(" ", 20) + "fix: " + c.Fix
	}
	return s
}

// Feature is a kernel feature and whether this kernel has it.
type Feature struct {
	Name string
	// Err is nil when the kernel has it, else why not.
	Err error
	// Needed: xdplb cannot run without it (with the configured hook).
	Needed bool
	// Without says what xdplb does instead when the kernel lacks it.
	Without string
}

// Facts is what the daemon found on the node.
type Facts struct {
	// Kernel is the release (uname -r), e.g. "5.4.0-216-generic".
	Kernel string
	// Root: running as root (the daemon must; doctor can do more then).
	Root bool
	// Features are the probed BPF features; nil: not probed (not root).
	Features []Feature
	// BTF: /sys/kernel/btf/vmlinux exists.
	BTF bool
	// BPFFS is the configured bpffs; BPFFSMounted: a bpf filesystem is
	// mounted there. BPFFSErr says why it could not be looked at.
	BPFFS        string
	BPFFSMounted bool
	BPFFSErr     error
	// Hook and Mode are the configured hook and XDP mode.
	Hook bpf.Hook
	Mode bpf.XDPMode
	// Iface is the frontend interface.
	Iface Iface
	// Keepalived is keepalived's configuration, if found.
	Keepalived Keepalived
}

// Iface is what the daemon found of the frontend interface.
type Iface struct {
	Name string
	// Err: the interface could not be found.
	Err    error
	Driver string
	Up     bool
	MTU    int
	// Queues: the channels in use and the most the device offers
	// (ethtool -l); zero when the driver does not say.
	Combined, MaxCombined int
	// CPUs is the number of CPUs (XDP_TX needs a TX queue each).
	CPUs int
	// LRO and GROHW: large receive offload, hardware GRO on (ethtool -k).
	LRO, GROHW bool
	// XDPProg: an XDP program is attached (its id), ours or not.
	XDPProg uint32
	// XDPOurs: the attached program is an xdplb instance's.
	XDPOurs bool
	// Veth peer: PeerKnown when the peer could be looked at (same
	// namespace, or a named one); PeerXDP: it has a native XDP program.
	PeerName  string
	PeerKnown bool
	PeerXDP   bool
}

// Keepalived is keepalived's configuration as found.
type Keepalived struct {
	// Path of the file; empty when none was found.
	Path string
	// Text is its content.
	Text string
	// Running: a keepalived process runs.
	Running bool
}

// MinKernel is xdplb's floor, Ubuntu 20.04's kernel.
var MinKernel = [2]int{5, 4}

var releaseRE = regexp.MustCompile(`^(\d+)\.(\d+)`)

// KernelVersion parses "5.4.0-216-generic" into 5, 4.
func KernelVersion(release string) (major, minor int, ok bool) {
	m := releaseRE.FindStringSubmatch(release)
	if m == nil {
		return 0, 0, false
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, true
}

// atLeast says whether release is at least major.minor.
func atLeast(release string, major, minor int) bool {
	a, b, ok := KernelVersion(release)
	return ok && (a > major || a == major && b >= minor)
}

// nativeXDPDrivers are drivers with native XDP (ndo_bpf) in Linux 5.4.
var nativeXDPDrivers = map[string]bool{
	"virtio_net": true, "veth": true, "tun": true, "ixgbe": true, "ixgbevf": true, "i40e": true, "ice": true,
	"mlx4_en": true, "mlx5_core": true, "bnxt_en": true, "nfp": true, "qede": true, "thunder-nicvf": true,
	"netsec": true, "ena": true, "hv_netvsc": true, "igb": true, "igc": true, "stmmac": true, "dpaa2-eth": true,
	"sfc": true, "cpsw": true, "mvneta": true, "mvpp2": true, "enetc": true, "bond": true, "tsnep": true,
}

// virtioMaxMTU is about the largest MTU virtio_net takes native XDP with
// (a page, less XDP's headroom and the skb's tail: ~3500 with 4 KiB pages).
const virtioMaxMTU = 3500

// XDPMode decides the mode --xdp-mode auto attaches in, and why. Native is
// tried first where it can forward, with generic as the loader's fallback;
// on a veth, XDP_TX and redirects into it are dropped silently unless the
// peer runs a native XDP program, so auto takes generic there unless it
// can see that the peer has one.
func XDPMode(requested bpf.XDPMode, ifc Iface) (bpf.XDPMode, string) {
	if requested != bpf.XDPAuto {
		return requested, ""
	}
	switch {
	case ifc.Driver == "veth" && ifc.PeerXDP:
		return bpf.XDPAuto, fmt.Sprintf("auto: native first: %s is a veth whose peer %s runs an XDP program, so XDP_TX reaches it", ifc.Name, ifc.PeerName)
	case ifc.Driver == "veth" && ifc.PeerKnown:
		return bpf.XDPGeneric, fmt.Sprintf("auto: generic: %s is a veth and its peer %s runs no XDP program: native XDP_TX out of it would be dropped silently", ifc.Name, ifc.PeerName)
	case ifc.Driver == "veth":
		return bpf.XDPGeneric, fmt.Sprintf("auto: generic: %s is a veth whose peer is in a namespace this node cannot look into: native XDP_TX out of it is dropped unless the peer runs an XDP program", ifc.Name)
	}
	return bpf.XDPAuto, ""
}

// Checks are doctor's checks, in order.
func Checks(f Facts) []Check {
	var out []Check
	out = append(out, kernelCheck(f)...)
	out = append(out, bpffsCheck(f), btfCheck(f))
	out = append(out, ifaceChecks(f)...)
	out = append(out, keepalivedCheck(f))
	return out
}

// Worst is the worst result of checks: fail, else warn, else pass.
func Worst(checks []Check) Result {
	worst := Pass
	for _, c := range checks {
		switch {
		case c.Result == Fail:
			return Fail
		case c.Result == Warn:
			worst = Warn
		}
	}
	return worst
}

func kernelCheck(f Facts) []Check {
	var out []Check
	switch {
	case f.Kernel == "":
		out = append(out, Check{Name: "kernel", Result: Warn, Detail: "release unknown"})
	case !atLeast(f.Kernel, MinKernel[0], MinKernel[1]):
		out = append(out, Check{Name: "kernel", Result: Fail, Detail: "Linux " + f.Kernel + ": older than 5.4, xdplb's floor",
			Fix: "upgrade to Linux 5.4 or later (Ubuntu 20.04's GA kernel)"})
	default:
		out = append(out, Check{Name: "kernel", Result: Pass, Detail: "Linux " + f.Kernel})
	}
	if !f.Root {
		out = append(out, Check{Name: "privileges", Result: Warn, Detail: "not root: the BPF features were not probed; xdplb run needs root",
			Fix: "run xdplb doctor as root (sudo) for the whole report"})
		return out
	}
	out = append(out, Check{Name: "privileges", Result: Pass, Detail: "root"})
	for _, ft := range f.Features {
		c := Check{Name: "bpf", Result: Pass, Detail: ft.Name}
		switch {
		case ft.Err == nil:
		case ft.Needed:
			c.Result, c.Detail, c.Fix = Fail, ft.Name+": "+ft.Err.Error(), "a kernel with it (see the README's kernel floor)"
		default:
			c.Result, c.Detail = Info, ft.Name+": not on this kernel; "+ft.Without
		}
		out = append(out, c)
	}
	return out
}

func bpffsCheck(f Facts) Check {
	c := Check{Name: "bpffs", Detail: f.BPFFS}
	switch {
	case f.BPFFSErr != nil:
		c.Result, c.Detail = Warn, f.BPFFS+": "+f.BPFFSErr.Error()
		c.Fix = "mount bpffs: mount -t bpf bpf " + f.BPFFS + " (xdplb run mounts it when it is missing)"
	case !f.BPFFSMounted:
		c.Result, c.Detail = Warn, f.BPFFS+" is not a bpf filesystem: xdplb run mounts one there"
		c.Fix = "systemd mounts /sys/fs/bpf at boot on Ubuntu; under the unit's ProtectSystem a mount the daemon makes is its own, so have it mounted before (mount -t bpf bpf " + f.BPFFS + ")"
	default:
		c.Result, c.Detail = Pass, f.BPFFS+" is a bpf filesystem"
	}
	return c
}

func btfCheck(f Facts) Check {
	if f.BTF {
		return Check{Name: "btf", Result: Pass, Detail: "/sys/kernel/btf/vmlinux: the kernel's BTF is there"}
	}
	return Check{Name: "btf", Result: Info, Detail: "no /sys/kernel/btf/vmlinux: xdplb does not need it (its maps carry their own BTF for bpftool)"}
}

func ifaceChecks(f Facts) []Check {
	ifc := f.Iface
	if ifc.Name == "" {
		return []Check{{Name: "interface", Result: Warn, Detail: "no iface configured", Fix: "set iface (--iface eth1)"}}
	}
	if ifc.Err != nil {
		return []Check{{Name: "interface", Result: Fail, Detail: ifc.Name + ": " + ifc.Err.Error(), Fix: "set iface to the interface the frontend traffic arrives on (ip -br link)"}}
	}
	var out []Check
	state := "up"
	res := Pass
	fix := ""
	if !ifc.Up {
		state, res, fix = "DOWN", Warn, "ip link set "+ifc.Name+" up"
	}
	out = append(out, Check{Name: "interface", Result: res, Detail: fmt.Sprintf("%s: %s, driver %s, mtu %d", ifc.Name, state, orUnknown(ifc.Driver), ifc.MTU), Fix: fix})
	if ifc.XDPProg != 0 && !ifc.XDPOurs {
		out = append(out, Check{Name: "xdp", Result: Fail, Detail: fmt.Sprintf("%s runs another XDP program (id %d): xdplb will not replace it", ifc.Name, ifc.XDPProg),
			Fix: "remove it (ip link set " + ifc.Name + " xdp off) or use --hook tc"})
	}
	if f.Hook == bpf.HookTC {
		out = append(out, Check{Name: "xdp", Result: Info, Detail: "hook tc: XDP is not used"})
		return out
	}
	mode, why := XDPMode(f.Mode, ifc)
	switch {
	case nativeXDPDrivers[ifc.Driver]:
		out = append(out, Check{Name: "xdp", Result: Pass, Detail: "driver " + ifc.Driver + " has native XDP"})
	case f.Mode == bpf.XDPNative:
		out = append(out, Check{Name: "xdp", Result: Warn, Detail: "driver " + orUnknown(ifc.Driver) + " is not known to have native XDP: xdp-mode native may be refused",
			Fix: "--xdp-mode auto (falls back to generic) or generic"})
	default:
		out = append(out, Check{Name: "xdp", Result: Info, Detail: "driver " + orUnknown(ifc.Driver) + " is not known to have native XDP: auto falls back to generic (slower, always works)"})
	}
	if why != "" {
		r := Pass
		if mode == bpf.XDPGeneric {
			r = Warn
		}
		c := Check{Name: "xdp-mode", Result: r, Detail: why}
		if ifc.Driver == "veth" && mode == bpf.XDPGeneric {
			c.Fix = "fine for a lab; for native speed attach an XDP program (even one that passes) to the peer " + orUnknown(ifc.PeerName) + " and use --xdp-mode native"
		}
		out = append(out, c)
	}
	if ifc.Driver == "veth" && f.Mode == bpf.XDPNative && ifc.PeerKnown && !ifc.PeerXDP {
		out = append(out, Check{Name: "xdp-mode", Result: Fail, Detail: "native on a veth whose peer " + ifc.PeerName + " runs no XDP program: every forwarded packet would be dropped silently",
			Fix: "attach an XDP program to " + ifc.PeerName + ", or use --xdp-mode generic"})
	}
	if ifc.Driver == "virtio_net" && f.Mode != bpf.XDPGeneric {
		out = append(out, virtioChecks(f.Kernel, ifc)...)
	}
	return out
}

// virtioChecks say what makes native XDP fail or crawl on virtio_net.
func virtioChecks(kernel string, ifc Iface) []Check {
	var out []Check
	if ifc.MTU > virtioMaxMTU {
		out = append(out, Check{Name: "virtio", Result: Fail, Detail: fmt.Sprintf("mtu %d: virtio_net refuses native XDP above about %d", ifc.MTU, virtioMaxMTU),
			Fix: fmt.Sprintf("ip link set %s mtu 1500 (or --xdp-mode generic)", ifc.Name)})
	}
	if ifc.LRO || ifc.GROHW {
		what := "LRO (large-receive-offload)"
		fix := "ethtool -K " + ifc.Name + " lro off"
		if ifc.GROHW {
			what, fix = "hardware GRO (rx-gro-hw)", "ethtool -K "+ifc.Name+" rx-gro-hw off"
		}
		out = append(out, Check{Name: "virtio", Result: Warn, Detail: what + " is on: virtio_net refuses native XDP unless the host lets it turn the guest offloads off",
			Fix: fix + " (or, on the host, give the NIC guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off)"})
	}
	if ifc.MaxCombined > 0 && ifc.CPUs > 0 {
		need := ifc.Combined + ifc.CPUs
		detail := fmt.Sprintf("%d queues in use of %d, %d CPUs: native XDP_TX wants a spare TX queue per CPU (%d)", ifc.Combined, ifc.MaxCombined, ifc.CPUs, need)
		switch {
		case need <= ifc.MaxCombined:
			out = append(out, Check{Name: "virtio", Result: Pass, Detail: detail})
		case ifc.MaxCombined > ifc.CPUs:
			r := Warn
			effect := "on Linux 5.13+ native XDP then shares TX queues under a lock (slow)"
			if !atLeast(kernel, 5, 13) {
				r, effect = Fail, "this kernel refuses native XDP then (auto falls back to generic)"
			}
			out = append(out, Check{Name: "virtio", Result: r, Detail: detail + "; " + effect,
				Fix: fmt.Sprintf("ethtool -L %s combined %d (leaves %d spare), or give the VM queues=%d (libvirt <driver name='vhost' queues='%d'/>)", ifc.Name, ifc.MaxCombined-ifc.CPUs, ifc.CPUs, 2*ifc.CPUs, 2*ifc.CPUs)})
		default:
			r := Warn
			effect := "on Linux 5.13+ native XDP then shares TX queues under a lock (slow)"
			if !atLeast(kernel, 5, 13) {
				r, effect = Fail, "this kernel refuses native XDP then (auto falls back to generic)"
			}
			out = append(out, Check{Name: "virtio", Result: r, Detail: detail + "; " + effect,
				Fix: fmt.Sprintf("give the VM queues=%d (libvirt <driver name='vhost' queues='%d'/>, qemu -netdev ...,queues=%d and -device virtio-net-pci,mq=on,vectors=%d)", 2*ifc.CPUs, 2*ifc.CPUs, 2*ifc.CPUs, 4*ifc.CPUs+2)})
		}
	}
	return out
}

var (
	trackXDPLB   = regexp.MustCompile(`(?m)^\s*script\s+"?[^"\n]*xdplb\s+check`)
	trackHAProxy = regexp.MustCompile(`(?m)^\s*script\s+"?[^"\n]*(haproxy|killall\s+-0)`)
)

func keepalivedCheck(f Facts) Check {
	k := f.Keepalived
	c := Check{Name: "keepalived"}
	switch {
	case k.Path == "":
		c.Result, c.Detail = Info, "no keepalived configuration found: fine for the single-node frontend (vip = this node's address)"
	case trackXDPLB.MatchString(k.Text):
		c.Result, c.Detail = Pass, k.Path+" tracks xdplb check"
	case trackHAProxy.MatchString(k.Text):
		c.Result, c.Detail = Warn, k.Path+" still tracks haproxy: the VIP will follow HAProxy, not xdplb"
		c.Fix = "use the track scripts of /usr/share/doc/xdplb/examples/keepalived.conf (xdplb check --quiet, xdplb check --backends --quiet)"
	default:
		c.Result, c.Detail = Warn, k.Path+" has no xdplb check track script: keepalived will not move the VIP when this node cannot forward"
		c.Fix = "add the track scripts of /usr/share/doc/xdplb/examples/keepalived.conf"
	}
	if k.Path != "" && !k.Running && c.Result != Warn {
		c.Detail += "; keepalived is not running"
	}
	return c
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
