package bpf

import (
	"encoding/binary"
	"net/netip"
)

// Packets built in Go, with checksums computed from scratch, so tests never
// trust the data path's incremental arithmetic to check itself.

type testPacket struct {
	srcMAC, dstMAC [6]byte
	src, dst       netip.AddrPort
	flags          uint8
	seq, ack       uint32
	window         uint16
	ipID           uint16
	ttl            uint8
	tcpOptions     []byte // multiple of 4
	payload        []byte
}

const (
	fFIN = 0x01
	fSYN = 0x02
	fRST = 0x04
	fPSH = 0x08
	fACK = 0x10
)

func (p testPacket) bytes() []byte {
	ipLen := 20
	tcpLen := 20 + len(p.tcpOptions)
	total := ipLen + tcpLen + len(p.payload)
	b := make([]byte, 14+total)
	copy(b[0:6], p.dstMAC[:])
	copy(b[6:12], p.srcMAC[:])
	binary.BigEndian.PutUint16(b[12:14], 0x0800)

	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	binary.BigEndian.PutUint16(ip[4:6], p.ipID)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	ip[8] = ttl
	ip[9] = 6
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:12], ^checksum(ip[:20], 0))

	tcp := ip[ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], p.src.Port())
	binary.BigEndian.PutUint16(tcp[2:4], p.dst.Port())
	binary.BigEndian.PutUint32(tcp[4:8], p.seq)
	binary.BigEndian.PutUint32(tcp[8:12], p.ack)
	tcp[12] = byte(tcpLen/4) << 4
	tcp[13] = p.flags
	w := p.window
	if w == 0 {
		w = 64240
	}
	binary.BigEndian.PutUint16(tcp[14:16], w)
	copy(tcp[20:], p.tcpOptions)
	copy(tcp[tcpLen:], p.payload)
	binary.BigEndian.PutUint16(tcp[16:18], ^checksum(tcp[:tcpLen+len(p.payload)], pseudoSum(s, d, tcpLen+len(p.payload))))
	return b
}

// checksum is the 16-bit one's complement sum of b added to initial.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func pseudoSum(src, dst [4]byte, l4len int) uint32 {
	return uint32(binary.BigEndian.Uint16(src[0:])) + uint32(binary.BigEndian.Uint16(src[2:])) +
		uint32(binary.BigEndian.Uint16(dst[0:])) + uint32(binary.BigEndian.Uint16(dst[2:])) +
		6 + uint32(l4len)
}

// csumResidual returns the one's complement sums over the IPv4 header and
// the TCP segment (pseudo header included) of an Ethernet frame; both are
// 0xffff when the checksums are right, and an incremental update keeps
// whatever error an input had.
func csumResidual(b []byte) (ipRes, tcpRes uint16, ok bool) {
	if len(b) < 14+20 || binary.BigEndian.Uint16(b[12:]) != 0x0800 {
		return 0, 0, false
	}
	ip := b[14:]
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl+20 || total > len(ip) || ip[9] != 6 {
		return 0, 0, false
	}
	var s, d [4]byte
	copy(s[:], ip[12:16])
	copy(d[:], ip[16:20])
	return checksum(ip[:ihl], 0), checksum(ip[ihl:total], pseudoSum(s, d, total-ihl)), true
}

func mac(last byte) [6]byte { return [6]byte{0x02, 0x00, 0x00, 0x00, 0x00, last} }
