package daemon

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf/packet"
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
	sa := &unix.SockaddrInet4{Addr: client.Addr().As4()}
	return unix.Sendto(n.fd, nudgePacket(frontend, client), 0, sa)
}

// Close releases the socket.
func (n *RawNudger) Close() error {
	if n.fd > 0 {
		return unix.Close(n.fd)
	}
	return nil
}

// nudgePacket is the probe: an ACK with random sequence and
// acknowledgment numbers (the window is 2^16 of 2^32: an in-window hit is
// harmless too, the client acknowledges it all the same).
func nudgePacket(from, to netip.AddrPort) []byte {
	var r [8]byte
	rand.Read(r[:])
	return packet.TCP{
		Src: from, Dst: to, Flags: packet.ACK, Window: 1024, IP: packet.IP{NoDF: true},
		Seq: binary.BigEndian.Uint32(r[0:]), Ack: binary.BigEndian.Uint32(r[4:]),
	}.Datagram()
}
