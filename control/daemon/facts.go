package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/preflight"
	"github.com/xdplb/xdplb/control/safefile"
	"github.com/xdplb/xdplb/loader"
)

// keepalivedConfs are where keepalived's configuration is looked for.
var keepalivedConfs = []string{"/etc/keepalived/keepalived.conf"}

// Facts gathers what preflight decides about, and changes nothing: the
// kernel's release and BPF features, bpffs, BTF, the frontend interface
// (netlink, ethtool get requests, its veth peer), keepalived's
// configuration. `xdplb doctor` prints preflight.Checks of them; Run
// logs them and takes the XDP mode auto resolves to from them.
func Facts(cfg config.Config) preflight.Facts {
	f := preflight.Facts{Kernel: unameRelease(), Root: os.Geteuid() == 0, BPFFS: cfg.BPFFS, Hook: cfg.Hook, Mode: cfg.XDPMode}
	if f.Root {
		f.Features = kernelFeatures(f.Kernel)
	}
	_, err := os.Stat("/sys/kernel/btf/vmlinux")
	f.BTF = err == nil
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.BPFFS, &st); err != nil {
		f.BPFFSErr = err
	} else {
		f.BPFFSMounted = st.Type == unix.BPF_FS_MAGIC
	}
	f.Iface = ifaceFacts(cfg.Iface)
	for _, p := range keepalivedConfs {
		if b, err := safefile.Read(p, safefile.MaxSize, safefile.Timeout); err == nil {
			f.Keepalived = preflight.Keepalived{Path: p, Text: string(b), Running: processRuns("keepalived")}
			break
		}
	}
	return f
}

func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// kernelFeatures are the features the loader takes another path without,
// from the kernel's version.
func kernelFeatures(release string) []preflight.Feature {
	major, minor, _ := preflight.KernelVersion(release)
	has := func(a, b int) error {
		if major > a || major == a && minor >= b {
			return nil
		}
		return fmt.Errorf("needs Linux %d.%d", a, b)
	}
	f := []preflight.Feature{
		{Name: "bpf_link for XDP (5.9+)", Err: has(5, 9), Without: "the program is attached through netlink"},
		{Name: "bpf_ktime_get_coarse_ns (5.11+)", Err: has(5, 11), Without: "the precise clock (bpf_ktime_get_ns), ~40 ns a packet dearer under kvm-clock"},
		{Name: "tcx (6.6+)", Err: has(6, 6), Without: "hook tc attaches to clsact"},
	}
	if err := loader.ProbeBPF(); err != nil {
		f = append([]preflight.Feature{{Name: "bpf system call", Err: err, Needed: true}}, f...)
	} else {
		f = append([]preflight.Feature{{Name: "bpf system call"}}, f...)
	}
	return f
}

func ifaceFacts(name string) preflight.Iface {
	ifc := preflight.Iface{Name: name, CPUs: runtime.NumCPU()}
	if name == "" {
		return ifc
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		ifc.Err = err
		return ifc
	}
	a := l.Attrs()
	ifc.Up = a.Flags&unix.IFF_UP != 0 && a.OperState != netlink.OperDown
	ifc.MTU = a.MTU
	ifc.Driver, _ = ethDriver(name)
	if ifc.Driver == "" {
		ifc.Driver = l.Type()
	}
	ifc.Combined, ifc.MaxCombined, _ = ethChannels(name)
	// The kernel's names (ethtool -k shows rx-lro as large-receive-offload).
	if feats, err := ethFeatures(name, "rx-lro", "rx-gro-hw"); err == nil {
		ifc.LRO, ifc.GROHW = feats["rx-lro"], feats["rx-gro-hw"]
	}
	if x := a.Xdp; x != nil && x.Attached && x.ProgId != 0 {
		ifc.XDPProg = x.ProgId
		ifc.XDPOurs = ownerOf(x.ProgId)
	}
	if _, ok := l.(*netlink.Veth); ok || ifc.Driver == "veth" {
		ifc.PeerName, ifc.PeerKnown, ifc.PeerXDP = vethPeer(a)
	}
	return ifc
}

// ownerOf says whether the XDP program of that id is an xdplb program
// (its name).
func ownerOf(id uint32) bool {
	name, err := loader.ProgramName(id)
	return err == nil && strings.HasPrefix(name, "xdplb_")
}

// vethPeer finds a veth's peer: in this namespace, or in a named one
// (/run/netns) of the netns id netlink gives, and says whether it has a
// native XDP program attached.
func vethPeer(a *netlink.LinkAttrs) (name string, known, xdp bool) {
	peerIndex := a.ParentIndex
	if peerIndex == 0 {
		return "", false, false
	}
	look := func(h *netlink.Handle) bool {
		l, err := h.LinkByIndex(peerIndex)
		if err != nil {
			return false
		}
		name, known = l.Attrs().Name, true
		x := l.Attrs().Xdp
		xdp = x != nil && x.Attached && x.AttachMode == xdpAttachedDrv
		return true
	}
	if a.NetNsID < 0 {
		h, err := netlink.NewHandle()
		if err == nil {
			defer h.Close()
			look(h)
		}
		return name, known, xdp
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		ns, err := netns.GetFromPath(filepath.Join("/run/netns", e.Name()))
		if err != nil {
			continue
		}
		id, err := netlink.GetNetNsIdByFd(int(ns))
		if err != nil || id != a.NetNsID {
			ns.Close()
			continue
		}
		h, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			break
		}
		found := look(h)
		h.Close()
		if found {
			name = e.Name() + ":" + name
		}
		break
	}
	return name, known, xdp
}

// xdpAttachedDrv is XDP_ATTACHED_DRV: a native-mode program.
const xdpAttachedDrv = 1

// processRuns says whether a process of that command name runs (/proc).
func processRuns(comm string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(b)) == comm {
			return true
		}
	}
	return false
}
