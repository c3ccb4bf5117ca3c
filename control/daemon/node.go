package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
)

// nodeFacts is what the configuration means on this node.
type nodeFacts struct {
	// local: the frontend is the node's own address (the guide's
	// single-Nginx variant), not a VIP.
	local bool
	// source is the address health checks come from: never the VIP.
	source netip.Addr
	// own is the node's address checks come from when check-source is
	// not set (a reload may set or unset it).
	own  netip.Addr
	snat config.PortRange
	data bpf.Config
}

// examineNode works out, from the interface's addresses and the kernel's
// ephemeral port range, whether the frontend is the node's own address,
// the SNAT range and the check source.
func examineNode(cfg config.Config) (nodeFacts, error) {
	var n nodeFacts
	iface, err := netlink.LinkByName(cfg.Iface)
	if err != nil {
		return n, fmt.Errorf("interface %q not found: %w", cfg.Iface, err)
	}
	addrs, err := netlink.AddrList(iface, netlink.FAMILY_V4)
	if err != nil {
		return n, fmt.Errorf("list addresses of %s: %w", cfg.Iface, err)
	}
	var own []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || a.Flags&unix.IFA_F_SECONDARY != 0 {
			continue
		}
		own = append(own, ip)
	}
	eph, err := config.ReadEphemeralRange(config.EphemeralRangePath)
	if err != nil {
		return n, err
	}
	return decideNode(cfg, own, eph)
}

// decideNode is examineNode's decision, given the interface's primary
// addresses and the ephemeral range.
func decideNode(cfg config.Config, own []netip.Addr, eph config.PortRange) (nodeFacts, error) {
	var n nodeFacts
	for _, ip := range own {
		if ip == cfg.VIP {
			n.local = true
		} else if !n.source.IsValid() {
			n.source = ip
		}
	}
	if n.local {
		n.source = cfg.VIP
	}
	n.own = n.source
	if cfg.CheckSource.IsValid() {
		n.source = cfg.CheckSource
	}
	if !n.source.IsValid() {
		return n, fmt.Errorf("%s has no IPv4 address of its own to run health checks from (the VIP is never used): add one or set check-source", cfg.Iface)
	}
	n.snat = cfg.SNATPorts
	if n.snat.IsZero() {
		n.snat = config.DefaultSNATPorts(cfg.Port, n.local, eph)
		if n.snat.IsZero() {
			return n, errors.New("no free SNAT port range: set snat-ports")
		}
	}
	if err := config.ValidateSNATAgainstKernel(n.local, n.snat, eph); err != nil {
		return n, err
	}
	n.data = bpf.Config{
		Frontend: netip.AddrPortFrom(cfg.VIP, cfg.Port), SNATLo: n.snat.Lo, SNATHi: n.snat.Hi,
		IdleTimeout: cfg.EstablishedTimeout,
		MaxConns:    cfg.MaxConns, MaxConnsPerClient: cfg.MaxConnsPerClient,
		// NoBackendReset stays off: the balancer sets the data path's
		// reset policy while it fails open (all-down: open).
	}
	return n, n.data.Validate()
}

const reservedPortsPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"

// reservePorts keeps the kernel from handing out SNAT ports as ephemeral
// ports of the node's own connections (frontend = node's own address).
func reservePorts(r config.PortRange) error {
	cur, err := os.ReadFile(reservedPortsPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", reservedPortsPath, err)
	}
	want := r.String()
	if r.Lo == r.Hi {
		want = fmt.Sprint(r.Lo)
	}
	for _, part := range strings.Split(strings.TrimSpace(string(cur)), ",") {
		if part == want {
			return nil
		}
	}
	val := want
	if s := strings.TrimSpace(string(cur)); s != "" {
		val = s + "," + want
	}
	if err := os.WriteFile(reservedPortsPath, []byte(val), 0o644); err != nil {
		return fmt.Errorf("reserve SNAT ports %s in %s: %w", want, reservedPortsPath, err)
	}
	return nil
}
