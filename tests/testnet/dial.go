package testnet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf/packet"
)

// DialContext connects from inside the host's namespace. The returned
// connection stays in the namespace and can be used from any goroutine. Use
// IP literals: a host name would be resolved outside the namespace. It has
// the signature of net.Dialer.DialContext, so it plugs into
// http.Transport.DialContext.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Dial connects from inside the host's namespace with a 5 s timeout.
func (h *Host) Dial(network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h.DialContext(ctx, network, address)
}

// CanDial reports whether a TCP connection to address can be established
// from inside the host within timeout; the connection is closed at once.
func (h *Host) CanDial(address string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp4", address)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Listen opens a listener inside the host's namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the host's namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

var pingID atomic.Uint32

// Ping sends ICMP echo requests from inside the host to dst, one every
// 100 ms, until one is answered or ctx is done, and returns the round trip
// time of the first answer. It needs no ping binary (a raw socket, as root).
func (h *Host) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	if !dst.Is4() {
		return 0, fmt.Errorf("testnet: ping %s: only IPv4", dst)
	}
	pc, err := h.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, fmt.Errorf("testnet: %s: open ICMP socket: %w", h.Name, err)
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { _ = pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	id := uint16(pingID.Add(1)) ^ uint16(time.Now().UnixNano())
	to := &net.IPAddr{IP: net.IP(dst.AsSlice())}
	buf := make([]byte, 1500)
	sent := map[uint16]time.Time{}
	for seq := uint16(1); ; seq++ {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("testnet: ping %s from %s: no answer: %w", dst, h.Name, err)
		}
		sent[seq] = time.Now()
		if _, err := pc.WriteTo(packet.Echo(id, seq, []byte("xdplb-testnet-pi")).Message(), to); err != nil {
			return 0, fmt.Errorf("testnet: ping %s from %s: %w", dst, h.Name, err)
		}
		wait := time.Now().Add(100 * time.Millisecond)
		for {
			if ctx.Err() != nil {
				break
			}
			_ = pc.SetReadDeadline(wait)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return 0, fmt.Errorf("testnet: ping %s from %s: %w", dst, h.Name, err)
			}
			// Go strips the IPv4 header of ip4:icmp sockets.
			if n < 8 || buf[0] != 0 /* echo reply */ || binary.BigEndian.Uint16(buf[4:]) != id {
				continue
			}
			if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(to.IP) {
				continue
			}
			if t0, ok := sent[binary.BigEndian.Uint16(buf[6:])]; ok {
				return time.Since(t0), nil
			}
		}
	}
}

// GratuitousARP broadcasts an unsolicited ARP request for ip from eth1 (the
// announcement keepalived sends when it takes the VIP). Neighbours that
// already have an entry for ip update it to this host's MAC; with the
// default arp_accept=0 they do not create new entries.
func (h *Host) GratuitousARP(ip netip.Addr) error {
	if !ip.Is4() {
		return fmt.Errorf("testnet: gratuitous ARP for %s: only IPv4", ip)
	}
	proto := htons(unix.ETH_P_ARP)
	frame := packet.Gratuitous(packet.MAC(h.MAC), ip).Frame()

	return h.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: h.IfIndex, Halen: 6}
		copy(sa.Addr[:], packet.Broadcast[:])
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return fmt.Errorf("send gratuitous ARP for %s on %s: %w", ip, HostIface, err)
		}
		return nil
	})
}

// htons converts to network byte order, as AF_PACKET wants the protocol.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
