package testnet

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/testenv"
)

const reflectPort = 9999

// reflectUDPSpec is an XDP program that sends IPv4/UDP packets to port 9999
// back out of the interface they came in on (XDP_TX), addressed to the
// sender's MAC and from mac; everything else passes.
func reflectUDPSpec(mac net.HardwareAddr) *ebpf.ProgramSpec {
	ne := binary.NativeEndian
	be16 := func(v uint16) int32 { // a big-endian field as a native load sees it
		var b [2]byte
		binary.BigEndian.PutUint16(b[:], v)
		return int32(ne.Uint16(b[:]))
	}
	return &ebpf.ProgramSpec{
		Name:    "xdp_reflect",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 42), // eth + ip (no options) + udp
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JNE.Imm(asm.R5, be16(0x0800), "pass"),
			asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte),
			asm.JNE.Imm(asm.R5, 17, "pass"),
			asm.LoadMem(asm.R5, asm.R2, 36, asm.Half),
			asm.JNE.Imm(asm.R5, be16(reflectPort), "pass"),
			asm.LoadMem(asm.R5, asm.R2, 6, asm.Word),
			asm.StoreMem(asm.R2, 0, asm.R5, asm.Word),
			asm.LoadMem(asm.R5, asm.R2, 10, asm.Half),
			asm.StoreMem(asm.R2, 4, asm.R5, asm.Half),
			asm.StoreImm(asm.R2, 6, int64(int32(ne.Uint32(mac[0:4]))), asm.Word),
			asm.StoreImm(asm.R2, 10, int64(int16(ne.Uint16(mac[4:6]))), asm.Half),
			asm.Mov.Imm(asm.R0, 3), // XDP_TX
			asm.Return(),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
			asm.Return(),
		},
	}
}

// countReflected sends UDP packets from `from` to lb's reflect port and
// counts the frames lb's XDP program sent back that reach `from`'s eth1.
func countReflected(t *testing.T, from, lb *Host, packets int) int {
	t.Helper()
	var fd int
	proto := htons(unix.ETH_P_ALL)
	if err := from.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: from.IfIndex})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	conn, err := from.Dial("udp4", net.JoinHostPort(lb.IP().String(), "9999"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	got := 0
	buf := make([]byte, 2048)
	for i := 0; i < packets; i++ {
		if _, err := conn.Write([]byte("reflect-me")); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // timeout
			}
			f := buf[:n]
			if n >= 42 && bytes.Equal(f[0:6], from.MAC) && bytes.Equal(f[6:12], lb.MAC) &&
				binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17 &&
				binary.BigEndian.Uint16(f[36:]) == reflectPort {
				got++
			}
		}
	}
	return got
}

// TestPassXDPOnPeerMakesXDPTXWork checks the reason AttachPassXDPToPeer
// exists: a frame sent with XDP_TX from a veth reaches the wire only if the
// peer veth runs an XDP program (or has GRO/NAPI enabled).
func TestPassXDPOnPeerMakesXDPTXWork(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	topo := NewTopology(t, Options{}, Spec{LBs: 1, Agents: 1})
	lb, a := topo.LB(1), topo.Agent(1)

	prog, err := ebpf.NewProgram(reflectUDPSpec(lb.MAC))
	if err != nil {
		t.Fatalf("load reflect program: %v", err)
	}
	defer prog.Close()
	if err := lb.Do(func() error {
		l, err := netlink.LinkByIndex(lb.IfIndex)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE)
	}); err != nil {
		t.Fatalf("attach reflect program to lb-1 eth1: %v", err)
	}

	without := countReflected(t, a, lb, 5)
	t.Logf("XDP_TX frames that reached agent-1 without a program on the peer: %d of 5", without)

	if err := lb.AttachPassXDPToPeer(); err != nil {
		t.Fatal(err)
	}
	with := countReflected(t, a, lb, 5)
	if with != 5 {
		t.Errorf("with the pass program on the peer, %d of 5 XDP_TX frames reached agent-1, want 5", with)
	}
	if without != 0 {
		t.Logf("note: this kernel delivered XDP_TX frames without a peer program (veth GRO/NAPI on?)")
	}

	if err := lb.DetachXDPFromPeer(); err != nil {
		t.Fatal(err)
	}
	if attached, _, err := lb.PeerXDPAttached(); err != nil || attached {
		t.Errorf("after detach: attached=%v err=%v", attached, err)
	}
}
