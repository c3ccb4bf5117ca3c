// Package balancertest provides a Datapath that keeps the data path's maps
// in Go, for the tests of the balancer and of the daemon that wires it.
// Like net/http/httptest it is test support in a non-test file; only tests
// import it. It imports nothing of xdplb's but bpf's types.
package balancertest

import (
	"net/netip"
	"sync"

	"github.com/xdplb/xdplb/bpf"
)

// Frontend is the frontend the fake's connections go to.
var Frontend = netip.MustParseAddrPort("10.10.10.100:6443")

// Datapath implements balancer.Datapath over Go maps. It is safe for
// concurrent use, and panics if the live Maglev half is written.
type Datapath struct {
	mu       sync.Mutex
	backends map[uint32]bpf.Backend
	maglev   [2][]uint32
	active   uint32
	flows    [2]map[bpf.FlowKey]bpf.Flow
	refused  map[uint32]uint64
	stats    []uint64
	counters map[uint32]bpf.BackendCounters
	swaps    int
	capacity [2]uint32
	refuse   bool
	reset    bool
	snatNext map[uint32]uint32
	clients  map[netip.Addr]uint32
}

// New returns an empty Datapath, as a fresh instance's maps are.
func New() *Datapath {
	return &Datapath{backends: map[uint32]bpf.Backend{}, refused: map[uint32]uint64{},
		flows: [2]map[bpf.FlowKey]bpf.Flow{{}, {}}, stats: make([]uint64, bpf.StatCount),
		counters: map[uint32]bpf.BackendCounters{}, capacity: [2]uint32{bpf.FlowsMax, bpf.HalfOpenMax},
		clients: map[netip.Addr]uint32{}}
}

// Backends returns the used backend slots.
func (f *Datapath) Backends() (map[uint32]bpf.Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uint32]bpf.Backend{}
	for k, v := range f.backends {
		if v != (bpf.Backend{}) {
			out[k] = v
		}
	}
	return out, nil
}

// PutBackend writes a backend slot.
func (f *Datapath) PutBackend(id uint32, b bpf.Backend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends[id] = b
	return nil
}

// Backend returns a backend slot.
func (f *Datapath) Backend(id uint32) bpf.Backend {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backends[id]
}

// ActiveMaglev says which half is live.
func (f *Datapath) ActiveMaglev() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.active, nil
}

// PutMaglev writes a half; writing the live one panics.
func (f *Datapath) PutMaglev(half uint32, t []uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if half == f.active && f.maglev[half] != nil {
		panic("wrote the live maglev table")
	}
	f.maglev[half] = append([]uint32(nil), t...)
	return nil
}

// SetActiveMaglev flips the live half.
func (f *Datapath) SetActiveMaglev(half uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.active = half
	f.swaps++
	return nil
}

// Live is the live Maglev table.
func (f *Datapath) Live() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint32(nil), f.maglev[f.active]...)
}

// Swaps counts the flips of the live half.
func (f *Datapath) Swaps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.swaps
}

// ForEachFlow calls fn with every entry of both tables.
func (f *Datapath) ForEachFlow(fn func(bpf.FlowTable, bpf.FlowKey, bpf.Flow)) error {
	type entry struct {
		t bpf.FlowTable
		k bpf.FlowKey
		v bpf.Flow
	}
	f.mu.Lock()
	var all []entry
	for t, m := range f.flows {
		for k, v := range m {
			all = append(all, entry{bpf.FlowTable(t), k, v})
		}
	}
	f.mu.Unlock()
	for _, e := range all {
		fn(e.t, e.k, e.v)
	}
	return nil
}

// DeleteFlows deletes entries.
func (f *Datapath) DeleteFlows(t bpf.FlowTable, keys []bpf.FlowKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.flows[t], k)
	}
	return nil
}

// Flows returns a copy of one table.
func (f *Datapath) Flows(t bpf.FlowTable) map[bpf.FlowKey]bpf.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[bpf.FlowKey]bpf.Flow{}
	for k, v := range f.flows[t] {
		out[k] = v
	}
	return out
}

// Refused returns a backend's refusal flag.
func (f *Datapath) Refused(id uint32) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused[id], nil
}

// ClearRefused clears a backend's refusal flag.
func (f *Datapath) ClearRefused(id uint32) error { f.SetRefused(id, 0); return nil }

// SetRefused raises a backend's refusal flag at ts, as the data path does
// when the backend answers a SYN with a RST.
func (f *Datapath) SetRefused(id uint32, ts uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused[id] = ts
}

// Stats returns the packet counters.
func (f *Datapath) Stats() ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.stats...), nil
}

// Count adds n to a packet counter.
func (f *Datapath) Count(s bpf.Stat, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats[s] += n
}

// BackendCounters returns a backend's counters.
func (f *Datapath) BackendCounters(id uint32) (bpf.BackendCounters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counters[id], nil
}

// TableCapacity is a table's capacity: the real tables' unless
// SetCapacity changed it.
func (f *Datapath) TableCapacity(t bpf.FlowTable) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.capacity[t]
}

// SetCapacity sets a table's capacity in entries, as bpf.Config.MaxConns
// does for the established table (two entries a connection). The fake
// does not enforce it: the data path's refusals are its packet tests'.
func (f *Datapath) SetCapacity(t bpf.FlowTable, entries uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capacity[t] = entries
}

// SetRefuseNew sets lb_control.refuse_new.
func (f *Datapath) SetRefuseNew(refuse bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = refuse
	return nil
}

// RefuseNew is lb_control.refuse_new.
func (f *Datapath) RefuseNew() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refuse
}

// SetClientConns rewrites the per-client counts.
func (f *Datapath) SetClientConns(counts map[netip.Addr]uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients = map[netip.Addr]uint32{}
	for a, n := range counts {
		f.clients[a] = n
	}
	return nil
}

// ClientConns returns the per-client counts.
func (f *Datapath) ClientConns() map[netip.Addr]uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[netip.Addr]uint32{}
	for a, n := range f.clients {
		out[a] = n
	}
	return out
}

// SetClientCount sets one client's count, as the data path's own
// increments do.
func (f *Datapath) SetClientCount(client netip.Addr, n uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients[client] = n
}

// AddConn records a tracked connection client -> backend (slot id) as the
// data path would: both entries, in the established table, through SNAT
// port snat, last seen at lastSeen (bpf.Now's clock).
func (f *Datapath) AddConn(client, backend netip.AddrPort, id uint32, snat uint16, lastSeen uint64, state bpf.FlowState) bpf.FlowKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	ck := bpf.Key(client, Frontend)
	sn := netip.AddrPortFrom(Frontend.Addr(), snat)
	f.flows[bpf.TableEstablished][ck] = bpf.Flow{Saddr: bpf.BE32(sn.Addr()), Sport: bpf.BE16(snat), Daddr: bpf.BE32(backend.Addr()), Dport: bpf.BE16(backend.Port()),
		Backend: id, Dir: uint8(bpf.FlowToBackend), State: uint8(state), LastSeenNs: lastSeen}
	f.flows[bpf.TableEstablished][bpf.Key(backend, sn)] = bpf.Flow{Saddr: bpf.BE32(Frontend.Addr()), Sport: bpf.BE16(Frontend.Port()), Daddr: bpf.BE32(client.Addr()), Dport: bpf.BE16(client.Port()),
		Backend: id, Dir: uint8(bpf.FlowToClient), State: uint8(state), LastSeenNs: lastSeen}
	return ck
}

// LookupFlow reads one entry.
func (f *Datapath) LookupFlow(t bpf.FlowTable, k bpf.FlowKey) (bpf.Flow, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.flows[t][k]
	return v, ok, nil
}

// PutConnection writes a connection's two entries into the established
// table, as flow sync installs a peer's connection.
func (f *Datapath) PutConnection(ck bpf.FlowKey, client bpf.Flow, rk bpf.FlowKey, reply bpf.Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows[bpf.TableEstablished][rk] = reply
	f.flows[bpf.TableEstablished][ck] = client
	return nil
}

// SetSNATNext records where the data path's next SNAT port search to a
// backend starts (offset plus one).
func (f *Datapath) SetSNATNext(backend uint32, next uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.snatNext == nil {
		f.snatNext = map[uint32]uint32{}
	}
	f.snatNext[backend] = next
	return nil
}

// SNATNext is what SetSNATNext last set for the backend (0: nothing).
func (f *Datapath) SNATNext(backend uint32) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snatNext[backend]
}

// SetNoBackendReset sets the data path's reset policy.
func (f *Datapath) SetNoBackendReset(reset bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reset = reset
	return nil
}

// NoBackendReset is the data path's reset policy.
func (f *Datapath) NoBackendReset() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reset
}
