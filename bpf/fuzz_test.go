package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzXDP: any bytes give a verdict in the allowed set, and any output that
// leaves rewritten is a well-formed TCP/IPv4 packet either from the frontend
// to a configured backend or from the frontend port to a tracked client, with
// checksums exactly as right (or as wrong) as the input's.
func FuzzXDP(f *testing.F) {
	h := newHarness(f, Config{SNATLo: 20000, SNATHi: 20003}, threeServers)
	syn := testPacket{srcMAC: agentMAC, dstMAC: lbMAC, src: agent1, dst: frontend, flags: fSYN}
	f.Add(syn.bytes())
	f.Add(testPacket{srcMAC: agentMAC, dstMAC: lbMAC, src: agent1, dst: frontend, flags: fACK, payload: []byte("x")}.bytes())
	for port := uint16(20000); port <= 20003; port++ {
		for _, s := range threeServers {
			f.Add(testPacket{srcMAC: s.mac, dstMAC: lbMAC, src: s.addr, dst: netip.AddrPortFrom(vip, port), flags: fSYN | fACK}.bytes())
			f.Add(testPacket{srcMAC: s.mac, dstMAC: lbMAC, src: s.addr, dst: netip.AddrPortFrom(vip, port), flags: fRST}.bytes())
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
		h := &harness{t: t, cfg: h.cfg, coll: h.coll, xdp: h.xdp, tc: h.tc}
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
		inIP, inTCP, ok := csumResidual(in)
		if !ok {
			t.Fatalf("forwarded a packet that is not TCP/IPv4: % x", in)
		}
		outIP, outTCP, ok := csumResidual(r.out)
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
			_, est := h.flow(MapFlows, k)
			_, half := h.flow(MapHalfOpen, k)
			if !est && !half {
				t.Fatalf("rewritten toward %v, which is not a tracked client\nin:  % x\nout: % x\nflows: %v\nhalf_open: %v", dst, in, r.out, h.dump(MapFlows), h.dump(MapHalfOpen))
			}
		default:
			t.Fatalf("rewritten %v -> %v: neither toward a backend nor to a client", src, dst)
		}
		if string(r.out[14:14+8]) != string(in[14:14+8]) || r.out[14+8] != in[14+8] {
			t.Fatalf("IP header bytes other than addresses and checksum changed")
		}
	})
}
