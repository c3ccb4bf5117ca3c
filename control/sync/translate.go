package sync

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/xdplb/xdplb/bpf"
)

// Slack is how much older than this node's copy a peer's version of a
// connection may look and still be taken: the data path notes activity
// at most once a second, and ages cross the wire with a little delay.
const Slack = 2 * time.Second

// LocalBackend is one of this node's backends: its index, and its next
// hop where resolved (zero MAC: unresolved; Ifindex 0: the frontend
// interface).
type LocalBackend struct {
	Index   uint32
	MAC     [6]byte
	Ifindex uint32
}

// Local is this node's side of the translation: what a connection must
// match to be installed here, and how it is written.
type Local struct {
	Frontend       netip.AddrPort
	SNATLo, SNATHi uint16
	// Backends are this node's backends by address.
	Backends map[netip.AddrPort]LocalBackend
	// LocalMAC is this node's MAC on the frontend interface.
	LocalMAC [6]byte
}

// backendAt returns the address of the backend of index i.
func (l *Local) backendAt(i uint32) (netip.AddrPort, bool) {
	for addr, b := range l.Backends {
		if b.Index == i {
			return addr, true
		}
	}
	return netip.AddrPort{}, false
}

// FromEvent turns the data path's report of a connection into a record
// (times on this node's clock). An event of a backend this node no
// longer has, or of another frontend, cannot be sent.
func (l *Local) FromEvent(ev bpf.SyncEvent) (Record, error) {
	be, ok := l.backendAt(ev.Backend)
	if !ok {
		return Record{}, fmt.Errorf("sync event for backend index %d, which this node does not have", ev.Backend)
	}
	r := Record{
		Kind: Upsert, State: State(ev.State), Frontend: ev.Key.Dst(), Client: ev.Key.Src(), Backend: be,
		SNATPort: bpf.Port(ev.SnatPort), ClientFlags: ev.ClientFlags, BackendFlags: ev.BackendFlags,
		ClientSeq: ev.ClientSeq, BackendSeq: ev.BackendSeq, ClientMAC: ev.ClientMac,
		CreatedNs: ev.CreatedNs, LastSeenNs: ev.LastSeenNs,
	}
	if bpf.SyncEventKind(ev.Kind) == bpf.SyncDelete {
		r.Kind = Delete
	}
	if r.Frontend != l.Frontend {
		return r, fmt.Errorf("sync event for frontend %s, not %s", r.Frontend, l.Frontend)
	}
	return r, nil
}

// FromEntries turns a connection's two entries (its client entry, keyed
// ck, and its reply entry, nil if missing) into a record, for a bulk
// resync or a refresh. ok is false for what is not synced: a reply entry,
// a half-open connection.
func FromEntries(ck bpf.FlowKey, client bpf.Flow, reply *bpf.Flow) (Record, bool) {
	if client.Dir != uint8(bpf.FlowToBackend) || State(client.State) < StateEstablished || State(client.State) > StateClosed {
		return Record{}, false
	}
	r := Record{
		Kind: Upsert, State: State(client.State), Frontend: ck.Dst(), Client: ck.Src(), Backend: client.Dst(),
		SNATPort: client.Src().Port(), ClientFlags: client.Flags, ClientSeq: client.SeqNext,
		CreatedNs: client.CreatedNs, LastSeenNs: client.LastSeenNs,
	}
	if reply != nil {
		r.BackendFlags, r.BackendSeq, r.ClientMAC = reply.Flags, reply.SeqNext, reply.Dmac
		r.LastSeenNs = max(r.LastSeenNs, reply.LastSeenNs)
	}
	return r, true
}

// Connection checks that a peer's record belongs here (this frontend,
// one of this node's backends, a SNAT port of this node's range) and
// returns the connection to install, its times on this node's clock
// (synced now: the data path here reports it again once it forwards it
// for a refresh interval).
func (l *Local) Connection(r Record, now uint64) (bpf.Connection, error) {
	if r.Frontend != l.Frontend {
		return bpf.Connection{}, errorf(ForeignFrontend, "connection %s -> %s: this node's frontend is %s", r.Client, r.Frontend, l.Frontend)
	}
	b, ok := l.Backends[r.Backend]
	if !ok {
		return bpf.Connection{}, errorf(UnknownBackend, "connection %s -> %s: backend %s is not configured here", r.Client, r.Frontend, r.Backend)
	}
	if r.SNATPort < l.SNATLo || r.SNATPort > l.SNATHi {
		return bpf.Connection{}, errorf(ForeignSNAT, "connection %s -> %s: SNAT port %d outside %d-%d", r.Client, r.Frontend, r.SNATPort, l.SNATLo, l.SNATHi)
	}
	if !r.Client.Addr().Is4() {
		return bpf.Connection{}, errorf(ForeignFrontend, "connection %s: the data path is IPv4", r.Client)
	}
	return bpf.Connection{
		Client: r.Client, Frontend: r.Frontend, Backend: r.Backend, SNATPort: r.SNATPort,
		BackendIndex: b.Index, State: bpf.FlowState(r.State),
		ClientFlags: r.ClientFlags, BackendFlags: r.BackendFlags, ClientSeq: r.ClientSeq, BackendSeq: r.BackendSeq,
		ClientMAC: r.ClientMAC, LocalMAC: l.LocalMAC, BackendMAC: b.MAC, BackendIfindex: b.Ifindex,
		CreatedNs: r.CreatedNs, LastSeenNs: r.LastSeenNs, SyncedNs: now,
	}, nil
}

// Keys are the two entries of a connection.
func Keys(c bpf.Connection) (client, reply bpf.FlowKey) {
	ck, _, rk, _ := bpf.FlowPair(c)
	return ck, rk
}

// Existing is what this node has where a connection's entries go.
type Existing struct {
	// Client is the entry keyed client -> frontend, Reply the one keyed
	// backend -> frontend:snat port; nil where there is none.
	Client, Reply *bpf.Flow
}

// Plan is what to do with a peer's record.
type Plan struct {
	// Install: write the connection's two entries (after Remove).
	Install bool
	// Remove lists entries to delete.
	Remove []bpf.FlowKey
	// Drop is why nothing is done, when that is a drop ("" when the
	// plan does something, or there is nothing to do).
	Drop Reason
}

// sameConn: entry f (a client entry) is connection c: same backend, same
// SNAT port.
func sameConn(f *bpf.Flow, c bpf.Connection) bool {
	return f.Dst() == c.Backend && f.Src().Port() == c.SNATPort
}

// ofClient: entry f (a reply entry) leads to c's client.
func ofClient(f *bpf.Flow, c bpf.Connection) bool { return f.Dst() == c.Client }

// PlanUpsert decides whether a peer's version of a connection replaces
// what this node has:
//
//   - nothing here: install it;
//   - the same connection (same backend and SNAT port): a later state
//     wins; in the same state, unless it is more than Slack older than
//     this node's copy; never back to an earlier state (a reordered or
//     stale report);
//   - another connection on the same client address and port (the client
//     reused them): the more recently active one wins; the loser's reply
//     entry goes;
//   - another client's connection on the same backend and SNAT port: the
//     more recently active one wins; the loser's client entry goes.
func PlanUpsert(c bpf.Connection, ex Existing) Plan {
	var remove []bpf.FlowKey
	if old := ex.Client; old != nil {
		if sameConn(old, c) {
			switch st := bpf.FlowState(old.State); {
			case c.State < st:
				return Plan{Drop: Stale}
			case c.State == st && c.LastSeenNs+uint64(Slack) < old.LastSeenNs:
				return Plan{Drop: Stale}
			}
		} else {
			if c.LastSeenNs < old.LastSeenNs {
				return Plan{Drop: Stale}
			}
			remove = append(remove, old.Twin())
		}
	}
	if other := ex.Reply; other != nil && !ofClient(other, c) {
		if c.LastSeenNs < other.LastSeenNs {
			return Plan{Drop: Stale}
		}
		remove = append(remove, other.Twin())
	}
	return Plan{Install: true, Remove: remove}
}

// PlanDelete decides whether a peer's deletion of a connection removes
// this node's copy: only the same connection, and only if this node's copy
// was not active more than Slack after the version the peer deleted (c's
// LastSeenNs: for a deletion, when the sender last saw it, or when it
// removed it).
func PlanDelete(c bpf.Connection, ex Existing) Plan {
	old := ex.Client
	if old == nil || !sameConn(old, c) {
		return Plan{}
	}
	if old.LastSeenNs > c.LastSeenNs+uint64(Slack) {
		return Plan{Drop: Stale}
	}
	ck, rk := Keys(c)
	remove := []bpf.FlowKey{ck}
	if ex.Reply != nil && ofClient(ex.Reply, c) {
		remove = append(remove, rk)
	}
	return Plan{Remove: remove}
}
