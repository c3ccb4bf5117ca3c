package daemon

// Flow sync's wiring: the data path's reports read from the perf array and
// queued for the peer, the session with the peer (sync_session.go), the
// peer's connections installed in this node's tables, the VIP watched and
// the handoff on SIGTERM (sync_vip.go), status and metrics
// (sync_status.go). Every decision is flowsync's (control/sync).

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer"
	flowsync "github.com/xdplb/xdplb/control/sync"
	"github.com/xdplb/xdplb/loader"
)

// Timing of flow sync (variables: the tests shorten some).
var (
	// syncNoPeerWait: a starting node that reaches no peer for this long
	// has nothing to resync (a lone node takes the VIP within a few
	// seconds); syncMaxWait bounds a resync that does not end.
	syncNoPeerWait = 3 * time.Second
	syncMaxWait    = time.Minute
	// handoffMax bounds the wait for the VIP to leave on SIGTERM (under
	// the unit's TimeoutStopSec); handoffGrace is how long the daemon
	// keeps syncing after it left (clients whose ARP caches still point
	// here).
	handoffMax   = 6 * time.Second
	handoffGrace = time.Second
)

const (
	// A session: the handshake, the peer's silence (it pings every
	// second), a write.
	syncHandshakeTimeout = 3 * time.Second
	syncReadTimeout      = 5 * time.Second
	syncWriteTimeout     = 5 * time.Second
	syncPing             = time.Second
	// syncDialBackoff bounds the wait between two dials of the peer.
	syncDialBackoff = time.Second
	// syncRefreshIdle: a connection idle this long whose last activity
	// was not reported is sent again by the refresh pass (every
	// bpf.Config.SyncRefresh), so the peer never ages it out before this
	// node does.
	syncRefreshIdle = 2 * time.Second
	// syncPerCPUBuffer is the perf buffer of each CPU (a report is 72
	// bytes with its header: ~3600 reports a CPU).
	syncPerCPUBuffer = 256 << 10
)

// syncEventSource is the data path's reports (loader.SyncEvents).
type syncEventSource interface {
	Read(deadline time.Time) (ev bpf.SyncEvent, lost uint64, err error)
	Close() error
}

// syncDatapath is what flow sync needs of the maps beyond the balancer's
// view (loader.Datapath, balancertest.Datapath).
type syncDatapath interface {
	ForEachFlow(fn func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow)) error
	DeleteFlows(t bpf.FlowTable, keys []bpf.FlowKey) error
	LookupFlow(t bpf.FlowTable, k bpf.FlowKey) (bpf.Flow, bool, error)
	PutConnection(ck bpf.FlowKey, client bpf.Flow, rk bpf.FlowKey, reply bpf.Flow) error
	SetSNATNext(backend uint32, next uint32) error
}

var _ syncDatapath = loader.Datapath{}

// syncParts are flow sync's connections to the node: Run makes the real
// ones, the tests give their own.
type syncParts struct {
	peer     netip.AddrPort // the other LB, its own address and sync port
	source   netip.Addr     // this node's own address (sync dials from it)
	key      []byte
	listener net.Listener
	events   syncEventSource // nil: none
	// holdsVIP says whether the VIP is on this node's interface now;
	// vipNotify, if set, calls back on every address change of the
	// interface until ctx ends.
	holdsVIP  func() (bool, error)
	vipNotify func(ctx context.Context, changed func()) error
	localMAC  [6]byte
	dial      func(ctx context.Context) (net.Conn, error)
}

// syncer is flow sync of one daemon.
type syncer struct {
	d     *Daemon
	p     syncParts
	dp    syncDatapath
	log   *slog.Logger
	gate  *flowsync.Gate
	out   *flowsync.Outbox
	lags  flowsync.Lags
	count flowsync.Counts
	local atomic.Pointer[flowsync.Local]

	holds    atomic.Bool
	stopping atomic.Bool
	needFull atomic.Bool   // events were lost: send the whole table
	wake     chan struct{} // the outbox has something
	warn     rateLimit

	mu          sync.Mutex
	sess        *session
	state       string
	stateSince  time.Time
	peerState   flowsync.NodeState
	sessions    uint64
	lastErr     string
	lastResync  resyncInfo
	lastTakeov  takeoverInfo
	takeovers   uint64
	refreshSent map[bpf.FlowKey]uint64
	// snatFrontier is, per backend index, the newest of the peer's
	// connections installed here: its creation time and SNAT port.
	snatFrontier map[uint32]snatMark
}

// snatMark is a connection's creation time (this node's clock) and its
// SNAT port.
type snatMark struct {
	created uint64
	port    uint16
}

// resyncInfo is the last bulk resync received from the peer.
type resyncInfo struct {
	At       time.Time
	Took     time.Duration
	Records  uint64
	Full     bool
	Swept    int
	Complete bool
}

// takeoverInfo is the last time the VIP arrived here.
type takeoverInfo struct {
	At         time.Time
	FlowsReady int
	SyncState  string
}

// Session states, as status shows them.
const (
	syncDisconnected = "disconnected"
	syncResyncing    = "resyncing"
	syncInSync       = "in sync"
)

func newSyncer(d *Daemon, p syncParts) (*syncer, error) {
	dp, ok := d.parts.dp.(syncDatapath)
	if !ok {
		return nil, errors.New("flow sync: the datapath cannot install connections")
	}
	s := &syncer{d: d, p: p, dp: dp, log: d.log.With("part", "sync"),
		gate:  flowsync.NewGate(time.Now(), syncNoPeerWait, syncMaxWait),
		out:   &flowsync.Outbox{Limit: int(d.cfg.TableConns())},
		wake:  make(chan struct{}, 1),
		warn:  rateLimit{every: 10 * time.Second},
		state: syncDisconnected, stateSince: time.Now(), refreshSent: map[bpf.FlowKey]uint64{},
	}
	if p.holdsVIP != nil {
		if h, err := p.holdsVIP(); err == nil {
			s.holds.Store(h)
		}
	}
	s.refreshLocal()
	return s, nil
}

// run starts flow sync's loops with the daemon's run.
func (s *syncer) run(run func(name string, f func(context.Context) error)) {
	loop := func(f func(context.Context)) func(context.Context) error {
		return func(ctx context.Context) error { f(ctx); return nil }
	}
	if s.p.events != nil {
		run("sync events", loop(s.readEvents))
	}
	run("sync listener", loop(s.accept))
	if s.dials() {
		run("sync dialer", loop(s.dialLoop))
	}
	run("sync vip", loop(s.watchVIP))
	run("sync tick", loop(s.tick))
}

// dials: of the pair, the node with the lower address dials, the other
// waits (both accept): one session, no race between two.
func (s *syncer) dials() bool { return s.p.source.Compare(s.p.peer.Addr()) < 0 }

// refreshLocal rebuilds this node's side of the translation from the
// balancer: backend indexes and next hops.
func (s *syncer) refreshLocal() {
	n := s.d.node
	l := &flowsync.Local{Frontend: n.data.Frontend, SNATLo: n.data.SNATLo, SNATHi: n.data.SNATHi,
		Backends: map[netip.AddrPort]flowsync.LocalBackend{}, LocalMAC: s.p.localMAC}
	ifindex := uint32(s.d.attachment().Ifindex)
	for _, b := range s.d.bal.Backends() {
		lb := flowsync.LocalBackend{Index: b.ID}
		if nh := b.NextHop; nh != nil {
			lb.MAC, lb.Ifindex = nh.MAC, nh.Ifindex
			if nh.Ifindex == ifindex {
				lb.Ifindex = 0
			}
		}
		l.Backends[b.Addr] = lb
	}
	s.local.Store(l)
}

// queue puts a change in the outbox and wakes the sender.
func (s *syncer) queue(r flowsync.Record) {
	s.out.Put(r, time.Now())
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// readEvents reads the data path's reports until ctx ends and queues them
// for the peer.
func (s *syncer) readEvents(ctx context.Context) {
	defer s.p.events.Close()
	for ctx.Err() == nil {
		ev, lost, err := s.p.events.Read(time.Now().Add(500 * time.Millisecond))
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, loader.ErrClosed):
			return
		case err != nil:
			if s.warn.allow() {
				s.log.Warn("read the data path's sync events", "err", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		case lost > 0:
			// The peer misses these changes: send the whole table.
			s.count.Add("events_lost", lost)
			s.needFull.Store(true)
			s.kick()
			continue
		}
		s.onEvent(ev)
	}
}

// onEvent queues one report of the data path.
func (s *syncer) onEvent(ev bpf.SyncEvent) {
	s.count.Add("events", 1)
	r, err := s.local.Load().FromEvent(ev)
	if err != nil {
		s.count.Add("events_unsendable", 1)
		s.log.Debug("sync event not sent", "err", err)
		return
	}
	s.queue(r)
}

func (s *syncer) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// forgot is the balancer telling of a connection it removed. Only the
// node that forwards speaks for connections: a node without the VIP
// removes what it cannot reach or what aged out by itself, and the peer
// that carries the connection must not be told to drop it.
func (s *syncer) forgot(why balancer.Forgotten, k bpf.FlowKey, f bpf.Flow) {
	if !s.holds.Load() {
		return
	}
	r, ok := flowsync.FromEntries(k, f, nil)
	if !ok {
		return
	}
	r.Kind = flowsync.Delete
	if why != balancer.ForgotExpired {
		// Removed now, whatever its last activity: the peer's copy
		// goes too unless the peer saw it later still.
		r.LastSeenNs = s.d.parts.now()
	}
	s.queue(r)
}

// install applies one of the peer's records to this node's tables. seen,
// if not nil, collects the connections of a full bulk resync.
func (s *syncer) install(r flowsync.Record, seen map[bpf.FlowKey]struct{}) {
	now := s.d.parts.now()
	c, err := s.local.Load().Connection(r, now)
	if err != nil {
		s.drop(err)
		return
	}
	ck, cf, rk, rf := bpf.FlowPair(c)
	if seen != nil {
		seen[ck] = struct{}{}
	}
	var ex flowsync.Existing
	if f, ok, err := s.dp.LookupFlow(bpf.TableEstablished, ck); err == nil && ok {
		ex.Client = &f
	}
	if f, ok, err := s.dp.LookupFlow(bpf.TableEstablished, rk); err == nil && ok {
		ex.Reply = &f
	}
	var plan flowsync.Plan
	if r.Kind == flowsync.Delete {
		plan = flowsync.PlanDelete(c, ex)
	} else {
		plan = flowsync.PlanUpsert(c, ex)
	}
	if plan.Drop != "" {
		s.count.Drop(plan.Drop)
		return
	}
	if len(plan.Remove) > 0 {
		if err := s.dp.DeleteFlows(bpf.TableEstablished, plan.Remove); err != nil {
			s.count.Drop(flowsync.InstallError)
			return
		}
		if r.Kind == flowsync.Delete {
			s.count.Add("flows_removed", 1)
		}
	}
	if !plan.Install {
		return
	}
	if err := s.dp.PutConnection(ck, cf, rk, rf); err != nil {
		if errors.Is(err, loader.ErrTableFull) {
			s.count.Drop(flowsync.TableFull)
		} else {
			s.count.Drop(flowsync.InstallError)
		}
		if s.warn.allow() {
			s.log.Warn("install a connection of the peer", "client", r.Client.String(), "err", err)
		}
		return
	}
	s.count.Add("flows_installed", 1)
	s.followSNAT(rf.Backend, cf.CreatedNs, bpf.Port(rk.Dport))
}

// followSNAT moves this node's SNAT cursor for a backend to the port after
// the peer's newest connection to it. The peer hands ports out in turn, so
// the ports after that one are the free ones, and the ones before it were
// used lately (their connections live in this table, or their backend may
// still hold state for them): a takeover here goes on with the peer's
// sequence instead of running into it. Newest by creation time, because a
// bulk resync arrives in table order.
//
// Only while this node does not hold the VIP: a node that forwards keeps
// its own turn (two nodes forwarding at once must not be drawn into the
// same ports).
func (s *syncer) followSNAT(backend uint32, created uint64, port uint16) {
	l := s.local.Load()
	if s.holds.Load() || port < l.SNATLo || port > l.SNATHi {
		return
	}
	s.mu.Lock()
	if s.snatFrontier == nil {
		s.snatFrontier = map[uint32]snatMark{}
	}
	m, ok := s.snatFrontier[backend]
	newest := !ok || created >= m.created
	if newest {
		s.snatFrontier[backend] = snatMark{created: created, port: port}
	}
	s.mu.Unlock()
	if !newest {
		return
	}
	// The cursor is the offset of the next port to try, plus one (0:
	// none chosen yet), as the data path keeps it.
	if err := s.dp.SetSNATNext(backend, uint32(port-l.SNATLo)+1); err != nil && s.warn.allow() {
		s.log.Warn("follow the peer's SNAT ports", "backend", backend, "err", err)
	}
}

// drop counts a refused record or frame, by its reason.
func (s *syncer) drop(err error) {
	r := flowsync.ReasonOf(err)
	if r == "" {
		r = flowsync.Garbage
	}
	s.count.Drop(r)
}

// sweep removes, after a full bulk from the node that forwards, the
// connections this node has that the bulk did not carry and that were not
// active here since it began: they ended while this node was not told
// (it was down, or cut off).
func (s *syncer) sweep(seen map[bpf.FlowKey]struct{}, began uint64) int {
	var gone []bpf.FlowKey
	s.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if t != bpf.TableEstablished || f.Dir != uint8(bpf.FlowToBackend) {
			return
		}
		if _, ok := seen[k]; ok || f.LastSeenNs+uint64(flowsync.Slack) >= began {
			return
		}
		gone = append(gone, k, f.Twin())
	})
	if len(gone) > 0 {
		s.dp.DeleteFlows(bpf.TableEstablished, gone)
	}
	return len(gone) / 2
}

// refresh queues the connections whose last activity the peer was not
// told of and that are now idle: the data path reports a connection again
// only while packets flow, so without this the peer would age such a
// connection out up to a refresh interval before this node does.
func (s *syncer) refresh() {
	if !s.holds.Load() {
		return
	}
	now := s.d.parts.now()
	s.mu.Lock()
	sent := s.refreshSent
	s.mu.Unlock()
	next := map[bpf.FlowKey]uint64{}
	var due []bpf.FlowKey
	var flows []bpf.Flow
	s.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if t != bpf.TableEstablished || f.Dir != uint8(bpf.FlowToBackend) || f.State != uint8(bpf.FlowEstablished) {
			return
		}
		if last, ok := sent[k]; ok && last == f.LastSeenNs {
			next[k] = last
			return
		}
		if f.LastSeenNs > f.SyncedNs && now > f.LastSeenNs && now-f.LastSeenNs >= uint64(syncRefreshIdle) {
			due = append(due, k)
			flows = append(flows, f)
		}
	})
	for i, k := range due {
		var reply *bpf.Flow
		if rf, ok, err := s.dp.LookupFlow(bpf.TableEstablished, flows[i].Twin()); err == nil && ok {
			reply = &rf
		}
		if r, ok := flowsync.FromEntries(k, flows[i], reply); ok {
			s.queue(r)
			next[k] = flows[i].LastSeenNs
		}
	}
	if len(due) > 0 {
		s.count.Add("flows_refreshed", uint64(len(due)))
	}
	s.mu.Lock()
	s.refreshSent = next
	s.mu.Unlock()
}

// tick keeps flow sync's view of the node current: the backends (for the
// translation), the link (a node whose link was down resyncs before it
// may take the VIP), the gate's log, and the refresh pass.
func (s *syncer) tick(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var downs uint64
	if s.d.parts.link != nil {
		_, downs, _ = s.d.parts.link.LinkState()
	}
	lastLocal, lastRefresh := time.Now(), time.Now()
	refreshEvery := s.d.node.data.SyncRefresh
	if refreshEvery <= 0 {
		refreshEvery = 10 * time.Second
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if l := s.d.parts.link; l != nil {
			up, n, since := l.LinkState()
			if n != downs {
				downs = n
				s.gate.LinkDown()
			}
			if up {
				s.gate.LinkUp(since)
			}
		}
		s.checkGate()
		if now.Sub(lastLocal) >= time.Second {
			s.refreshLocal()
			lastLocal = now
		}
		if now.Sub(lastRefresh) >= refreshEvery {
			s.refresh()
			lastRefresh = now
		}
	}
}

// checkGate says whether `xdplb check` may pass, and why not; it logs the
// gate opening.
func (s *syncer) checkGate() (bool, string) {
	ok, why, opened := s.gate.Check(time.Now(), s.holds.Load())
	if opened != "" {
		s.log.Info("the VIP may come to this node: "+opened, "sync", s.syncState())
	}
	return ok, why
}

func (s *syncer) syncState() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

func (s *syncer) setState(st string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != st {
		s.state, s.stateSince = st, time.Now()
	}
}
