// Package packet builds and reads the frames xdplb's data path handles:
// Ethernet II, IPv4 and TCP (and the ICMP and ARP around them), with one
// Internet checksum.
//
// A packet is described by a value (TCP, ICMP, ARP) whose zero fields take
// sane defaults, and serialised with checksums computed from scratch, so a
// test never trusts the data path's incremental arithmetic to check itself.
// Malformed packets are derived from good ones through the typed header
// views (Frame, IPv4Header, TCPHeader), which read and set one field each.
//
// It is shared by the packet tests, the daemon's client nudge, the SYN
// flood generator and the test network; it imports nothing of xdplb's and
// touches nothing of the kernel's.
package packet

import (
	"encoding/binary"
	"net/netip"
)

// MAC is an Ethernet address.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// EtherType values.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100
	EtherTypeIPv6 = 0x86dd
)

// IP protocol numbers.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Header sizes without options.
const (
	EthLen  = 14
	IPv4Len = 20
	TCPLen  = 20
	ICMPLen = 8
)

// Flags are TCP header flags.
type Flags uint8

const (
	FIN Flags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
)

func (f Flags) String() string {
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG"}
	s := ""
	for i, n := range names {
		if f&(1<<i) != 0 {
			if s != "" {
				s += "|"
			}
			s += n
		}
	}
	if s == "" {
		return "none"
	}
	return s
}

// Defaults of the zero fields.
const (
	DefaultTTL    = 64
	DefaultWindow = 64240
)

// IPv4 fragment field: don't fragment.
const DontFragment = 0x4000

// IP holds the IPv4 header fields a test varies. Addresses come from the
// packet's endpoints.
type IP struct {
	ID  uint16
	TTL uint8 // 0: DefaultTTL
	TOS uint8
	// Frag is the flags+fragment-offset field; 0 means DontFragment, set
	// NoDF for a plain 0.
	Frag uint16
	NoDF bool
}

func (ip IP) frag() uint16 {
	if ip.NoDF {
		return ip.Frag
	}
	if ip.Frag == 0 {
		return DontFragment
	}
	return ip.Frag
}

// TCP is a TCP segment over IPv4 over Ethernet.
type TCP struct {
	SrcMAC, DstMAC MAC
	Src, Dst       netip.AddrPort
	IP             IP
	Flags          Flags
	Seq, Ack       uint32
	Window         uint16 // 0: DefaultWindow
	Options        []byte // padded with zeros to a multiple of 4
	Payload        []byte
}

// Frame is the whole Ethernet frame.
func (p TCP) Frame() Frame {
	b := make([]byte, EthLen+p.len())
	putEth(b, p.DstMAC, p.SrcMAC, EtherTypeIPv4)
	p.put(b[EthLen:])
	return b
}

// Datagram is the IPv4 packet without the Ethernet header, as a raw
// IPPROTO_RAW socket sends it.
func (p TCP) Datagram() []byte {
	b := make([]byte, p.len())
	p.put(b)
	return b
}

func (p TCP) optLen() int { return (len(p.Options) + 3) &^ 3 }

func (p TCP) len() int { return IPv4Len + TCPLen + p.optLen() + len(p.Payload) }

// put writes the IPv4 packet into b, which is p.len() bytes.
func (p TCP) put(b []byte) {
	putIPv4(b, p.IP, ProtoTCP, p.Src.Addr(), p.Dst.Addr(), len(b))
	t := TCPHeader(b[IPv4Len:])
	hlen := TCPLen + p.optLen()
	t.SetSrcPort(p.Src.Port())
	t.SetDstPort(p.Dst.Port())
	t.SetSeq(p.Seq)
	t.SetAck(p.Ack)
	t.SetDataOffset(hlen)
	t.SetFlags(p.Flags)
	w := p.Window
	if w == 0 {
		w = DefaultWindow
	}
	t.SetWindow(w)
	copy(t[TCPLen:], p.Options)
	copy(t[hlen:], p.Payload)
	IPv4Header(b).SetL4Checksum()
}

// ICMP is an ICMPv4 message over IPv4 over Ethernet.
type ICMP struct {
	SrcMAC, DstMAC MAC
	Src, Dst       netip.Addr
	IP             IP
	Type, Code     uint8
	// Rest is the second word of the header: identifier and sequence of
	// an echo, the next-hop MTU of "fragmentation needed".
	Rest [4]byte
	Body []byte
}

// ICMP types and codes.
const (
	ICMPEchoReply       = 0
	ICMPUnreachable     = 3
	ICMPEchoRequest     = 8
	ICMPTimeExceeded    = 11
	ICMPCodeFragNeeded  = 4
	ICMPCodePortUnreach = 3
)

// Echo returns an echo request's type, code, rest and body.
func Echo(id, seq uint16, data []byte) ICMP {
	m := ICMP{Type: ICMPEchoRequest, Body: data}
	binary.BigEndian.PutUint16(m.Rest[0:], id)
	binary.BigEndian.PutUint16(m.Rest[2:], seq)
	return m
}

// FragNeeded returns a "fragmentation needed" error about original (the
// IPv4 packet that did not fit: its header and at least 8 bytes of its
// payload are quoted), announcing mtu.
func FragNeeded(mtu uint16, original []byte) ICMP {
	m := ICMP{Type: ICMPUnreachable, Code: ICMPCodeFragNeeded, Body: quote(original)}
	binary.BigEndian.PutUint16(m.Rest[2:], mtu)
	return m
}

// quote is what RFC 792 asks an ICMP error to carry: the header and the
// first 8 bytes of the datagram's data (RFC 1812 allows more; Linux quotes
// up to 576 bytes in all, and so do we).
func quote(dgram []byte) []byte {
	n := min(len(dgram), 576-IPv4Len-ICMPLen)
	return append([]byte(nil), dgram[:n]...)
}

// Frame is the whole Ethernet frame.
func (m ICMP) Frame() Frame {
	b := make([]byte, EthLen+IPv4Len+ICMPLen+len(m.Body))
	putEth(b, m.DstMAC, m.SrcMAC, EtherTypeIPv4)
	m.put(b[EthLen:])
	return b
}

// Datagram is the IPv4 packet without the Ethernet header.
func (m ICMP) Datagram() []byte {
	b := make([]byte, IPv4Len+ICMPLen+len(m.Body))
	m.put(b)
	return b
}

// Message is the ICMP message alone (header and body), as an ip4:icmp
// socket sends it.
func (m ICMP) Message() []byte {
	b := make([]byte, ICMPLen+len(m.Body))
	m.putMessage(b)
	return b
}

func (m ICMP) put(b []byte) {
	putIPv4(b, m.IP, ProtoICMP, m.Src, m.Dst, len(b))
	m.putMessage(b[IPv4Len:])
}

func (m ICMP) putMessage(b []byte) {
	b[0], b[1] = m.Type, m.Code
	b[2], b[3] = 0, 0
	copy(b[4:8], m.Rest[:])
	copy(b[ICMPLen:], m.Body)
	binary.BigEndian.PutUint16(b[2:], ^Checksum(b, 0))
}

// ARP is an Ethernet/IPv4 ARP message.
type ARP struct {
	SrcMAC, DstMAC       MAC // Ethernet header; DstMAC zero: Broadcast
	Op                   uint16
	SenderMAC, TargetMAC MAC
	SenderIP, TargetIP   netip.Addr
}

// ARP operations.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// Gratuitous returns the unsolicited request a VRRP master broadcasts
// when it takes an address: sender and target are the address itself.
func Gratuitous(mac MAC, ip netip.Addr) ARP {
	return ARP{SrcMAC: mac, DstMAC: Broadcast, Op: ARPRequest, SenderMAC: mac, SenderIP: ip, TargetIP: ip}
}

// Frame is the whole Ethernet frame (42 bytes).
func (a ARP) Frame() Frame {
	b := make([]byte, EthLen+28)
	dst := a.DstMAC
	if dst == (MAC{}) {
		dst = Broadcast
	}
	putEth(b, dst, a.SrcMAC, EtherTypeARP)
	p := b[EthLen:]
	binary.BigEndian.PutUint16(p[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(p[2:], EtherTypeIPv4)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], a.Op)
	copy(p[8:14], a.SenderMAC[:])
	s, t := a.SenderIP.As4(), a.TargetIP.As4()
	copy(p[14:18], s[:])
	copy(p[18:24], a.TargetMAC[:])
	copy(p[24:28], t[:])
	return b
}

func putEth(b []byte, dst, src MAC, typ uint16) {
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], typ)
}

// putIPv4 writes an IPv4 header without options into b, whose length is
// the packet's total length, and its checksum.
func putIPv4(b []byte, f IP, proto uint8, src, dst netip.Addr, total int) {
	ip := IPv4Header(b)
	b[0] = 0x45
	b[1] = f.TOS
	ip.SetTotalLen(uint16(total))
	binary.BigEndian.PutUint16(b[4:], f.ID)
	ip.SetFrag(f.frag())
	ttl := f.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	ip.SetTTL(ttl)
	ip.SetProto(proto)
	ip.SetSrc(src)
	ip.SetDst(dst)
	ip.SetChecksum()
}

// Checksum is the 16-bit one's complement sum of b (RFC 1071), folded,
// added to initial (a partial sum such as PseudoHeaderSum). The checksum
// field of a header is the complement of this sum over the header with
// the field zeroed; a header with a right checksum sums to 0xffff.
func Checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// PseudoHeaderSum is the unfolded sum of the IPv4 pseudo header that TCP
// and UDP checksums cover.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	s, d := src.As4(), dst.As4()
	return uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:])) +
		uint32(proto) + uint32(l4len)
}
