//go:build linux

// Package smoke proves that a kernel can run what xdplb needs: load an XDP
// program with cilium/ebpf, pin its map on bpffs, attach it natively to a
// veth, and see it count a frame. tests/vm runs it on each kernel of the
// matrix; on the host it runs with `go test` like any test (as root).
package smoke

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/testenv"
)

// report prints a line the matrix runner collects (tests/vm/vmrun looks for
// "REPORT:" anywhere in a line).
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	fmt.Printf("REPORT: smoke: "+format+"\n", args...)
}

func TestXDPOnVeth(t *testing.T) {
	testenv.RequireRoot(t, "CAP_BPF, CAP_NET_ADMIN: loads and attaches an XDP program; tests/vm/run-kernel.sh runs it as root in a guest")
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatalf("remove memlock rlimit (kernels before 5.11 charge BPF memory to it): %v", err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	report(t, "kernel %s", release)

	newNetns(t)
	v0, v1 := newVeth(t, "xsm0", "xsm1")

	counter, prog := loadCounter(t)
	if info, err := prog.Info(); err == nil {
		if n, ok := info.VerifiedInstructions(); ok {
			report(t, "verified_insns=%d", n)
		} else {
			report(t, "verified_insns=unknown (kernel < 5.16)")
		}
	}
	pinMap(t, counter)

	how := attachXDP(t, prog, v0)
	report(t, "attach=%s mode=native iface=veth", how)

	before := count(t, counter)
	sendFrame(t, v1, v0.Attrs().HardwareAddr)
	deadline := time.Now().Add(5 * time.Second)
	for count(t, counter) == before {
		if time.Now().After(deadline) {
			t.Fatalf("XDP program on %s saw no frame within 5s (counter stays %d)", v0.Attrs().Name, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	report(t, "xdp counted %d frame(s) on veth", count(t, counter)-before)
}

// newNetns moves the test onto a locked OS thread in a new network
// namespace. The thread is never unlocked, so Go discards it (and with it the
// namespace) when the test ends.
func newNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
}

func newVeth(t *testing.T, a, b string) (netlink.Link, netlink.Link) {
	t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = a
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: b}); err != nil {
		t.Fatalf("add veth %s/%s (veth module missing?): %v", a, b, err)
	}
	var links []netlink.Link
	for _, name := range []string{a, b} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", name, err)
		}
		links = append(links, l)
	}
	t.Cleanup(func() { netlink.LinkDel(links[0]) })
	return links[0], links[1]
}

// loadCounter loads an XDP program that adds one to counter[0] for every
// frame and passes it on.
func loadCounter(t *testing.T) (*ebpf.Map, *ebpf.Program) {
	t.Helper()
	counter, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "smoke_count", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	t.Cleanup(func() { counter.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "smoke_xdp",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key = 0
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load XDP program: %+v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return counter, prog
}

// pinMap pins the map on bpffs and reads it back through the pin, proving
// bpffs works. It mounts a private bpffs when /sys/fs/bpf is not one.
func pinMap(t *testing.T, m *ebpf.Map) {
	t.Helper()
	dir := "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		dir = t.TempDir()
		if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
			t.Fatalf("mount a bpffs on %s: %v", dir, err)
		}
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		report(t, "bpffs=private mount")
	} else {
		report(t, "bpffs=/sys/fs/bpf")
	}
	pinDir, err := os.MkdirTemp(dir, "xdplb-smoke-")
	if err != nil {
		t.Fatalf("mkdir on bpffs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(pinDir) })
	pin := filepath.Join(pinDir, "count")
	if err := m.Pin(pin); err != nil {
		t.Fatalf("pin map: %v", err)
	}
	back, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatalf("load pinned map: %v", err)
	}
	back.Close()
}

// attachXDP attaches in native mode through a bpf_link (5.9+) and falls back
// to netlink on older kernels, like the loader does.
func attachXDP(t *testing.T, prog *ebpf.Program, l netlink.Link) string {
	t.Helper()
	ifindex := l.Attrs().Index
	lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err == nil {
		t.Cleanup(func() { lk.Close() })
		return "bpf_link"
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("attach XDP to %s through bpf_link: %v", l.Attrs().Name, err)
	}
	if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), nl.XDP_FLAGS_DRV_MODE); err != nil {
		t.Fatalf("attach XDP to %s through netlink: %v", l.Attrs().Name, err)
	}
	t.Cleanup(func() { netlink.LinkSetXdpFdWithFlags(l, -1, nl.XDP_FLAGS_DRV_MODE) })
	return "netlink"
}

func count(t *testing.T, m *ebpf.Map) uint64 {
	t.Helper()
	var n uint64
	if err := m.Lookup(uint32(0), &n); err != nil {
		t.Fatalf("read counter: %v", err)
	}
	return n
}

// sendFrame writes one Ethernet frame (local experimental EtherType) out of
// l with a packet socket; it arrives on l's veth peer.
func sendFrame(t *testing.T, l netlink.Link, dst net.HardwareAddr) {
	t.Helper()
	const etherType = 0x88b5
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(etherType)))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	defer unix.Close(fd)
	var frame bytes.Buffer
	frame.Write(dst)
	frame.Write(l.Attrs().HardwareAddr)
	binary.Write(&frame, binary.BigEndian, uint16(etherType))
	frame.Write(make([]byte, 46))
	addr := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6, Protocol: htons(etherType)}
	copy(addr.Addr[:], dst)
	if err := unix.Sendto(fd, frame.Bytes(), 0, addr); err != nil {
		t.Fatalf("send frame on %s: %v", l.Attrs().Name, err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
