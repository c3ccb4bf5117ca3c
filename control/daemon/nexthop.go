package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/control/balancer"
	"github.com/xdplb/xdplb/control/config"
)

// nextHop looks up, through netlink, where packets to addr leave: the
// route's gateway or addr itself, its MAC in the neighbour table, our MAC
// and the interface. Without a neighbour entry it returns nil and no
// error; an error means the lookup failed (no route, no socket): this
// node's trouble, which says nothing of the backend's next hop.
func nextHop(addr netip.Addr) (*balancer.NextHop, error) {
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil {
		return nil, fmt.Errorf("route to %s: %w", addr, err)
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("no route to %s", addr)
	}
	r := routes[0]
	hop := net.IP(addr.AsSlice())
	if r.Gw != nil {
		hop = r.Gw
	}
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return nil, err
	}
	neighs, err := netlink.NeighList(r.LinkIndex, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, n := range neighs {
		if !n.IP.Equal(hop) || len(n.HardwareAddr) != 6 {
			continue
		}
		if n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) == 0 {
			continue
		}
		nh := &balancer.NextHop{Ifindex: uint32(r.LinkIndex)}
		copy(nh.MAC[:], n.HardwareAddr)
		copy(nh.SrcMAC[:], link.Attrs().HardwareAddr)
		return nh, nil
	}
	return nil, nil // no neighbour entry yet
}

// kickNeighbours makes the kernel resolve backends it has no neighbour
// entry for yet (a datagram to the discard port is enough), so the first
// SYN finds the MAC in place. It waits up to half a second for them.
func kickNeighbours(backends []config.BackendSpec, source netip.Addr) {
	var pending bool
	for _, b := range backends {
		if nh, _ := nextHop(b.Addr.Addr()); nh != nil {
			continue
		}
		pending = true
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(source.AsSlice())}, &net.UDPAddr{IP: net.IP(b.Addr.Addr().AsSlice()), Port: 9})
		if err != nil {
			continue
		}
		c.Write(nil)
		c.Close()
	}
	if !pending {
		return
	}
	for range 10 {
		time.Sleep(50 * time.Millisecond)
		done := true
		for _, b := range backends {
			if nh, _ := nextHop(b.Addr.Addr()); nh == nil {
				done = false
			}
		}
		if done {
			return
		}
	}
}
