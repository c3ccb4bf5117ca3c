package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// Features is what the running kernel offers the data path, found by
// doing it: load a one-instruction program, attach it in a scratch network
// namespace (to its loopback, gone with the namespace), call the map batch
// operation, the clock helper. Each field is nil when the kernel has it, or
// the error that shows it has not.
//
// Linux 5.4 (xdplb's floor, Ubuntu 20.04) has BPF, XDP, clsact and cls_bpf,
// but no bpf_link for XDP (5.9), no tcx (6.6), no map batch operations
// (5.6) and no bpf_ktime_get_coarse_ns (5.11): the loader takes the older
// path for each (netlink, clsact, slot by slot, bpf_ktime_get_ns).
type Features struct {
	Release string
	// BPF: the bpf(2) system call exists and this process may use it.
	BPF error
	// XDP, SchedCLS: programs of the hook's type load.
	XDP, SchedCLS error
	// XDPAttach: an XDP program attaches (generic mode, netlink or link).
	XDPAttach error
	// XDPLink: bpf_link for XDP (5.9+).
	XDPLink error
	// Clsact, ClsBPF: the clsact qdisc, and a direct-action bpf filter on it.
	Clsact, ClsBPF error
	// TCX: tcx links (6.6+).
	TCX error
	// MapBatch: batch map updates (5.6+).
	MapBatch error
	// CoarseClock: bpf_ktime_get_coarse_ns (5.11+).
	CoarseClock error
	// Scratch is why the attach probes did not run (no network namespaces).
	Scratch error
}

// errNotProbed marks a probe that could not run (an earlier one failed).
var errNotProbed = errors.New("not probed")

// Probe finds the running kernel's features. It needs the privileges xdplb
// runs with (root); it changes nothing outside the namespace it makes.
func Probe() Features {
	f := Features{Release: unameRelease(), XDP: errNotProbed, SchedCLS: errNotProbed, XDPAttach: errNotProbed,
		XDPLink: errNotProbed, Clsact: errNotProbed, ClsBPF: errNotProbed, TCX: errNotProbed,
		MapBatch: errNotProbed, CoarseClock: errNotProbed}
	if f.BPF = probeBPFSyscall(); f.BPF != nil {
		return f
	}
	// As Start does, before any BPF object is made (see there).
	if err := rlimit.RemoveMemlock(); err != nil {
		f.BPF = fmt.Errorf("raise memlock rlimit: %w", err)
		return f
	}
	xdp, err := trivialProgram(ebpf.XDP, 2) // XDP_PASS
	f.XDP = err
	if err == nil {
		defer xdp.Close()
	}
	cls, err := trivialProgram(ebpf.SchedCLS, 0) // TC_ACT_OK
	f.SchedCLS = err
	if err == nil {
		defer cls.Close()
	}
	f.MapBatch = probeMapBatch()
	f.CoarseClock = errNotProbed
	if f.XDP == nil {
		if bpf.ResolveClock(bpf.ClockAuto) == bpf.ClockCoarse {
			f.CoarseClock = nil
		} else {
			f.CoarseClock = ebpf.ErrNotSupported
		}
	}
	f.Scratch = inScratchNetns(func() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			f.Scratch = err
			return
		}
		if xdp != nil {
			f.XDPLink, f.XDPAttach = probeXDPAttach(xdp, lo)
		}
		if cls != nil {
			f.TCX, f.Clsact, f.ClsBPF = probeTCAttach(cls, lo)
		}
	})
	return f
}

// Require says what the kernel lacks to run hook, naming the missing
// piece and its kernel option, or nil.
func (f Features) Require(hook bpf.Hook) error {
	on := "this kernel (" + f.Release + ")"
	switch {
	case errors.Is(f.BPF, unix.ENOSYS):
		return fmt.Errorf("%s has no BPF system call (built without CONFIG_BPF_SYSCALL): xdplb needs Linux 5.4 or later with BPF, as Ubuntu 20.04's kernels are", on)
	case f.BPF != nil:
		return fmt.Errorf("the BPF system call is refused: %w (run as root: xdplb needs CAP_SYS_ADMIN, or CAP_BPF and CAP_NET_ADMIN)", f.BPF)
	}
	switch hook {
	case bpf.HookXDP:
		if f.XDP != nil {
			return fmt.Errorf("%s cannot load XDP programs: %w", on, f.XDP)
		}
		if f.XDPAttach != nil && !errors.Is(f.XDPAttach, errNotProbed) {
			return fmt.Errorf("%s cannot attach XDP programs (generic mode, on a loopback): %w", on, f.XDPAttach)
		}
	case bpf.HookTC:
		if f.SchedCLS != nil {
			return fmt.Errorf("%s cannot load TC (sched_cls) programs (CONFIG_NET_CLS_BPF): %w; use --hook xdp", on, f.SchedCLS)
		}
		if f.TCX == nil || errors.Is(f.Clsact, errNotProbed) && errors.Is(f.TCX, errNotProbed) {
			return nil
		}
		if f.Clsact != nil {
			return fmt.Errorf("%s has no clsact qdisc (CONFIG_NET_SCH_INGRESS) and no tcx (6.6+): %w; use --hook xdp", on, f.Clsact)
		}
		if f.ClsBPF != nil {
			return fmt.Errorf("%s has no bpf classifier (CONFIG_NET_CLS_BPF) and no tcx (6.6+): %w; use --hook xdp", on, f.ClsBPF)
		}
	}
	return nil
}

// Fallbacks lists what this kernel lacks that xdplb works around, each
// with the way it takes instead.
func (f Features) Fallbacks() []string {
	var out []string
	add := func(err error, what string) {
		if err != nil && !errors.Is(err, errNotProbed) {
			out = append(out, what)
		}
	}
	add(f.XDPLink, "no bpf_link for XDP (5.9+): attach through netlink")
	if real := func(err error) bool { return err != nil && !errors.Is(err, errNotProbed) }; real(f.TCX) && (real(f.Clsact) || real(f.ClsBPF)) {
		out = append(out, "no tcx (6.6+) and no clsact with cls_bpf: --hook tc cannot run here")
	} else {
		add(f.TCX, "no tcx (6.6+): the TC hook uses clsact")
	}
	add(f.MapBatch, "no map batch operations (5.6+): the Maglev table is written slot by slot")
	add(f.CoarseClock, "no bpf_ktime_get_coarse_ns (5.11+): the data path reads bpf_ktime_get_ns")
	if f.Scratch != nil {
		out = append(out, "attach paths not probed ("+f.Scratch.Error()+")")
	}
	return out
}

// CheckKernel probes the kernel, refuses to go on when it cannot run hook
// (naming the missing piece), and logs in one line what the kernel lacks
// and what xdplb does instead.
func CheckKernel(hook bpf.Hook, log *slog.Logger) error {
	f := Probe()
	if err := f.Require(hook); err != nil {
		return err
	}
	if log == nil {
		log = slog.Default()
	}
	fb := f.Fallbacks()
	if len(fb) == 0 {
		log.Info("kernel has every feature xdplb uses", "release", f.Release)
		return nil
	}
	log.Info("kernel lacks features xdplb works around", "release", f.Release, "fallbacks", strings.Join(fb, "; "))
	return nil
}

func unameRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// probeBPFSyscall calls bpf(BPF_MAP_CREATE) with an empty attribute: a
// kernel with the system call answers EINVAL, one without ENOSYS, and
// EPERM says this process may not use it.
func probeBPFSyscall() error {
	var attr [64]byte
	_, _, errno := unix.Syscall(unix.SYS_BPF, 0 /* BPF_MAP_CREATE */, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	switch errno {
	case unix.ENOSYS, unix.EPERM, unix.EACCES:
		return errno
	}
	return nil
}

// trivialProgram loads "return ret" as a program of type pt.
func trivialProgram(pt ebpf.ProgramType, ret int32) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "xdplb_probe", Type: pt, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
}

func probeMapBatch() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.BatchUpdate([]uint32{0}, []uint32{1}, nil)
	return err
}

// inScratchNetns runs fn on a locked OS thread in a new network namespace,
// which goes away with its last reference once fn returns. If the thread
// cannot return to its namespace, it is never unlocked, so Go ends it.
func inScratchNetns(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespaces: %w", err)
			return
		}
		defer orig.Close()
		scratch, err := netns.New()
		if err != nil {
			netns.Set(orig)
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespaces: %w", err)
			return
		}
		fn()
		scratch.Close()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- nil
	}()
	return <-errc
}

// probeXDPAttach attaches prog to lo in generic mode: through a bpf_link
// where the kernel has them for XDP, else through netlink.
func probeXDPAttach(prog *ebpf.Program, lo netlink.Link) (linkErr, attachErr error) {
	l, linkErr := link.AttachXDP(link.XDPOptions{Program: prog, Interface: lo.Attrs().Index, Flags: link.XDPGenericMode})
	if linkErr == nil {
		l.Close()
		return nil, nil
	}
	if err := netlink.LinkSetXdpFdWithFlags(lo, prog.FD(), xdpFlagsSKBMode); err != nil {
		return linkErr, err
	}
	netlink.LinkSetXdpFdWithFlags(lo, -1, xdpFlagsSKBMode)
	return linkErr, nil
}

// probeTCAttach attaches prog on lo's ingress through tcx, and through a
// clsact qdisc with a direct-action bpf filter.
func probeTCAttach(prog *ebpf.Program, lo netlink.Link) (tcxErr, clsactErr, clsBPFErr error) {
	if l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress}); err == nil {
		l.Close()
	} else {
		tcxErr = err
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lo.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil {
		return tcxErr, fmt.Errorf("add clsact qdisc: %w", err), errNotProbed
	}
	if err := netlink.FilterAdd(tcFilter(lo, prog)); err != nil {
		clsBPFErr = fmt.Errorf("add bpf filter: %w", err)
	}
	netlink.QdiscDel(qdisc)
	return tcxErr, nil, clsBPFErr
}

// ProbeReport is the probe as one line per feature, for tests and the
// kernel matrix.
func (f Features) ProbeReport() string {
	var b strings.Builder
	yes := func(err error) string {
		if err == nil {
			return "yes"
		}
		if errors.Is(err, errNotProbed) {
			return "not probed"
		}
		return "no (" + err.Error() + ")"
	}
	fmt.Fprintf(&b, "kernel %s: bpf %s; xdp %s, attach %s, bpf_link %s; sched_cls %s, clsact %s, cls_bpf %s, tcx %s; map batch %s; coarse clock %s",
		f.Release, yes(f.BPF), yes(f.XDP), yes(f.XDPAttach), yes(f.XDPLink), yes(f.SchedCLS), yes(f.Clsact), yes(f.ClsBPF), yes(f.TCX),
		yes(f.MapBatch), yes(f.CoarseClock))
	return b.String()
}
