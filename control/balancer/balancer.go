// Package balancer turns the configuration, the backends' health and the
// operator's commands into the data path's state: backend slots (stable
// across restarts), the Maglev table (written into the spare half, then
// flipped), and clean flow tables (expired flows, flows of dead backends,
// whose clients are nudged to reset at once).
//
// It works on the data path only through the Datapath interface, defined
// here and implemented over the pinned maps by loader.Datapath, and on
// clients only through Nudger; it imports neither loader nor netlink, and
// its tests run against a fake datapath without root.
package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/maglev"
)

// Datapath is what the balancer needs of the kernel side; loader.Datapath
// implements it over the pinned maps, tests use a fake.
type Datapath interface {
	Backends() (map[uint32]bpf.Backend, error)
	PutBackend(id uint32, b bpf.Backend) error
	ActiveMaglev() (uint32, error)
	PutMaglev(half uint32, table []uint32) error
	SetActiveMaglev(half uint32) error
	ForEachFlow(fn func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow)) error
	DeleteFlows(t bpf.FlowTable, keys []bpf.FlowKey) error
	Refused(id uint32) (uint64, error)
	ClearRefused(id uint32) error
	Stats() ([]uint64, error)
	BackendCounters(id uint32) (bpf.BackendCounters, error)
	// TableCapacity is the number of entries a flow table holds.
	TableCapacity(t bpf.FlowTable) uint32
	// SetRefuseNew sets lb_control.refuse_new, leaving the live Maglev
	// half as it is (the balancer serialises the two).
	SetRefuseNew(refuse bool) error
	// SetClientConns rewrites the per-client counts of established
	// connections: clients listed get their count, every other entry goes.
	SetClientConns(counts map[netip.Addr]uint32) error
	// SetNoBackendReset makes the data path reset (true) or drop a new
	// connection no backend can take.
	SetNoBackendReset(reset bool) error
}

// Userspace-only bits of bpf.Backend.Flags: the data path ignores them; they
// carry a backend's health and drain state across daemon restarts.
const (
	backendFlagUp      = 0x02
	backendFlagDrained = 0x04
	backendFlagUsed    = 0x08
)

// Nudger makes a client whose flow was dropped find out now rather than at
// its next send: see nudge.go.
type Nudger interface {
	Nudge(frontend, client netip.AddrPort) error
}

// NextHop is where packets toward a backend leave: the MAC to send to, ours,
// and the interface.
type NextHop struct {
	MAC, SrcMAC [6]byte
	Ifindex     uint32
}

// Backend is one backend as the balancer sees it.
type Backend struct {
	ID   uint32
	Addr netip.AddrPort
	// Name is the operator's name for it; may be empty.
	Name    string
	Weight  uint32 // configured; 0 when drained by an operator
	Up      bool
	Drained bool
	// Retired: no longer configured. It takes no new connections and its
	// established ones stay; its slot is freed once the last one ends
	// (see Reconcile, GC).
	Retired bool
	// FlowsKept: down, but its connections were left alone because the
	// server still answered (not ready); they go if it stops answering.
	FlowsKept bool
	NextHop   *NextHop
}

// TakesNew says whether the backend takes new connections: up, not
// drained, not retired, of a weight above 0.
func (b Backend) TakesNew() bool { return b.Up && !b.Drained && !b.Retired && b.Weight > 0 }

// Label is how logs name the backend: "name (ip:port)", or the address.
func (b Backend) Label() string {
	if b.Name == "" {
		return b.Addr.String()
	}
	return b.Name + " (" + b.Addr.String() + ")"
}

// Balancer turns configuration, health and operator commands into the data
// path's backend entries and Maglev table, and keeps its flow tables clean.
type Balancer struct {
	dp       Datapath
	frontend netip.AddrPort
	timeouts bpf.Config
	log      *slog.Logger
	nudger   Nudger
	now      func() uint64 // CLOCK_MONOTONIC ns, the data path's clock
	failOpen bool
	forgot   func(why Forgotten, k bpf.FlowKey, f bpf.Flow)

	mu       sync.Mutex
	backends map[netip.AddrPort]*Backend
	// failingOpen: no backend takes new connections, and the table holds
	// every configured one (Options.FailOpen). resetKnown: the data path's
	// reset policy was written (a previous daemon may have left either).
	failingOpen, resetKnown bool
	// refusing is what the balancer last wrote to lb_control.refuse_new;
	// refuseKnown is false until the first write (a previous daemon may
	// have left either value).
	refusing, refuseKnown bool
}

// Options configure New.
type Options struct {
	Frontend netip.AddrPort
	Backends []config.BackendSpec // ports resolved
	Timeouts bpf.Config           // for GC: the same timeouts as the data path
	Logger   *slog.Logger
	Nudger   Nudger
	Now      func() uint64
	// FailOpen: while no backend is up, the table holds every configured
	// backend that is not drained (the data path skips those that refuse
	// and resets the client when none takes it), and their connections
	// are not removed as orphans. Otherwise the table is empty then.
	FailOpen bool
	// Forgot, if set, is told of every established connection the
	// balancer removes (by its client entry), and why: flow sync tells
	// the peer.
	Forgot func(why Forgotten, k bpf.FlowKey, f bpf.Flow)
}

// Forgotten says why the balancer removed a connection.
type Forgotten string

const (
	// ForgotExpired: idle past its state's timeout.
	ForgotExpired Forgotten = "expired"
	// ForgotOrphaned: its backend is down or gone.
	ForgotOrphaned Forgotten = "orphaned"
	// ForgotReclaimed: ended, removed early from a crowded table.
	ForgotReclaimed Forgotten = "reclaimed"
	// ForgotPurged: its backend went down.
	ForgotPurged Forgotten = "purged"
)

// New reads the data path's backend entries (left by a previous
// daemon, if any) so a backend keeps its index and its health and drain
// state across restarts, then assigns free indexes to new backends.
func New(dp Datapath, o Options) (*Balancer, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	b := &Balancer{dp: dp, frontend: o.Frontend, timeouts: o.Timeouts, log: o.Logger, nudger: o.Nudger, now: o.Now,
		failOpen: o.FailOpen, forgot: o.Forgot, backends: map[netip.AddrPort]*Backend{}}
	existing, err := dp.Backends()
	if err != nil {
		return nil, fmt.Errorf("read backends map: %w", err)
	}
	byAddr := map[netip.AddrPort]uint32{}
	used := map[uint32]bool{}
	for id, be := range existing {
		if be.Flags&backendFlagUsed == 0 {
			continue
		}
		byAddr[netip.AddrPortFrom(bpf.Addr(be.Addr), bpf.Port(be.Port))] = id
	}
	// Every slot in use stays: the configured backends' and those of the
	// backends that retire (below).
	for _, id := range byAddr {
		used[id] = true
	}
	next := uint32(0)
	for _, spec := range o.Backends {
		st := &Backend{Addr: spec.Addr, Name: spec.Name, Weight: spec.Weight, Up: true}
		if id, ok := byAddr[spec.Addr]; ok {
			st.ID = id
			prev := existing[id]
			st.Up = prev.Flags&backendFlagUp != 0
			st.Drained = prev.Flags&backendFlagDrained != 0
			if prev.Flags&bpf.BackendFlagMAC != 0 {
				st.NextHop = &NextHop{MAC: prev.Mac, SrcMAC: prev.Smac, Ifindex: prev.Ifindex}
			}
		} else {
			for used[next] {
				next++
			}
			if next >= bpf.MaxBackends {
				return nil, fmt.Errorf("more than %d backends", bpf.MaxBackends)
			}
			st.ID = next
			used[next] = true
		}
		b.backends[spec.Addr] = st
	}
	// Backends no longer configured retire, as at a reload: no new
	// connections, their established ones stay until they end (the GC
	// then frees the slot).
	for addr, id := range byAddr {
		if _, ok := b.backends[addr]; !ok {
			prev := existing[id]
			st := &Backend{ID: id, Addr: addr, Up: prev.Flags&backendFlagUp != 0,
				Drained: prev.Flags&backendFlagDrained != 0, Retired: true}
			if prev.Flags&bpf.BackendFlagMAC != 0 {
				st.NextHop = &NextHop{MAC: prev.Mac, SrcMAC: prev.Smac, Ifindex: prev.Ifindex}
			}
			b.backends[addr] = st
		}
	}
	return b, nil
}

// Backends returns a snapshot sorted by address.
func (b *Balancer) Backends() []Backend {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Backend, 0, len(b.backends))
	for _, st := range b.backends {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Compare(out[j].Addr) < 0 })
	return out
}

// Lookup returns a backend by address.
func (b *Balancer) Lookup(addr netip.AddrPort) (Backend, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.backends[addr]
	if !ok {
		return Backend{}, false
	}
	return *st, true
}

// Sync writes every backend entry and a fresh Maglev table. It is safe to
// call at any time: the table is written into the half the data path is
// not reading, then made live in one store.
func (b *Balancer) Sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.syncLocked()
}

func (b *Balancer) syncLocked() error {
	var mb []maglev.Backend
	anyUp, anyDown := false, false
	for _, st := range b.backends {
		if err := b.dp.PutBackend(st.ID, b.entry(st)); err != nil {
			return fmt.Errorf("write backend %s: %w", st.Addr, err)
		}
		anyUp = anyUp || st.TakesNew()
		anyDown = anyDown || !st.Up && !st.Drained && !st.Retired && st.Weight > 0
	}
	failingOpen := !anyUp && anyDown && b.failOpen
	for _, st := range b.backends {
		w := st.Weight
		if st.Drained || st.Retired || !st.Up && !failingOpen {
			w = 0
		}
		mb = append(mb, maglev.Backend{ID: st.ID, Key: st.Addr.String(), Weight: w})
	}
	// Failing open, a connection none of the backends takes is reset at
	// once; otherwise it is dropped, so that its retransmitted SYN finds
	// a live backend once the refusing ones are marked down. Set before
	// the table holds every backend, cleared after it no longer does.
	wasOpen, known := b.failingOpen, b.resetKnown
	if failingOpen && (!wasOpen || !known) {
		if err := b.dp.SetNoBackendReset(true); err != nil {
			return fmt.Errorf("set the data path's reset policy: %w", err)
		}
		b.log.Debug("no backend is up: the table holds every configured backend")
	}
	b.failingOpen = failingOpen
	table := maglev.Build(mb, bpf.MaglevSize)
	active, err := b.dp.ActiveMaglev()
	if err != nil {
		return fmt.Errorf("read live maglev table: %w", err)
	}
	spare := 1 - active&1
	if err := b.dp.PutMaglev(spare, table); err != nil {
		return fmt.Errorf("write maglev table: %w", err)
	}
	if err := b.dp.SetActiveMaglev(spare); err != nil {
		return fmt.Errorf("switch maglev table: %w", err)
	}
	if !failingOpen && (wasOpen || !known) {
		if err := b.dp.SetNoBackendReset(false); err != nil {
			return fmt.Errorf("set the data path's reset policy: %w", err)
		}
	}
	b.resetKnown = true
	return nil
}

func (b *Balancer) entry(st *Backend) bpf.Backend {
	be := bpf.Backend{Addr: bpf.BE32(st.Addr.Addr()), Port: bpf.BE16(st.Addr.Port()), Flags: backendFlagUsed}
	if st.Up {
		be.Flags |= backendFlagUp
	}
	if st.Drained {
		be.Flags |= backendFlagDrained
	}
	if st.NextHop != nil {
		be.Flags |= bpf.BackendFlagMAC
		be.Mac, be.Smac, be.Ifindex = st.NextHop.MAC, st.NextHop.SrcMAC, st.NextHop.Ifindex
	}
	return be
}

// FailingOpen says whether no backend is up and the table holds every
// configured backend instead (Options.FailOpen).
func (b *Balancer) FailingOpen() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failingOpen
}

// SetHealth records a health transition. A backend going down leaves the
// table at once. Unless keepFlows, its tracked flows are removed and their
// clients nudged so they see a reset now instead of hanging on a dead
// server; keepFlows is for a server that still answers but is not ready,
// whose established connections (watches) may well go on working.
func (b *Balancer) SetHealth(addr netip.AddrPort, up, keepFlows bool) error {
	b.mu.Lock()
	st, ok := b.backends[addr]
	if !ok {
		b.mu.Unlock()
		return fmt.Errorf("backend %s is not configured", addr)
	}
	if st.Up == up {
		b.mu.Unlock()
		return nil
	}
	st.Up = up
	st.FlowsKept = !up && keepFlows
	id := st.ID
	err := b.syncLocked()
	b.mu.Unlock()
	if err != nil {
		return err
	}
	if up {
		return b.dp.ClearRefused(id)
	}
	if keepFlows {
		return nil
	}
	return b.purgeBackend(addr, id)
}

// PurgeFlows removes the connections a down backend kept (see SetHealth)
// once it stops answering at all.
func (b *Balancer) PurgeFlows(addr netip.AddrPort) error {
	b.mu.Lock()
	st, ok := b.backends[addr]
	if !ok || st.Up || !st.FlowsKept {
		b.mu.Unlock()
		return nil
	}
	st.FlowsKept = false
	id := st.ID
	b.mu.Unlock()
	return b.purgeBackend(addr, id)
}

func (b *Balancer) purgeBackend(addr netip.AddrPort, id uint32) error {
	n, err := b.purge(func(f bpf.Flow) bool { return f.Backend == id })
	b.log.Info("removed flows of backend", "backend", addr.String(), "connections", n)
	return err
}

// SetDrained drains (no new flows, existing ones stay) or re-enables a backend.
func (b *Balancer) SetDrained(addr netip.AddrPort, drained bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.backends[addr]
	if !ok {
		return fmt.Errorf("backend %s is not configured", addr)
	}
	st.Drained = drained
	return b.syncLocked()
}

// SetWeight changes a backend's weight; 0 drains it.
func (b *Balancer) SetWeight(addr netip.AddrPort, w uint32) error {
	if w > config.MaxWeight {
		return fmt.Errorf("weight %d: at most %d", w, config.MaxWeight)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.backends[addr]
	if !ok {
		return fmt.Errorf("backend %s is not configured", addr)
	}
	st.Weight = w
	return b.syncLocked()
}

// SetNextHop records where a backend's packets leave; nil when unresolved.
func (b *Balancer) SetNextHop(addr netip.AddrPort, nh *NextHop) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.backends[addr]
	if !ok {
		return nil
	}
	if (st.NextHop == nil) == (nh == nil) && (nh == nil || *st.NextHop == *nh) {
		return nil
	}
	st.NextHop = nh
	return b.dp.PutBackend(st.ID, b.entry(st))
}

// Refused reports the backends the data path flagged for refusing a SYN
// (with RST) at or after since, with the time of the flag.
func (b *Balancer) Refused() (map[netip.AddrPort]uint64, error) {
	out := map[netip.AddrPort]uint64{}
	for _, st := range b.Backends() {
		ts, err := b.dp.Refused(st.ID)
		if err != nil {
			return nil, err
		}
		if ts != 0 {
			out[st.Addr] = ts
		}
	}
	return out, nil
}

// ClearRefusedBefore clears a backend's refusal flag if it was set before
// t: a health check that started after the refusal has passed.
func (b *Balancer) ClearRefusedBefore(addr netip.AddrPort, t uint64) error {
	st, ok := b.Lookup(addr)
	if !ok {
		return nil
	}
	ts, err := b.dp.Refused(st.ID)
	if err != nil || ts == 0 || ts >= t {
		return err
	}
	return b.dp.ClearRefused(st.ID)
}

// GCResult summarises one pass over the flow tables.
type GCResult struct {
	Expired, Orphaned int
	// Established connections per backend (closing ones not counted),
	// by their client->backend entries.
	Connections map[uint32]int
	HalfOpen    map[uint32]int
	// Entries left in each table.
	Entries map[bpf.FlowTable]int
	// Pressure is the connection table's load, and what was done about it.
	Pressure Pressure
	// Freed are the retired backends whose last connection had ended:
	// their slots are free, and they are gone from Backends.
	Freed []Backend
}

// GC removes flows idle past their state's timeout (the data path also
// ignores them, but only when a packet comes) and flows of backends that
// are down or gone, and counts what stays. When the connection table is
// crowded it also removes connections that have ended before their
// timeout; it rewrites the per-client counts when a per-client limit is
// set; and it sets or clears the data path's refusal of new connections
// (see RefuseNew).
func (b *Balancer) GC() (GCResult, error) {
	res := GCResult{Connections: map[uint32]int{}, HalfOpen: map[uint32]int{}, Entries: map[bpf.FlowTable]int{}}
	live := map[uint32]bool{}
	failingOpen := b.FailingOpen()
	for _, st := range b.Backends() {
		// Failing open, every backend of the table takes connections.
		if st.Up || st.FlowsKept || failingOpen && !st.Drained && !st.Retired && st.Weight > 0 {
			live[st.ID] = true
		}
	}
	now := b.now()
	dead := map[bpf.FlowTable][]bpf.FlowKey{}
	var orphans, over []bpf.FlowKey
	var forgotten, reclaimable []forgot
	clients := map[netip.Addr]uint32{}
	refs := map[uint32]int{} // entries kept, per backend
	entries := 0
	err := b.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if t == bpf.TableEstablished {
			entries++
		}
		idle := time.Duration(0)
		if now > f.LastSeenNs {
			idle = time.Duration(now - f.LastSeenNs)
		}
		conn := f.Dir == uint8(bpf.FlowToBackend) && t == bpf.TableEstablished
		switch {
		case idle > b.timeouts.Timeout(bpf.FlowState(f.State)):
			dead[t] = append(dead[t], k)
			res.Expired++
			if conn {
				forgotten = append(forgotten, forgot{ForgotExpired, k, f})
			}
		case !live[f.Backend]:
			dead[t] = append(dead[t], k)
			res.Orphaned++
			if conn {
				orphans = append(orphans, k)
				forgotten = append(forgotten, forgot{ForgotOrphaned, k, f})
			}
		default:
			res.Entries[t]++
			refs[f.Backend]++
			if t == bpf.TableEstablished && ended(f, idle) {
				over = append(over, k)
				if conn {
					reclaimable = append(reclaimable, forgot{ForgotReclaimed, k, f})
				}
			}
			if f.Dir == uint8(bpf.FlowToBackend) {
				switch {
				case t == bpf.TableHalfOpen:
					res.HalfOpen[f.Backend]++
				case f.State == uint8(bpf.FlowEstablished):
					res.Connections[f.Backend]++
					res.Pressure.Live++
					clients[k.Src().Addr()]++
				}
			}
		}
	})
	if err != nil {
		return res, err
	}
	res.Pressure.Capacity = int(b.dp.TableCapacity(bpf.TableEstablished) / 2)
	res.Pressure.Entries = entries
	if Crowded(entries, res.Pressure.Capacity) && len(over) > 0 {
		dead[bpf.TableEstablished] = append(dead[bpf.TableEstablished], over...)
		res.Entries[bpf.TableEstablished] -= len(over)
		res.Pressure.Reclaimed = len(over) / 2
		forgotten = append(forgotten, reclaimable...)
		// A reclaimed entry still counted as a reference: its backend
		// is freed at the next pass.
	}
	var errs []error
	for t, keys := range dead {
		if err := b.dp.DeleteFlows(t, keys); err != nil {
			errs = append(errs, err)
		}
	}
	b.tellForgotten(forgotten)
	b.nudge(orphans)
	if b.timeouts.MaxConnsPerClient > 0 {
		if err := b.dp.SetClientConns(clients); err != nil {
			errs = append(errs, fmt.Errorf("rewrite per-client counts: %w", err))
		}
	}
	refusing, err := b.setRefusing(RefuseNew(res.Pressure.Live, res.Pressure.Capacity, b.isRefusing()))
	if err != nil {
		errs = append(errs, err)
	}
	res.Pressure.Refusing = refusing
	freed, err := b.freeRetired(refs)
	if err != nil {
		errs = append(errs, err)
	}
	res.Freed = freed
	return res, errors.Join(errs...)
}

// ended says a connection has ended, or nearly, and may go before its
// timeout when the table is crowded: closed (both FINs), reset, or
// closing (one FIN) and idle for ReclaimIdle.
func ended(f bpf.Flow, idle time.Duration) bool {
	switch bpf.FlowState(f.State) {
	case bpf.FlowClosed, bpf.FlowReset:
		return true
	case bpf.FlowClosing:
		return idle >= ReclaimIdle
	}
	return false
}

func (b *Balancer) isRefusing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refusing
}

// setRefusing writes lb_control.refuse_new when it changes (and the
// first time), and reports the value in force.
func (b *Balancer) setRefusing(refuse bool) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.refuseKnown && b.refusing == refuse {
		return refuse, nil
	}
	if err := b.dp.SetRefuseNew(refuse); err != nil {
		return b.refusing, fmt.Errorf("set refuse_new=%v: %w", refuse, err)
	}
	b.refusing, b.refuseKnown = refuse, true
	return refuse, nil
}

// purge deletes every flow (both entries) matching sel and nudges the
// clients of established ones.
func (b *Balancer) purge(sel func(bpf.Flow) bool) (int, error) {
	keys := map[bpf.FlowTable][]bpf.FlowKey{}
	var clients []bpf.FlowKey
	var forgotten []forgot
	err := b.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if !sel(f) {
			return
		}
		keys[t] = append(keys[t], k)
		if f.Dir == uint8(bpf.FlowToBackend) && t == bpf.TableEstablished {
			clients = append(clients, k)
			forgotten = append(forgotten, forgot{ForgotPurged, k, f})
		}
	})
	if err != nil {
		return 0, err
	}
	var errs []error
	for t, ks := range keys {
		if err := b.dp.DeleteFlows(t, ks); err != nil {
			errs = append(errs, err)
		}
	}
	b.tellForgotten(forgotten)
	b.nudge(clients)
	return len(clients), errors.Join(errs...)
}

// forgot is a connection the balancer removed, for Options.Forgot.
type forgot struct {
	why Forgotten
	k   bpf.FlowKey
	f   bpf.Flow
}

func (b *Balancer) tellForgotten(fs []forgot) {
	if b.forgot == nil {
		return
	}
	for _, x := range fs {
		b.forgot(x.why, x.k, x.f)
	}
}

func (b *Balancer) nudge(clientKeys []bpf.FlowKey) {
	if b.nudger == nil {
		return
	}
	for _, k := range clientKeys {
		if err := b.nudger.Nudge(k.Dst(), k.Src()); err != nil {
			b.log.Warn("nudge client", "client", k.Src().String(), "err", err)
		}
	}
}
