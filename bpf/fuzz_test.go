package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/bpf/packet"
)

// FuzzXDP: any bytes give a verdict in the allowed set, and any output that
// leaves rewritten is a well-formed TCP/IPv4 packet either from the frontend
// to a configured backend or from the frontend port to a tracked client, with
// checksums exactly as right (or as wrong) as the input's.
func FuzzXDP(f *testing.F) {
	h := newHarness(f, Config{SNATLo: 20000, SNATHi: 20003}, threeServers)
	syn := packet.TCP{SrcMAC: agentMAC, DstMAC: lbMAC, Src: agent1, Dst: frontend, Flags: packet.SYN}
	f.Add([]byte(syn.Frame()))
	f.Add([]byte(packet.TCP{SrcMAC: agentMAC, DstMAC: lbMAC, Src: agent1, Dst: frontend, Flags: packet.ACK, Payload: []byte("x")}.Frame()))
	for port := uint16(20000); port <= 20003; port++ {
		for _, s := range threeServers {
			f.Add([]byte(packet.TCP{SrcMAC: s.mac, DstMAC: lbMAC, Src: s.addr, Dst: netip.AddrPortFrom(vip, port), Flags: packet.SYN | packet.ACK}.Frame()))
			f.Add([]byte(packet.TCP{SrcMAC: s.mac, DstMAC: lbMAC, Src: s.addr, Dst: netip.AddrPortFrom(vip, port), Flags: packet.RST}.Frame()))
		}
	}
	f.Add([]byte{})
	f.Add(make([]byte, 14))

	backends := map[netip.AddrPort]bool{}
	for _, s := range threeServers {
		backends[s.addr] = true
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 {
			return // the kernel refuses such test runs
		}
		h := &harness{t: t, cfg: h.cfg, maps: h.maps, xdp: h.xdp, tc: h.tc}
		r, err := h.tryRun(h.xdp, in)
		if err != nil {
			t.Fatal(err)
		}
		switch r.verdict {
		case xdpPass, xdpDrop, xdpTX, xdpRedirect:
		default:
			t.Fatalf("verdict %d", r.verdict)
		}
		if r.verdict != xdpTX && r.verdict != xdpRedirect {
			if string(r.out) != string(in) {
				t.Fatalf("verdict %d but the packet was changed", r.verdict)
			}
			return
		}
		inIP, inTCP, ok := packet.Residuals(in)
		if !ok {
			t.Fatalf("forwarded a packet that is not TCP/IPv4: % x", in)
		}
		outIP, outTCP, ok := packet.Residuals(r.out)
		if !ok || len(r.out) != len(in) {
			t.Fatalf("forwarded output is not a TCP/IPv4 packet of the same length: % x", r.out)
		}
		if inIP != outIP || inTCP != outTCP {
			t.Fatalf("checksum residuals changed: ip %#x->%#x tcp %#x->%#x", inIP, outIP, inTCP, outTCP)
		}
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.out[26:30])), binary.BigEndian.Uint16(r.out[34:]))
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.out[30:34])), binary.BigEndian.Uint16(r.out[36:]))
		switch {
		case backends[dst] && src.Addr() == vip && src.Port() >= 20000 && src.Port() <= 20003:
		case src == frontend:
			k := Key(src, dst)
			k.Saddr, k.Daddr, k.Sport, k.Dport = k.Daddr, k.Saddr, k.Dport, k.Sport
			_, est := h.flow(TableEstablished, k)
			_, half := h.flow(TableHalfOpen, k)
			if !est && !half {
				t.Fatalf("rewritten toward %v, which is not a tracked client\nin:  % x\nout: % x\nflows: %v\nhalf_open: %v", dst, in, r.out, h.dump(TableEstablished), h.dump(TableHalfOpen))
			}
		default:
			t.Fatalf("rewritten %v -> %v: neither toward a backend nor to a client", src, dst)
		}
		if string(r.out[14:14+8]) != string(in[14:14+8]) || r.out[14+8] != in[14+8] {
			t.Fatalf("IP header bytes other than addresses and checksum changed")
		}
	})
}
