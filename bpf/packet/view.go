package packet

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Frame is an Ethernet frame. Its accessors read and set one field each
// and assume the frame is long enough for it: they are for building and
// mutating test packets, not for parsing untrusted input (Parse does that).
type Frame []byte

// DstMAC, SrcMAC and EtherType of the Ethernet header.
func (f Frame) DstMAC() (m MAC)   { copy(m[:], f[0:6]); return }
func (f Frame) SrcMAC() (m MAC)   { copy(m[:], f[6:12]); return }
func (f Frame) EtherType() uint16 { return binary.BigEndian.Uint16(f[12:]) }

// SetMACs sets the Ethernet addresses.
func (f Frame) SetMACs(dst, src MAC) { copy(f[0:6], dst[:]); copy(f[6:12], src[:]) }

// SetEtherType sets the Ethernet type.
func (f Frame) SetEtherType(t uint16) { binary.BigEndian.PutUint16(f[12:], t) }

// IPv4 is the frame's IPv4 header and what follows it.
func (f Frame) IPv4() IPv4Header { return IPv4Header(f[EthLen:]) }

// TCP is the TCP header of a TCP/IPv4 frame, after the IPv4 header's
// options.
func (f Frame) TCP() TCPHeader { return f.IPv4().Payload() }

// Clone returns a copy, to mutate without touching the original.
func (f Frame) Clone() Frame { return append(Frame(nil), f...) }

// IPv4Header is an IPv4 header followed by its payload.
type IPv4Header []byte

func (h IPv4Header) Version() uint8         { return h[0] >> 4 }
func (h IPv4Header) HeaderLen() int         { return int(h[0]&0xf) * 4 }
func (h IPv4Header) TotalLen() uint16       { return binary.BigEndian.Uint16(h[2:]) }
func (h IPv4Header) Frag() uint16           { return binary.BigEndian.Uint16(h[6:]) }
func (h IPv4Header) TTL() uint8             { return h[8] }
func (h IPv4Header) Proto() uint8           { return h[9] }
func (h IPv4Header) HeaderChecksum() uint16 { return binary.BigEndian.Uint16(h[10:]) }
func (h IPv4Header) Src() netip.Addr        { return netip.AddrFrom4([4]byte(h[12:16])) }
func (h IPv4Header) Dst() netip.Addr        { return netip.AddrFrom4([4]byte(h[16:20])) }

// SetVersionIHL sets the first byte: version and header length in words.
func (h IPv4Header) SetVersionIHL(version, words uint8) { h[0] = version<<4 | words&0xf }
func (h IPv4Header) SetTotalLen(n uint16)               { binary.BigEndian.PutUint16(h[2:], n) }
func (h IPv4Header) SetFrag(v uint16)                   { binary.BigEndian.PutUint16(h[6:], v) }
func (h IPv4Header) SetTTL(v uint8)                     { h[8] = v }
func (h IPv4Header) SetProto(p uint8)                   { h[9] = p }
func (h IPv4Header) SetSrc(a netip.Addr)                { s := a.As4(); copy(h[12:16], s[:]) }
func (h IPv4Header) SetDst(a netip.Addr)                { d := a.As4(); copy(h[16:20], d[:]) }

// SetChecksum recomputes the header checksum.
func (h IPv4Header) SetChecksum() {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], ^Checksum(h[:h.HeaderLen()], 0))
}

// Payload is what follows the header (options included in the header).
func (h IPv4Header) Payload() []byte { return h[h.HeaderLen():] }

// segment is the payload as far as TotalLen says.
func (h IPv4Header) segment() []byte { return h[h.HeaderLen():h.TotalLen()] }

// SetL4Checksum recomputes the TCP or ICMP checksum of the payload.
func (h IPv4Header) SetL4Checksum() {
	seg := h.segment()
	switch h.Proto() {
	case ProtoTCP:
		seg[16], seg[17] = 0, 0
		binary.BigEndian.PutUint16(seg[16:], ^Checksum(seg, PseudoHeaderSum(h.Src(), h.Dst(), ProtoTCP, len(seg))))
	case ProtoICMP:
		seg[2], seg[3] = 0, 0
		binary.BigEndian.PutUint16(seg[2:], ^Checksum(seg, 0))
	}
}

// TCPHeader is a TCP header followed by its payload.
type TCPHeader []byte

func (t TCPHeader) SrcPort() uint16  { return binary.BigEndian.Uint16(t[0:]) }
func (t TCPHeader) DstPort() uint16  { return binary.BigEndian.Uint16(t[2:]) }
func (t TCPHeader) Seq() uint32      { return binary.BigEndian.Uint32(t[4:]) }
func (t TCPHeader) Ack() uint32      { return binary.BigEndian.Uint32(t[8:]) }
func (t TCPHeader) DataOffset() int  { return int(t[12]>>4) * 4 }
func (t TCPHeader) Flags() Flags     { return Flags(t[13]) }
func (t TCPHeader) Window() uint16   { return binary.BigEndian.Uint16(t[14:]) }
func (t TCPHeader) Checksum() uint16 { return binary.BigEndian.Uint16(t[16:]) }

func (t TCPHeader) SetSrcPort(p uint16) { binary.BigEndian.PutUint16(t[0:], p) }
func (t TCPHeader) SetDstPort(p uint16) { binary.BigEndian.PutUint16(t[2:], p) }
func (t TCPHeader) SetSeq(v uint32)     { binary.BigEndian.PutUint32(t[4:], v) }
func (t TCPHeader) SetAck(v uint32)     { binary.BigEndian.PutUint32(t[8:], v) }
func (t TCPHeader) SetWindow(v uint16)  { binary.BigEndian.PutUint16(t[14:], v) }
func (t TCPHeader) SetFlags(f Flags)    { t[13] = byte(f) }

// SetDataOffset sets the header length in bytes (a multiple of 4; the
// field holds words, so 4-byte steps up to 60).
func (t TCPHeader) SetDataOffset(n int) { t[12] = byte(n/4) << 4 }

// Residuals returns the one's complement sums over the IPv4 header and
// over the TCP segment with its pseudo header: both are 0xffff when the
// checksums are right, and an incremental checksum update keeps whatever
// error an input had. ok is false when f is not a TCP/IPv4 frame.
func Residuals(f []byte) (ip, tcp uint16, ok bool) {
	if len(f) < EthLen+IPv4Len || Frame(f).EtherType() != EtherTypeIPv4 {
		return 0, 0, false
	}
	h := Frame(f).IPv4()
	ihl, total := h.HeaderLen(), int(h.TotalLen())
	if ihl < IPv4Len || total < ihl+TCPLen || total > len(h) || h.Proto() != ProtoTCP {
		return 0, 0, false
	}
	return Checksum(h[:ihl], 0), Checksum(h[ihl:total], PseudoHeaderSum(h.Src(), h.Dst(), ProtoTCP, total-ihl)), true
}

// Parsed is a TCP/IPv4 frame read back.
type Parsed struct {
	SrcMAC, DstMAC MAC
	Src, Dst       netip.AddrPort
	Flags          Flags
	Seq, Ack       uint32
	Window         uint16
	TTL            uint8
	Payload        []byte
}

// ErrNotTCP is returned by Parse for anything but a whole TCP/IPv4 frame.
var ErrNotTCP = errors.New("not a whole TCP/IPv4 frame")

// Parse reads a TCP/IPv4 Ethernet frame, bounds-checked.
func Parse(f []byte) (Parsed, error) {
	if len(f) < EthLen+IPv4Len+TCPLen || Frame(f).EtherType() != EtherTypeIPv4 {
		return Parsed{}, ErrNotTCP
	}
	h := Frame(f).IPv4()
	ihl, total := h.HeaderLen(), int(h.TotalLen())
	if h.Version() != 4 || ihl < IPv4Len || total > len(h) || total < ihl+TCPLen || h.Proto() != ProtoTCP {
		return Parsed{}, ErrNotTCP
	}
	t := TCPHeader(h[ihl:total])
	doff := t.DataOffset()
	if doff < TCPLen || doff > len(t) {
		return Parsed{}, ErrNotTCP
	}
	return Parsed{
		SrcMAC: Frame(f).SrcMAC(), DstMAC: Frame(f).DstMAC(),
		Src: netip.AddrPortFrom(h.Src(), t.SrcPort()), Dst: netip.AddrPortFrom(h.Dst(), t.DstPort()),
		Flags: t.Flags(), Seq: t.Seq(), Ack: t.Ack(), Window: t.Window(), TTL: h.TTL(),
		Payload: append([]byte(nil), t[doff:]...),
	}, nil
}
