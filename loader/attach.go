package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// XDP attach flags (linux/if_link.h).
const (
	xdpFlagsUpdateIfNoExist = 1 << 0
	xdpFlagsSKBMode         = 1 << 1
	xdpFlagsDrvMode         = 1 << 2
)

// netlink's attach modes as reported by IFLA_XDP_ATTACHED.
const (
	xdpAttachedDrv = 1
	xdpAttachedSKB = 2
	xdpAttachedHW  = 3
)

func interfaceByName(name string) (netlink.Link, error) {
	if name == "" {
		return nil, errors.New("no interface given: set --iface (e.g. --iface eth1)")
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		var names []string
		if links, lerr := netlink.LinkList(); lerr == nil {
			for _, l := range links {
				names = append(names, l.Attrs().Name)
			}
		}
		sort.Strings(names)
		return nil, fmt.Errorf("interface %q not found (this namespace has: %s)", name, strings.Join(names, ", "))
	}
	return l, nil
}

// checkForeignProgram refuses to take over an interface that runs an XDP or
// TC program of someone else (another xdplb instance included).
func checkForeignProgram(opts Options, iface netlink.Link) error {
	dir, err := bpf.InstanceDir(opts.BPFFS, opts.Instance)
	if err != nil {
		return err
	}
	mine := ourProgIDs(dir)
	var attached []ebpf.ProgramID
	if x := iface.Attrs().Xdp; x != nil && x.Attached && x.ProgId != 0 {
		attached = append(attached, ebpf.ProgramID(x.ProgId))
	}
	if opts.Hook == bpf.HookTC {
		ids, _ := tcProgIDs(iface)
		attached = append(attached, ids...)
	}
	for _, id := range attached {
		if _, ok := mine[id]; ok || recognized(dir, opts.Hook, id) {
			continue
		}
		if other := instanceOwning(opts.BPFFS, id); other != "" && other != opts.Instance {
			return fmt.Errorf("%s already runs xdplb instance %q (prog id %d): stop it and run `xdplb detach --instance %s`, or use that instance",
				iface.Attrs().Name, other, id, other)
		}
		if opts.Hook == bpf.HookXDP && iface.Attrs().Xdp != nil && ebpf.ProgramID(iface.Attrs().Xdp.ProgId) == id {
			return fmt.Errorf("%s already has an XDP program (prog id %d, %s) that is not xdplb instance %q's: "+
				"remove it first (ip link set dev %s xdp off) or use --hook tc", iface.Attrs().Name, id, progName(id), opts.Instance, iface.Attrs().Name)
		}
	}
	return nil
}

func progName(id ebpf.ProgramID) string {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "unknown"
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "unknown"
	}
	return "name " + info.Name
}

// instanceOwning says which pinned xdplb instance owns program id.
func instanceOwning(bpffs string, id ebpf.ProgramID) string {
	names, _ := Instances(bpffs)
	for _, n := range names {
		dir, _ := bpf.InstanceDir(bpffs, n)
		if _, ok := ourProgIDs(dir)[id]; ok || recognized(dir, bpf.HookXDP, id) || recognized(dir, bpf.HookTC, id) {
			return n
		}
	}
	return ""
}

// ourProgIDs are the programs pinned in an instance directory, by hook:
// the one attached, and one pinned for a swap a crash may have cut short
// after the swap (see pinNew), which is then the one attached.
func ourProgIDs(dir string) map[ebpf.ProgramID]bpf.Hook {
	ids := map[ebpf.ProgramID]bpf.Hook{}
	for _, h := range bpf.Hooks {
		for _, name := range []string{h.ProgPin(), h.ProgPin() + pinNewSuffix} {
			if id, _ := pinnedProgID(filepath.Join(dir, name)); id != 0 {
				ids[id] = h
			}
		}
	}
	return ids
}

// settleSwap finishes a swap that a crash cut short between attaching a
// program and making its pin final: if the program pinned for the swap is
// the one attached, its pin becomes the instance's; if not, the swap never
// happened and the leftover pin goes.
func settleSwap(dir string, hook bpf.Hook, attached []ebpf.ProgramID) error {
	pending, err := pinnedProgID(filepath.Join(dir, hook.ProgPin()+pinNewSuffix))
	if err != nil || pending == 0 {
		return err
	}
	if containsID(attached, pending) {
		return commitPin(dir, hook.ProgPin())
	}
	return os.Remove(filepath.Join(dir, hook.ProgPin()+pinNewSuffix))
}

// ours says whether id is one of the hook's programs pinned in dir.
func ours(dir string, hook bpf.Hook, id ebpf.ProgramID) bool {
	h, ok := ourProgIDs(dir)[id]
	return ok && h == hook
}

func modeName(attachMode uint32) string {
	switch attachMode {
	case xdpAttachedDrv:
		return "native"
	case xdpAttachedSKB:
		return "generic"
	case xdpAttachedHW:
		return "offload"
	}
	return "unknown"
}

// attachXDP attaches prog, or swaps it in for the instance's attached
// program: update the pinned link, or replace through netlink in the mode
// it runs in. Never detach-then-attach, which would bounce the NIC and
// drop packets in between. prog is pinned (pinNew) before it is attached
// and the pin made final (commitPin) after, so whatever a crash
// interrupts, the program on the interface is one the instance pinned.
func attachXDP(opts Options, dir string, iface netlink.Link, prog *ebpf.Program) (Attachment, bool, error) {
	att := Attachment{Iface: iface.Attrs().Name, Ifindex: iface.Attrs().Index, Hook: bpf.HookXDP}
	linkPath := filepath.Join(dir, bpf.HookXDP.LinkPin())
	progPin := bpf.HookXDP.ProgPin()
	var attached []ebpf.ProgramID
	if x := iface.Attrs().Xdp; x != nil && x.Attached {
		attached = append(attached, ebpf.ProgramID(x.ProgId))
	}
	if err := settleSwap(dir, bpf.HookXDP, attached); err != nil {
		return att, false, err
	}
	if err := pinNew(prog, dir, progPin); err != nil {
		return att, false, err
	}

	l, err := pinnedLinkFor(linkPath, iface, opts.Instance, opts.Logger)
	if err != nil {
		os.Remove(filepath.Join(dir, progPin+pinNewSuffix))
		return att, false, err
	}
	if l != nil {
		defer l.Close()
		if err := l.Update(prog); err != nil {
			return att, false, fmt.Errorf("replace program on pinned xdp link: %w", err)
		}
		crashAt("replaced")
		if err := commitPin(dir, progPin); err != nil {
			return att, false, err
		}
		att.Via = "bpf_link"
		att.Mode = currentXDPMode(iface)
		return att, true, nil
	}

	if x := iface.Attrs().Xdp; x != nil && x.Attached && owns(dir, bpf.HookXDP, ebpf.ProgramID(x.ProgId)) {
		flags := xdpFlagsDrvMode
		if x.AttachMode == xdpAttachedSKB {
			flags = xdpFlagsSKBMode
		}
		// Without UPDATE_IF_NOEXIST the kernel swaps programs atomically.
		if err := netlink.LinkSetXdpFdWithFlags(iface, prog.FD(), flags); err != nil {
			return att, false, fmt.Errorf("replace xdp program on %s: %w", att.Iface, err)
		}
		crashAt("replaced")
		if err := commitPin(dir, progPin); err != nil {
			return att, false, err
		}
		att.Via = "netlink"
		att.Mode = modeName(x.AttachMode)
		return att, true, nil
	}

	modes := []bpf.XDPMode{opts.XDPMode}
	if opts.XDPMode == bpf.XDPAuto {
		modes = []bpf.XDPMode{bpf.XDPNative, bpf.XDPGeneric}
	}
	var reasons []string
	for _, mode := range modes {
		via, err := attachXDPMode(iface, prog, mode, linkPath, opts.NoLink)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: %v", mode, err))
			continue
		}
		if err := commitPin(dir, progPin); err != nil {
			detachXDPNow(linkPath, iface, mode)
			return att, false, err
		}
		att.Via = via
		att.Mode = string(mode)
		if len(reasons) > 0 {
			att.Reason = "fell back to " + string(mode) + " (" + strings.Join(reasons, "; ") + ")"
		}
		return att, false, nil
	}
	os.Remove(filepath.Join(dir, progPin+pinNewSuffix))
	hint := ""
	if opts.XDPMode == bpf.XDPNative {
		hint = ": the driver refused native mode (virtio_net with LRO/too many queues or a large MTU?); retry with --xdp-mode generic or --hook tc"
	}
	return att, false, fmt.Errorf("attach xdp to %s: %s%s", att.Iface, strings.Join(reasons, "; "), hint)
}

// attachXDPMode tries bpf_link first (5.9+), netlink where links are not
// supported for XDP.
func attachXDPMode(iface netlink.Link, prog *ebpf.Program, mode bpf.XDPMode, linkPath string, noLink bool) (string, error) {
	lflags := link.XDPDriverMode
	nflags := xdpFlagsDrvMode
	if mode == bpf.XDPGeneric {
		lflags = link.XDPGenericMode
		nflags = xdpFlagsSKBMode
	}
	var l link.Link
	err := ebpf.ErrNotSupported
	if !noLink {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Attrs().Index, Flags: lflags})
	}
	if err == nil {
		if perr := l.Pin(linkPath); perr != nil {
			l.Close()
			return "", fmt.Errorf("pin xdp link: %w", perr)
		}
		l.Close()
		return "bpf_link", nil
	}
	if !linkUnsupported(err) {
		return "", err
	}
	if err := netlink.LinkSetXdpFdWithFlags(iface, prog.FD(), nflags|xdpFlagsUpdateIfNoExist); err != nil {
		return "", err
	}
	return "netlink", nil
}

// linkUnsupported: the kernel has no bpf_link for this attach type.
func linkUnsupported(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP)
}

func currentXDPMode(iface netlink.Link) string {
	l, err := netlink.LinkByIndex(iface.Attrs().Index)
	if err != nil || l.Attrs().Xdp == nil {
		return "unknown"
	}
	return modeName(l.Attrs().Xdp.AttachMode)
}

func detachXDPNow(linkPath string, iface netlink.Link, mode bpf.XDPMode) {
	if l, err := link.LoadPinnedLink(linkPath, nil); err == nil {
		l.Unpin()
		l.Close()
		return
	}
	flags := xdpFlagsDrvMode
	if mode == bpf.XDPGeneric {
		flags = xdpFlagsSKBMode
	}
	netlink.LinkSetXdpFdWithFlags(iface, -1, flags)
}

const (
	tcFilterHandle   = 0x1
	tcFilterPriority = 0x1
	tcFilterName     = "xdplb"
)

// attachTC attaches prog on ingress: tcx link where the kernel has it
// (6.6+), a clsact bpf filter (direct-action) otherwise. Pins as attachXDP.
func attachTC(opts Options, dir string, iface netlink.Link, prog *ebpf.Program) (Attachment, bool, error) {
	att := Attachment{Iface: iface.Attrs().Name, Ifindex: iface.Attrs().Index, Hook: bpf.HookTC}
	linkPath := filepath.Join(dir, bpf.HookTC.LinkPin())
	progPin := bpf.HookTC.ProgPin()
	attached, _ := tcProgIDs(iface)
	attached = append(attached, tcxProgIDs(iface)...)
	if err := settleSwap(dir, bpf.HookTC, attached); err != nil {
		return att, false, err
	}
	if err := pinNew(prog, dir, progPin); err != nil {
		return att, false, err
	}
	l, err := pinnedLinkFor(linkPath, iface, opts.Instance, opts.Logger)
	if err != nil {
		os.Remove(filepath.Join(dir, progPin+pinNewSuffix))
		return att, false, err
	}
	if l != nil {
		defer l.Close()
		if err := l.Update(prog); err != nil {
			return att, false, fmt.Errorf("replace program on pinned tcx link: %w", err)
		}
		crashAt("replaced")
		if err := commitPin(dir, progPin); err != nil {
			return att, false, err
		}
		att.Via, att.Mode = "bpf_link", "tcx"
		return att, true, nil
	}
	ids, _ := tcProgIDs(iface)
	for _, id := range ids {
		if !owns(dir, bpf.HookTC, id) {
			continue
		}
		if err := netlink.FilterReplace(tcFilter(iface, prog)); err != nil {
			return att, false, fmt.Errorf("replace tc filter on %s: %w", att.Iface, err)
		}
		crashAt("replaced")
		if err := commitPin(dir, progPin); err != nil {
			return att, false, err
		}
		att.Via, att.Mode = "netlink", "clsact"
		return att, true, nil
	}

	err = ebpf.ErrNotSupported
	if !opts.NoLink {
		l, err = link.AttachTCX(link.TCXOptions{Interface: iface.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
	}
	if err == nil {
		if err := l.Pin(linkPath); err != nil {
			l.Close()
			return att, false, fmt.Errorf("pin tcx link: %w", err)
		}
		l.Close()
		if err := commitPin(dir, progPin); err != nil {
			detachTCNow(linkPath, iface)
			return att, false, err
		}
		att.Via, att.Mode = "bpf_link", "tcx"
		return att, false, nil
	}
	if !linkUnsupported(err) {
		return att, false, fmt.Errorf("attach tcx to %s: %w", att.Iface, err)
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: iface.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return att, false, fmt.Errorf("add clsact qdisc to %s: %w", att.Iface, err)
	}
	if err := netlink.FilterAdd(tcFilter(iface, prog)); err != nil {
		return att, false, fmt.Errorf("add tc filter to %s: %w", att.Iface, err)
	}
	if err := commitPin(dir, progPin); err != nil {
		detachTCNow(linkPath, iface)
		return att, false, err
	}
	att.Via, att.Mode = "netlink", "clsact"
	att.Reason = "no tcx on this kernel (" + err.Error() + ")"
	return att, false, nil
}

func tcFilter(iface netlink.Link, prog *ebpf.Program) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: iface.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: tcFilterHandle, Priority: tcFilterPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: tcFilterName, DirectAction: true,
	}
}

// tcProgIDs lists the programs in iface's clsact ingress filters.
func tcProgIDs(iface netlink.Link) ([]ebpf.ProgramID, error) {
	filters, err := netlink.FilterList(iface, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return nil, err
	}
	var ids []ebpf.ProgramID
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Id != 0 {
			ids = append(ids, ebpf.ProgramID(bf.Id))
		}
	}
	return ids, nil
}

func containsID(ids []ebpf.ProgramID, id ebpf.ProgramID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func detachTCNow(linkPath string, iface netlink.Link) {
	if l, err := link.LoadPinnedLink(linkPath, nil); err == nil {
		l.Unpin()
		l.Close()
		return
	}
	netlink.FilterDel(&netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: iface.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
		Handle: tcFilterHandle, Priority: tcFilterPriority, Protocol: unix.ETH_P_ALL}})
	removeEmptyClsact(iface)
}

func removeEmptyClsact(iface netlink.Link) {
	if f, err := netlink.FilterList(iface, netlink.HANDLE_MIN_INGRESS); err != nil || len(f) > 0 {
		return
	}
	if f, err := netlink.FilterList(iface, netlink.HANDLE_MIN_EGRESS); err != nil || len(f) > 0 {
		return
	}
	netlink.QdiscDel(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: iface.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	})
}

// ErrPinsGone: an instance's pins are not on bpffs any more.
var ErrPinsGone = errors.New("pins gone")

// Attached verifies in the kernel that the instance's pinned program is the
// one attached (on any interface of this namespace), and says where.
func Attached(bpffs, instance string) (Attachment, error) {
	dir, err := bpf.InstanceDir(bpffs, instance)
	if err != nil {
		return Attachment{}, err
	}
	if bpffs == "" {
		bpffs = bpf.DefaultBPFFS
	}
	if !mounted(bpffs) {
		return Attachment{}, fmt.Errorf("%w: no bpffs is mounted at %s any more (unmounted?): the pins of instance %q are gone, "+
			"and a program attached through a pinned bpf_link went with them", ErrPinsGone, bpffs, instance)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return Attachment{}, fmt.Errorf("%w: instance %q: %s is gone (removed by hand?)", ErrPinsGone, instance, dir)
	}
	for _, hook := range bpf.Hooks {
		id, err := pinnedProgID(filepath.Join(dir, hook.ProgPin()))
		if err != nil {
			return Attachment{}, err
		}
		if id == 0 {
			continue
		}
		links, err := netlink.LinkList()
		if err != nil {
			return Attachment{}, err
		}
		for _, l := range links {
			att := Attachment{Iface: l.Attrs().Name, Ifindex: l.Attrs().Index, Hook: hook, ProgID: id}
			if hook == bpf.HookXDP {
				if x := l.Attrs().Xdp; x != nil && x.Attached && ebpf.ProgramID(x.ProgId) == id {
					att.Mode = modeName(x.AttachMode)
					att.Via = viaOf(filepath.Join(dir, hook.LinkPin()))
					return att, nil
				}
				continue
			}
			if ids, _ := tcProgIDs(l); containsID(ids, id) {
				att.Mode, att.Via = "clsact", "netlink"
				return att, nil
			}
			if tcxHas(l, id) {
				att.Mode, att.Via = "tcx", "bpf_link"
				return att, nil
			}
		}
		return Attachment{}, fmt.Errorf("instance %q: program %d is pinned but not attached to any interface", instance, id)
	}
	return Attachment{}, fmt.Errorf("instance %q: no program pinned under %s", instance, dir)
}

func viaOf(linkPath string) string {
	if _, err := os.Stat(linkPath); err == nil {
		return "bpf_link"
	}
	return "netlink"
}

// tcxHas says whether program id is attached through tcx ingress on l.
func tcxHas(l netlink.Link, id ebpf.ProgramID) bool { return containsID(tcxProgIDs(l), id) }

// tcxProgIDs lists the programs attached through tcx ingress on l (none
// before 6.6).
func tcxProgIDs(l netlink.Link) []ebpf.ProgramID {
	res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// Detach removes an instance: its attachment on every interface, its pins
// and the pin directory. Only what xdplb pins there is unlinked; the
// directory goes only if nothing else is in it. Detaching what is not
// there is not an error.
func Detach(bpffs, instance string) error {
	dir, err := bpf.InstanceDir(bpffs, instance)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	spec, err := bpf.EmbeddedSpec()
	if err != nil {
		return err
	}
	var errs []error
	for _, hook := range bpf.Hooks {
		l, err := link.LoadPinnedLink(filepath.Join(dir, hook.LinkPin()), nil)
		if err != nil {
			continue
		}
		// Detach explicitly: the pin's reference is dropped after an RCU
		// grace period, so closing alone may leave it attached a while.
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach link: %w", err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		l.Close()
	}
	// Every interface of the namespace: the instance's programs, pinned
	// or recognized (see recognized), attached through netlink or clsact.
	links, _ := netlink.LinkList()
	for _, l := range links {
		if x := l.Attrs().Xdp; x != nil && x.Attached && owns(dir, bpf.HookXDP, ebpf.ProgramID(x.ProgId)) {
			flags := xdpFlagsDrvMode
			if x.AttachMode == xdpAttachedSKB {
				flags = xdpFlagsSKBMode
			}
			if err := detachXDPNetlink(l, ebpf.ProgramID(x.ProgId), flags); err != nil {
				errs = append(errs, fmt.Errorf("detach xdp from %s: %w", l.Attrs().Name, err))
			}
		}
		ids, _ := tcProgIDs(l)
		for _, id := range ids {
			if owns(dir, bpf.HookTC, id) {
				detachTCNow(filepath.Join(dir, bpf.HookTC.LinkPin()), l)
				break
			}
		}
	}
	if err := removeInstance(bpffs, instance, dir, pinNames(spec)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeInstance unlinks an instance's pins and its directory, and the
// xdplb/ directory if it is then empty.
func removeInstance(bpffs, instance, dir string, names []string) error {
	if err := removePins(dir, names); err != nil {
		return fmt.Errorf("instance %q: %w", instance, err)
	}
	unix.Rmdir(bpf.StateDir(bpffs)) // only if now empty
	return nil
}

// detachXDPNetlink removes program id from l. EBUSY means a bpf_link holds
// it, one that is going away (its last reference is dropped after an RCU
// grace period): wait for that rather than fail.
func detachXDPNetlink(l netlink.Link, id ebpf.ProgramID, flags int) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := netlink.LinkSetXdpFdWithFlags(l, -1, flags)
		if err == nil || !errors.Is(err, unix.EBUSY) {
			return err
		}
		cur, lerr := netlink.LinkByIndex(l.Attrs().Index)
		if lerr == nil && (cur.Attrs().Xdp == nil || !cur.Attrs().Xdp.Attached || ebpf.ProgramID(cur.Attrs().Xdp.ProgId) != id) {
			return nil // the link went, and took the program with it
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
