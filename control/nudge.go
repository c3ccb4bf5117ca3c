package control

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// RawNudger makes the client of a removed flow learn at once that its
// connection is gone. It sends the client a bare ACK from the frontend with
// a sequence number outside the client's window; the client answers with
// an ACK of its own (RFC 793: an unacceptable segment gets an ACK), which
// now misses the flow table, passes to the kernel, and draws a RST whose
// sequence number is exactly the one the client expects. Without it a
// client that is only waiting to read (a watch stream) would hang until its
// keepalive fires.
type RawNudger struct {
	once sync.Once
	fd   int
	err  error
}

func (n *RawNudger) open() {
	n.fd, n.err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if n.err != nil {
		n.err = fmt.Errorf("open raw socket: %w", n.err)
	}
}

// Nudge sends the probe from frontend to client.
func (n *RawNudger) Nudge(frontend, client netip.AddrPort) error {
	n.once.Do(n.open)
	if n.err != nil {
		return n.err
	}
	pkt := nudgePacket(frontend, client)
	sa := &unix.SockaddrInet4{Addr: client.Addr().As4()}
	return unix.Sendto(n.fd, pkt, 0, sa)
}

// Close releases the socket.
func (n *RawNudger) Close() error {
	if n.fd > 0 {
		return unix.Close(n.fd)
	}
	return nil
}

// nudgePacket builds IPv4+TCP: ACK, random sequence and acknowledgment
// numbers (the window is 2^16 of 2^32: an in-window hit is harmless too,
// the client acknowledges it all the same).
func nudgePacket(from, to netip.AddrPort) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64
	b[9] = unix.IPPROTO_TCP
	s, d := from.Addr().As4(), to.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^onesSum(b[:20], 0))
	tcp := b[20:]
	binary.BigEndian.PutUint16(tcp[0:], from.Port())
	binary.BigEndian.PutUint16(tcp[2:], to.Port())
	rand.Read(tcp[4:12])
	tcp[12] = 5 << 4
	tcp[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(tcp[14:], 1024)
	pseudo := uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:])) + unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(tcp[16:], ^onesSum(tcp, pseudo))
	return b
}

func onesSum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
