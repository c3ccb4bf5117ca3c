package bpf

import "net/netip"

// Connection describes one tracked connection the way flow sync carries
// it between the LBs of a pair: everything FlowPair needs to build the two
// entries the data path keeps for it, in this node's terms (its backend
// index, its clock).
type Connection struct {
	Client   netip.AddrPort // the client, as it connects
	Frontend netip.AddrPort // the VIP and port it connects to
	Backend  netip.AddrPort // where the connection goes
	SNATPort uint16         // the source port toward the backend (host order)
	// BackendIndex is this node's index of Backend.
	BackendIndex uint32
	State        FlowState
	// ClientFlags and BackendFlags are the FLOW_F_* bits of each
	// direction (FlowFlagSeq, FlowFlagFIN); ClientSeq and BackendSeq each
	// sender's next sequence number.
	ClientFlags, BackendFlags uint8
	ClientSeq, BackendSeq     uint32
	// ClientMAC is the client's next hop (learnt from its SYN by the node
	// that opened the connection: the same on every LB of the segment).
	ClientMAC [6]byte
	// LocalMAC is this node's MAC on the interface; BackendMAC and
	// BackendIfindex the backend's next hop (zero: unresolved; the data
	// path takes the backend's next hop from its backends entry at every
	// packet anyway).
	LocalMAC, BackendMAC [6]byte
	BackendIfindex       uint32
	// CreatedNs, LastSeenNs and SyncedNs are times on this node's data
	// path clock (Now).
	CreatedNs, LastSeenNs, SyncedNs uint64
}

// FlowPair builds the two entries of an established connection exactly as
// the data path's open_flow and complete_flow do (bpf/xdplb.c): the client
// entry, keyed client -> frontend, rewriting to frontend:snat -> backend,
// and the reply entry, keyed backend -> frontend:snat, rewriting to
// frontend -> client, each with the checksum differences of its rewrite.
// Only the IPv4 fields are filled: the data path is IPv4.
func FlowPair(c Connection) (ck FlowKey, client Flow, rk FlowKey, reply Flow) {
	caddr, fe, be := BE32(c.Client.Addr()), BE32(c.Frontend.Addr()), BE32(c.Backend.Addr())
	cport, fport, bport, snat := BE16(c.Client.Port()), BE16(c.Frontend.Port()), BE16(c.Backend.Port()), BE16(c.SNATPort)

	ck = FlowKey{Saddr: caddr, Daddr: fe, Sport: cport, Dport: fport, Proto: 6}
	client = Flow{
		CreatedNs: c.CreatedNs, LastSeenNs: c.LastSeenNs, SyncedNs: c.SyncedNs,
		Saddr: fe, Daddr: be, Sport: snat, Dport: bport,
		CsumAddr: csumAdd(csumDiff32(caddr, fe), csumDiff32(fe, be)),
		CsumPort: csumAdd(csumDiff16(cport, snat), csumDiff16(fport, bport)),
		Backend:  c.BackendIndex, Ifindex: c.BackendIfindex,
		Dmac: c.BackendMAC, Smac: c.LocalMAC,
		State: uint8(c.State), Dir: uint8(FlowToBackend), Flags: c.ClientFlags &^ FlowFlagSynAck,
		SeqNext: c.ClientSeq,
	}
	rk = FlowKey{Saddr: be, Daddr: fe, Sport: bport, Dport: snat, Proto: 6}
	reply = Flow{
		CreatedNs: c.CreatedNs, LastSeenNs: c.LastSeenNs, SyncedNs: c.SyncedNs,
		Saddr: fe, Daddr: caddr, Sport: fport, Dport: cport,
		CsumAddr: csumAdd(csumDiff32(be, fe), csumDiff32(fe, caddr)),
		CsumPort: csumAdd(csumDiff16(bport, fport), csumDiff16(snat, cport)),
		Backend:  c.BackendIndex, Ifindex: 0,
		Dmac: c.ClientMAC, Smac: c.LocalMAC,
		State: uint8(c.State), Dir: uint8(FlowToClient), Flags: c.BackendFlags &^ FlowFlagSynAck,
		SeqNext: c.BackendSeq,
	}
	return ck, client, rk, reply
}

// The checksum arithmetic of bpf/csum.h (RFC 1624), on values as the data
// path holds them: the packet's bytes read as little-endian words.

func csumFold32(sum uint32) uint32 {
	sum = sum&0xffff + sum>>16
	return sum&0xffff + sum>>16
}

func csumDiff32(old, new uint32) uint32 {
	sum := (^old & 0xffff) + (^old >> 16)
	sum += new&0xffff + new>>16
	return csumFold32(sum)
}

func csumDiff16(old, new uint16) uint32 { return csumFold32(uint32(^old) + uint32(new)) }

func csumAdd(a, b uint32) uint32 { return csumFold32(a + b) }
