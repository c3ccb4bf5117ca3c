package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkDataPath measures ns/packet inside the kernel (the duration
// BPF_PROG_TEST_RUN reports), side by side with the MAC-swap XDP_TX floor
// on this machine. Run by `make bench`.
//
// Repeated runs reuse one buffer that the program rewrites in place, so the
// established-path figures use a flow whose rewrite maps the packet onto
// itself: the same lookups, checksum and header writes as a real flow, and
// the next repetition matches again. New flows cannot repeat that way; they
// are measured one run per distinct SYN, next to the floor measured the
// same way (which shows what a single run costs on its own).
func BenchmarkDataPath(b *testing.B) {
	requireRoot(b)
	floorSpec, err := LoadFloorSpec()
	if err != nil {
		b.Fatal(err)
	}
	floorColl, err := ebpf.NewCollection(floorSpec)
	if err != nil {
		b.Fatal(err)
	}
	defer floorColl.Close()
	floor := floorColl.Programs["floor_macswap"]
	ack := testPacket{srcMAC: agentMAC, dstMAC: lbMAC, src: agent1, dst: frontend, flags: fACK, seq: 2, payload: make([]byte, 64)}

	repeated := func(b *testing.B, prog *ebpf.Program, in []byte, want uint32) {
		const repeat = 100000
		var total time.Duration
		for i := 0; i < b.N; i++ {
			v, d, err := prog.Benchmark(in, repeat, nil)
			if err != nil {
				b.Fatal(err)
			}
			if v != want {
				b.Fatalf("verdict %d, want %d", v, want)
			}
			total += d
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
		b.ReportMetric(0, "ns/op")
	}
	single := func(b *testing.B, prog *ebpf.Program, packet func(i int) []byte, want uint32) {
		const n = 5000
		var total time.Duration
		for i := 0; i < b.N; i++ {
			for j := 0; j < n; j++ {
				v, d, err := prog.Benchmark(packet(i*n+j), 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				if v != want {
					b.Fatalf("verdict %d, want %d", v, want)
				}
				total += d
			}
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*n), "ns/packet")
		b.ReportMetric(0, "ns/op")
	}
	syn := func(i int) []byte {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(1024+i%60000))
		return testPacket{srcMAC: agentMAC, dstMAC: lbMAC, src: src, dst: frontend, flags: fSYN}.bytes()
	}

	b.Run("floor-macswap", func(b *testing.B) { repeated(b, floor, ack.bytes(), xdpTX) })
	b.Run("xdp-established", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		h.identityFlow(Key(agent1, frontend))
		repeated(b, h.xdp, ack.bytes(), xdpTX)
	})
	b.Run("tc-established", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		h.identityFlow(Key(agent1, frontend))
		repeated(b, h.tc, ack.bytes(), tcRedirect)
	})
	b.Run("xdp-pass-other-port", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		ssh := testPacket{srcMAC: agentMAC, dstMAC: lbMAC, src: agent1, dst: netip.AddrPortFrom(vip, 22), flags: fACK}
		repeated(b, h.xdp, ssh.bytes(), xdpPass)
	})
	b.Run("floor-macswap-single", func(b *testing.B) { single(b, floor, syn, xdpTX) })
	b.Run("xdp-new-flow-single", func(b *testing.B) {
		h := newHarness(b, Config{SNATLo: 10000, SNATHi: 60000}, threeServers)
		single(b, h.xdp, syn, xdpTX)
	})
}

// identityFlow installs an established flow that rewrites k's packets onto
// themselves (see BenchmarkDataPath).
func (h *harness) identityFlow(k FlowKey) {
	h.t.Helper()
	f := Flow{
		Saddr: k.Saddr, Daddr: k.Daddr, Sport: k.Sport, Dport: k.Dport,
		Dmac: mac(0x50), State: uint8(FlowEstablished), Dir: uint8(FlowToBackend),
		CreatedNs: 1, LastSeenNs: 1 << 62,
	}
	if err := h.coll.Maps[MapFlows].Put(k, f); err != nil {
		h.t.Fatal(err)
	}
}
