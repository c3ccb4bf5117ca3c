package testnet

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var memlockOnce sync.Once

// PassXDPSpec is the smallest XDP program: return XDP_PASS.
func PassXDPSpec() *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name: "xdp_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
	}
}

// AttachPassXDPToPeer attaches an XDP_PASS program in native (driver) mode to
// the switch end of the host's veth pair.
//
// A packet that an XDP program on the host's eth1 sends back with XDP_TX (or
// redirects into eth1) is handed by the veth driver straight to the peer's
// XDP receive queue; if the peer has no native XDP program (and no GRO/NAPI
// set up), the kernel drops it silently and only counts it in the peer's
// "rx drops"/xdp_tx_errors. Attaching a pass program to the peer makes
// XDP_TX from eth1 reach the bridge. Call it for every host whose eth1 runs
// the load balancer.
func (h *Host) AttachPassXDPToPeer() error {
	memlockOnce.Do(func() { _ = rlimit.RemoveMemlock() }) // only matters before 5.11
	prog, err := ebpf.NewProgram(PassXDPSpec())
	if err != nil {
		return fmt.Errorf("testnet: load XDP pass program: %w", err)
	}
	// The attachment holds its own reference to the program.
	defer prog.Close()
	err = h.net.SwitchDo(func() error {
		l, err := netlink.LinkByIndex(h.PeerIndex)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE)
	})
	if err != nil {
		return fmt.Errorf("testnet: attach XDP pass program to %s (switch end of %s) in native mode: %w", h.PeerName, h.Name, err)
	}
	return nil
}

// DetachXDPFromPeer removes the program attached by AttachPassXDPToPeer.
func (h *Host) DetachXDPFromPeer() error {
	err := h.net.SwitchDo(func() error {
		l, err := netlink.LinkByIndex(h.PeerIndex)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, -1, unix.XDP_FLAGS_DRV_MODE)
	})
	if err != nil {
		return fmt.Errorf("testnet: detach XDP from %s: %w", h.PeerName, err)
	}
	return nil
}

// PeerXDPAttached reports whether the switch end of the host's veth pair has
// an XDP program attached, and its program ID.
func (h *Host) PeerXDPAttached() (bool, uint32, error) {
	var attached bool
	var id uint32
	err := h.net.SwitchDo(func() error {
		l, err := netlink.LinkByIndex(h.PeerIndex)
		if err != nil {
			return err
		}
		x := l.Attrs().Xdp
		if x == nil {
			return errors.New("kernel reported no XDP attribute")
		}
		attached, id = x.Attached, x.ProgId
		return nil
	})
	if err != nil {
		return false, 0, fmt.Errorf("testnet: query XDP on %s: %w", h.PeerName, err)
	}
	return attached, id, nil
}
