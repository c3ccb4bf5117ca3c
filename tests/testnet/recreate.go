package testnet

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// RecreateLink deletes the host's veth pair and makes it again under the
// same names and MACs, plugged into the bridge, up, with the IPv4
// addresses eth1 had (the VIP too), tx offload off again when txOffloadOff,
// and the switch end's XDP pass program again if it had one: what a NIC
// driver reload or a hot-unplug and plug does to a real host. The
// ifindexes change (h.IfIndex and h.PeerIndex are updated), and any
// program attached to eth1 goes with the old interface. gap is how long
// the host stays without eth1.
func (h *Host) RecreateLink(txOffloadOff bool, gap time.Duration) error {
	addrs, err := h.Addrs()
	if err != nil {
		return err
	}
	peerXDP, _, _ := h.PeerXDPAttached()
	nh, err := h.handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	old, err := nh.LinkByIndex(h.IfIndex)
	if err != nil {
		return fmt.Errorf("testnet: %s: look up %s: %w", h.Name, HostIface, err)
	}
	if err := nh.LinkDel(old); err != nil {
		return fmt.Errorf("testnet: %s: delete %s: %w", h.Name, HostIface, err)
	}
	time.Sleep(gap)

	sw, err := netlink.NewHandleAt(h.net.Switch)
	if err != nil {
		return fmt.Errorf("testnet: netlink handle in %s: %w", h.net.SwitchNS, err)
	}
	defer sw.Close()
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: h.PeerName, HardwareAddr: h.PeerMAC},
		PeerName:         HostIface,
		PeerHardwareAddr: h.MAC,
		PeerNamespace:    netlink.NsFd(h.NS),
	}
	if err := sw.LinkAdd(veth); err != nil {
		return fmt.Errorf("testnet: %s: add veth again: %w", h.Name, err)
	}
	peer, err := sw.LinkByName(h.PeerName)
	if err != nil {
		return err
	}
	h.PeerIndex = peer.Attrs().Index
	if err := sw.LinkSetMasterByIndex(peer, h.net.BridgeIndex); err != nil {
		return err
	}
	if err := sw.LinkSetUp(peer); err != nil {
		return err
	}
	eth, err := nh.LinkByName(HostIface)
	if err != nil {
		return err
	}
	h.IfIndex = eth.Attrs().Index
	var errs []error
	for _, a := range addrs {
		if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(a)}); err != nil {
			errs = append(errs, fmt.Errorf("add %s: %w", a, err))
		}
	}
	if err := nh.LinkSetUp(eth); err != nil {
		errs = append(errs, err)
	}
	if txOffloadOff {
		errs = append(errs, h.DisableTxOffload())
	}
	if peerXDP {
		errs = append(errs, h.AttachPassXDPToPeer())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("testnet: %s: set up %s again: %w", h.Name, HostIface, err)
	}
	return nil
}
