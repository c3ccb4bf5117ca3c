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
	// SyncEvent is what the data path reports of a connection for the
	// peer LB (sync_events perf array); SyncEventKind says what happened.
	SyncEvent     = xdplbSyncEvent
	SyncEventKind = xdplbSyncEventKind
	FlowState     = xdplbFlowState
	FlowDir       = xdplbFlowDir
)

// The data path's objects as bpf2go generated them: the loader loads into
// these (CollectionSpec.LoadAndAssign, Assign), so no map or variable is
// looked up by a name written twice.
type (
	// Maps are the maps of one instance, pinned under its directory.
	Maps = xdplbMaps
	// MapSpecs are the maps before loading.
	MapSpecs = xdplbMapSpecs
	// VariableSpecs are the load-time constants (volatile const).
	VariableSpecs = xdplbVariableSpecs
)

// Program names: the XDP and the TC variant of the one C core.
const (
	ProgXDP = xdplbProgXdplbXdp
	ProgTC  = xdplbProgXdplbTc
)

// Sync event kinds.
const (
	SyncUpsert = xdplbSyncEventKindSYNC_EV_UPSERT
	SyncDelete = xdplbSyncEventKindSYNC_EV_DELETE
)

// Flow states and directions.
const (
	FlowSynSent     = xdplbFlowStateFLOW_SYN_SENT
	FlowEstablished = xdplbFlowStateFLOW_ESTABLISHED
	FlowClosing     = xdplbFlowStateFLOW_CLOSING
	FlowReset       = xdplbFlowStateFLOW_RESET
	FlowClosed      = xdplbFlowStateFLOW_CLOSED

	FlowToBackend = xdplbFlowDirFLOW_TO_BACKEND
	FlowToClient  = xdplbFlowDirFLOW_TO_CLIENT
)

// Flow.Flags (FLOW_F_* in xdplb_structs.h).
const (
	// FlowFlagSynAck marks a half-open flow its backend has answered.
	FlowFlagSynAck = 0x01
	// FlowFlagSeq says Flow.SeqNext is known.
	FlowFlagSeq = 0x02
	// FlowFlagFIN: this direction's sender has closed.
	FlowFlagFIN = 0x08
)

// BackendFlagMAC says Backend.Mac, Smac and Ifindex are resolved.
const BackendFlagMAC = 0x01

// PolicyResetNoBackend is the xdplb_policy bit (POLICY_F_RESET_NO_BACKEND)
// that makes a new connection no backend can take get a RST at once rather
// than a drop: userspace sets it while failing open.
const PolicyResetNoBackend = 0x01

// The limits of the data path, from enum xdplb_limit in xdplb_consts.h.
const (
	// MaglevSize is the size of one of the two Maglev tables in the maglev map.
	MaglevSize = uint32(xdplbXdplbLimitXDPLB_MAGLEV_SIZE)
	// MaxBackends is the number of backend slots; a Maglev slot holding an
	// index at or above it is empty.
	MaxBackends = uint32(xdplbXdplbLimitXDPLB_MAX_BACKENDS)
	// FlowsMax and HalfOpenMax are the capacities of the two flow tables.
	FlowsMax    = uint32(xdplbXdplbLimitXDPLB_FLOWS_MAX)
	HalfOpenMax = uint32(xdplbXdplbLimitXDPLB_HALF_OPEN_MAX)
	// ClientsMax is how many client addresses the per-client limit counts.
	ClientsMax = uint32(xdplbXdplbLimitXDPLB_CLIENTS_MAX)
)

// FlowTable names one of the data path's two flow tables.
type FlowTable int

const (
	// TableEstablished holds established and closing connections (map flows).
	TableEstablished FlowTable = iota
	// TableHalfOpen holds connections whose client has not yet ACKed the
	// backend's SYN-ACK (map half_open).
	TableHalfOpen
)

// FlowTables lists both tables.
var FlowTables = []FlowTable{TableEstablished, TableHalfOpen}

// String names the table in status and metrics.
func (t FlowTable) String() string {
	if t == TableHalfOpen {
		return "half_open"
	}
	return "flows"
}

// MapName is the table's map (and pin) name.
func (t FlowTable) MapName() string {
	if t == TableHalfOpen {
		return xdplbMapXdplbHalfOpen
	}
	return xdplbMapXdplbFlows
}

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
	case FlowClosed:
		return "closed"
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
