package bpf

import (
	"encoding/binary"
	"net/netip"
)

// The types the data path shares with userspace, as bpf2go generated them
// from xdplb_structs.h. Addresses and ports in them are in network byte
// order, stored as the raw bytes of the packet: use the helpers below.
type (
	FlowKey         = xdplbFlowKey
	Flow            = xdplbFlow
	Backend         = xdplbBackend
	BackendCounters = xdplbBackendCounters
	LBControl       = xdplbLbControl
	FlowState       = xdplbFlowState
	FlowDir         = xdplbFlowDir
)

// Map names, as pinned under the instance directory.
const (
	MapFlows          = xdplbMapFlows
	MapHalfOpen       = xdplbMapHalfOpen
	MapBackends       = xdplbMapBackends
	MapBackendRefused = xdplbMapBackendRefused
	MapMaglev         = xdplbMapMaglev
	MapControl        = xdplbMapControl
	MapStats          = xdplbMapStats
	MapBackendStats   = xdplbMapBackendStats
)

// Program names.
const (
	ProgXDP = xdplbProgXdplbXdp
	ProgTC  = xdplbProgXdplbTc
)

// Flow states and directions.
const (
	FlowSynSent     = xdplbFlowStateFLOW_SYN_SENT
	FlowEstablished = xdplbFlowStateFLOW_ESTABLISHED
	FlowClosing     = xdplbFlowStateFLOW_CLOSING
	FlowReset       = xdplbFlowStateFLOW_RESET

	FlowToBackend = xdplbFlowDirFLOW_TO_BACKEND
	FlowToClient  = xdplbFlowDirFLOW_TO_CLIENT
)

// flowFlagSynAck marks a half-open flow its backend has answered (FLOW_F_SYNACK).
const flowFlagSynAck = 0x01

// BackendFlagMAC says Backend.Mac, Smac and Ifindex are resolved.
const BackendFlagMAC = 0x01

// NoBackend marks an empty Maglev slot.
const NoBackend = 0xffffffff

// MaglevSize is the size of one of the two Maglev tables in the maglev map.
const MaglevSize = 65537

// MaxBackends is the number of backend slots.
const MaxBackends = 256

func (s FlowState) String() string {
	switch s {
	case FlowSynSent:
		return "syn-sent"
	case FlowEstablished:
		return "established"
	case FlowClosing:
		return "closing"
	case FlowReset:
		return "reset"
	}
	return "unknown"
}

// BE32 is an IPv4 address as the data path stores it.
func BE32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

// Addr converts a stored address back.
func Addr(be uint32) netip.Addr {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], be)
	return netip.AddrFrom4(b)
}

// BE16 is a port as the data path stores it.
func BE16(port uint16) uint16 { return port<<8 | port>>8 }

// Port converts a stored port back.
func Port(be uint16) uint16 { return be<<8 | be>>8 }

// Key builds a flow key from addresses as they appear on the wire.
func Key(src netip.AddrPort, dst netip.AddrPort) FlowKey {
	return FlowKey{
		Saddr: BE32(src.Addr()), Daddr: BE32(dst.Addr()),
		Sport: BE16(src.Port()), Dport: BE16(dst.Port()),
		Proto: 6,
	}
}

// Src and Dst of a key.
func (k FlowKey) Src() netip.AddrPort { return netip.AddrPortFrom(Addr(k.Saddr), Port(k.Sport)) }
func (k FlowKey) Dst() netip.AddrPort { return netip.AddrPortFrom(Addr(k.Daddr), Port(k.Dport)) }

// Src and Dst after the rewrite.
func (f Flow) Src() netip.AddrPort { return netip.AddrPortFrom(Addr(f.Saddr), Port(f.Sport)) }
func (f Flow) Dst() netip.AddrPort { return netip.AddrPortFrom(Addr(f.Daddr), Port(f.Dport)) }

// Twin is the key of the other direction of the connection f belongs to.
func (f Flow) Twin() FlowKey {
	return FlowKey{Saddr: f.Daddr, Daddr: f.Saddr, Sport: f.Dport, Dport: f.Sport, Proto: 6}
}
