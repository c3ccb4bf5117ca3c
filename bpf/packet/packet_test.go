package packet

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"
)

// TestChecksumKnownValues checks the sum against published examples, not
// against itself.
func TestChecksumKnownValues(t *testing.T) {
	// RFC 1071 section 3: the folded sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
	if got := Checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0); got != 0xddf2 {
		t.Fatalf("RFC 1071 example: %#x, want 0xddf2", got)
	}
	// A captured IPv4 header (192.168.0.1 -> 192.168.0.199, UDP) whose
	// checksum field is b861.
	hdr, _ := hex.DecodeString("450000730000400040110000c0a80001c0a800c7")
	if got := ^Checksum(hdr, 0); got != 0xb861 {
		t.Fatalf("IPv4 header checksum %#x, want 0xb861", got)
	}
	// Odd length: the last byte is the high half of a word.
	if got := Checksum([]byte{0x01}, 0); got != 0x0100 {
		t.Fatalf("odd length: %#x", got)
	}
}

func TestTCPFrame(t *testing.T) {
	p := TCP{
		SrcMAC: MAC{2, 0, 0, 0, 0, 1}, DstMAC: MAC{2, 0, 0, 0, 0, 0x98},
		Src: netip.MustParseAddrPort("10.10.10.101:40001"), Dst: netip.MustParseAddrPort("10.10.10.100:6443"),
		IP: IP{ID: 7}, Flags: SYN, Seq: 1000, Options: []byte{2, 4, 5, 0xb4, 1, 1, 4},
	}
	f := p.Frame()
	if len(f) != EthLen+IPv4Len+TCPLen+8 {
		t.Fatalf("length %d", len(f))
	}
	if ip, tcp, ok := Residuals(f); !ok || ip != 0xffff || tcp != 0xffff {
		t.Fatalf("residuals ip %#x tcp %#x ok %v", ip, tcp, ok)
	}
	got, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	want := Parsed{SrcMAC: p.SrcMAC, DstMAC: p.DstMAC, Src: p.Src, Dst: p.Dst, Flags: SYN, Seq: 1000,
		Window: DefaultWindow, TTL: DefaultTTL, Payload: []byte{}}
	if got.Src != want.Src || got.Dst != want.Dst || got.Flags != want.Flags || got.Seq != want.Seq ||
		got.Window != want.Window || got.TTL != want.TTL || got.SrcMAC != want.SrcMAC || len(got.Payload) != 0 {
		t.Fatalf("parsed %+v, want %+v", got, want)
	}
	if f.IPv4().Frag() != DontFragment || f.TCP().DataOffset() != 28 {
		t.Fatalf("frag %#x doff %d", f.IPv4().Frag(), f.TCP().DataOffset())
	}
	// The datagram is the frame without its Ethernet header.
	if !bytes.Equal(p.Datagram(), f[EthLen:]) {
		t.Fatal("datagram differs from the frame's IPv4 part")
	}
	// A mutation through a setter breaks the checksum it does not fix...
	m := f.Clone()
	m.TCP().SetSeq(1001)
	if _, tcp, _ := Residuals(m); tcp == 0xffff {
		t.Fatal("changed sequence number kept a right checksum")
	}
	// ...and SetL4Checksum repairs it.
	m.IPv4().SetL4Checksum()
	if _, tcp, _ := Residuals(m); tcp != 0xffff {
		t.Fatalf("after SetL4Checksum: %#x", tcp)
	}
	if f.TCP().Seq() != 1000 {
		t.Fatal("Clone shares bytes with the original")
	}
}

func TestParseRejects(t *testing.T) {
	good := TCP{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.0.2:2"), Flags: ACK}.Frame()
	for name, mut := range map[string]func(Frame) Frame{
		"short":       func(f Frame) Frame { return f[:30] },
		"arp":         func(f Frame) Frame { f.SetEtherType(EtherTypeARP); return f },
		"udp":         func(f Frame) Frame { f.IPv4().SetProto(ProtoUDP); return f },
		"total > len": func(f Frame) Frame { f.IPv4().SetTotalLen(1500); return f },
		"doff 4":      func(f Frame) Frame { f.TCP().SetDataOffset(4); return f },
		"doff 60":     func(f Frame) Frame { f.TCP().SetDataOffset(60); return f },
		"ihl 4":       func(f Frame) Frame { f.IPv4().SetVersionIHL(4, 1); return f },
	} {
		if _, err := Parse(mut(good.Clone())); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestICMP(t *testing.T) {
	orig := TCP{Src: netip.MustParseAddrPort("10.10.10.100:20000"), Dst: netip.MustParseAddrPort("10.10.10.50:6443"),
		Flags: ACK, Payload: make([]byte, 1400)}.Datagram()
	m := FragNeeded(1280, orig)
	m.Src, m.Dst = netip.MustParseAddr("10.10.10.1"), netip.MustParseAddr("10.10.10.100")
	f := m.Frame()
	if Checksum(f.IPv4()[:IPv4Len], 0) != 0xffff {
		t.Fatal("ip checksum")
	}
	msg := f.IPv4().Payload()
	if Checksum(msg, 0) != 0xffff || msg[0] != ICMPUnreachable || msg[1] != ICMPCodeFragNeeded || msg[6] != 0x05 || msg[7] != 0x00 {
		t.Fatalf("icmp % x", msg[:8])
	}
	if len(msg) != 576-IPv4Len || !bytes.Equal(msg[ICMPLen:ICMPLen+IPv4Len+8], orig[:IPv4Len+8]) {
		t.Fatalf("quoted %d bytes", len(msg)-ICMPLen)
	}
	e := Echo(0x1234, 1, []byte("abc"))
	if b := e.Message(); Checksum(b, 0) != 0xffff || b[0] != ICMPEchoRequest || b[4] != 0x12 || b[7] != 1 {
		t.Fatalf("echo % x", b)
	}
}

func TestARP(t *testing.T) {
	mac := MAC{2, 0, 0, 0, 0, 0x98}
	f := Gratuitous(mac, netip.MustParseAddr("10.10.10.100")).Frame()
	want, _ := hex.DecodeString("ffffffffffff020000000098" + "0806" + "0001080006040001" + "020000000098" + "0a0a0a64" + "000000000000" + "0a0a0a64")
	if !bytes.Equal(f, want) {
		t.Fatalf("gratuitous ARP\n got %x\nwant %x", []byte(f), want)
	}
}

func TestFlagsString(t *testing.T) {
	if s := (SYN | ACK).String(); s != "SYN|ACK" {
		t.Fatal(s)
	}
}
