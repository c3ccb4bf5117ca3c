package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/bpf/packet"
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
	ack := packet.TCP{SrcMAC: agentMAC, DstMAC: lbMAC, Src: agent1, Dst: frontend, Flags: packet.ACK, Seq: 2, Payload: make([]byte, 64)}

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
		return packet.TCP{SrcMAC: agentMAC, DstMAC: lbMAC, Src: src, Dst: frontend, Flags: packet.SYN}.Frame()
	}

	b.Run("floor-macswap", func(b *testing.B) { repeated(b, floor, ack.Frame(), xdpTX) })
	b.Run("xdp-established", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		h.identityFlow(Key(agent1, frontend))
		repeated(b, h.xdp, ack.Frame(), xdpTX)
	})
	b.Run("tc-established", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		h.identityFlow(Key(agent1, frontend))
		repeated(b, h.tc, ack.Frame(), tcRedirect)
	})
	b.Run("xdp-pass-other-port", func(b *testing.B) {
		h := newHarness(b, Config{}, threeServers)
		ssh := packet.TCP{SrcMAC: agentMAC, DstMAC: lbMAC, Src: agent1, Dst: netip.AddrPortFrom(vip, 22), Flags: packet.ACK}
		repeated(b, h.xdp, ssh.Frame(), xdpPass)
	})
	b.Run("floor-macswap-single", func(b *testing.B) { single(b, floor, syn, xdpTX) })
	// A connection's setup, as it happens: the client's SYN opens a flow
	// (Maglev pick, SNAT port claim, two inserts), the backend's SYN-ACK
	// moves it to the established table (two inserts, two deletes). Each
	// packet is one run; the two are reported apart.
	b.Run("xdp-new-flow-single", func(b *testing.B) {
		h := newHarness(b, Config{SNATLo: 10000, SNATHi: 60000}, threeServers)
		const n = 5000
		var synT, ackT time.Duration
		for i := 0; i < b.N; i++ {
			for j := 0; j < n; j++ {
				pkt := syn(i*n + j)
				v, d, err := h.xdp.Benchmark(pkt, 1, nil)
				if err != nil || v != xdpTX {
					b.Fatalf("syn: verdict %d err %v", v, err)
				}
				synT += d
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(pkt[26:30])), uint16(pkt[34])<<8|uint16(pkt[35]))
				f, ok := h.flow(TableHalfOpen, Key(src, frontend))
				if !ok {
					b.Fatal("no half-open flow")
				}
				synack := packet.TCP{SrcMAC: mac(0x50), DstMAC: lbMAC, Src: f.Dst(), Dst: f.Src(), Flags: packet.SYN | packet.ACK}
				v, d, err = h.xdp.Benchmark(synack.Frame(), 1, nil)
				if err != nil || v != xdpTX {
					b.Fatalf("syn-ack: verdict %d err %v", v, err)
				}
				ackT += d
			}
			// Keep the established table from filling across b.N rounds.
			h.clearFlows()
		}
		b.ReportMetric(float64(synT.Nanoseconds())/float64(b.N*n), "ns/packet")
		b.ReportMetric(float64(ackT.Nanoseconds())/float64(b.N*n), "synack-ns/packet")
		b.ReportMetric(0, "ns/op")
	})
}

// clearFlows empties both flow tables.
func (h *harness) clearFlows() {
	h.t.Helper()
	for _, t := range FlowTables {
		var keys []FlowKey
		var k FlowKey
		var f Flow
		it := h.table(t).Iterate()
		for it.Next(&k, &f) {
			keys = append(keys, k)
		}
		for _, k := range keys {
			h.table(t).Delete(k)
		}
	}
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
	if err := h.maps.XdplbFlows.Put(k, f); err != nil {
		h.t.Fatal(err)
	}
}
