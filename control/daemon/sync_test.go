package daemon

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer/balancertest"
	"github.com/xdplb/xdplb/control/config"
	flowsync "github.com/xdplb/xdplb/control/sync"
	"github.com/xdplb/xdplb/loader"
)

var syncKey = []byte("the pair's shared key: 0123456789abcdef")

// fakeEvents is the data path's reports, fed by the test.
type fakeEvents struct {
	ch     chan bpf.SyncEvent
	closed chan struct{}
	once   sync.Once
}

func newFakeEvents() *fakeEvents {
	return &fakeEvents{ch: make(chan bpf.SyncEvent, 64), closed: make(chan struct{})}
}

func (f *fakeEvents) Read(deadline time.Time) (bpf.SyncEvent, uint64, error) {
	select {
	case ev := <-f.ch:
		return ev, 0, nil
	case <-f.closed:
		return bpf.SyncEvent{}, 0, loader.ErrClosed
	case <-time.After(time.Until(deadline)):
		return bpf.SyncEvent{}, 0, os.ErrDeadlineExceeded
	}
}

func (f *fakeEvents) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

// syncRig is a daemon with flow sync over loopback TCP.
type syncRig struct {
	*rig
	addr   netip.AddrPort // where it listens
	vip    atomic.Bool
	events *fakeEvents
}

// newSyncRig makes a daemon listening on source (127.0.0.x) whose peer
// listens at peer; backends lists its backends in its own order (so the
// two nodes' indexes differ).
func newSyncRig(t *testing.T, source netip.Addr, peer netip.AddrPort, backends []netip.AddrPort) *syncRig {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(source, peer.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	r := &syncRig{addr: netip.MustParseAddrPort(ln.Addr().String()), events: newFakeEvents()}
	r.rig = newRigWith(t, func(cfg *config.Config, p *parts) {
		cfg.Backends = nil
		for _, b := range backends {
			cfg.Backends = append(cfg.Backends, config.BackendSpec{Addr: b, Weight: 1})
		}
		p.sync = &syncParts{
			peer: peer, source: source, key: syncKey, listener: ln, events: r.events,
			holdsVIP: func() (bool, error) { return r.vip.Load(), nil },
			localMAC: [6]byte{2, 0x58, 10, 10, 10, source.As4()[3]},
			dial: func(ctx context.Context) (net.Conn, error) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(source.AsSlice())}}
				return d.DialContext(ctx, "tcp", peer.String())
			},
		}
	})
	return r
}

// start runs the rig's flow sync loops until the test ends.
func (r *syncRig) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	r.d.sync.run(func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func (r *syncRig) check() (bool, string) {
	resp := r.d.handle(Request{Cmd: "check"})
	return resp.OK, resp.Error
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
	}
}

// conns lists the established connections of a fake datapath: client ->
// backend (index), state.
type connView struct {
	backend netip.AddrPort
	index   uint32
	snat    uint16
	state   bpf.FlowState
	reply   bool
}

func conns(dp *balancertest.Datapath) map[netip.AddrPort]connView {
	out := map[netip.AddrPort]connView{}
	flows := dp.Flows(bpf.TableEstablished)
	for k, f := range flows {
		if f.Dir != uint8(bpf.FlowToBackend) {
			continue
		}
		_, reply := flows[f.Twin()]
		out[k.Src()] = connView{f.Dst(), f.Backend, f.Src().Port(), bpf.FlowState(f.State), reply}
	}
	return out
}

var (
	lb1 = netip.MustParseAddr("127.0.0.1")
	lb2 = netip.MustParseAddr("127.0.0.2")
)

// freePort finds a port free on both loopback addresses.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String()).Port()
}

// newSyncPair is two nodes syncing over loopback, a holding the VIP, with
// the backends in opposite orders (so their indexes differ).
func newSyncPair(t *testing.T) (a, b *syncRig) {
	t.Helper()
	port := freePort(t)
	a = newSyncRig(t, lb1, netip.AddrPortFrom(lb2, port), []netip.AddrPort{s1, s2, s3})
	b = newSyncRig(t, lb2, netip.AddrPortFrom(lb1, port), []netip.AddrPort{s3, s2, s1})
	a.vip.Store(true)
	a.d.sync.holds.Store(true)
	return a, b
}

// upsertEvent is the data path's report of connection c.
func upsertEvent(c bpf.Connection) bpf.SyncEvent {
	ck, cf, _, rf := bpf.FlowPair(c)
	return bpf.SyncEvent{Kind: uint8(bpf.SyncUpsert), State: cf.State, Backend: c.BackendIndex, Key: ck, SnatPort: cf.Sport,
		ClientMac: rf.Dmac, CreatedNs: c.CreatedNs, LastSeenNs: c.LastSeenNs}
}

// TestSyncPair: a node that holds the VIP sends its whole table to a
// starting peer, whose check fails until it has it (and which drops what
// the holder no longer has); then each change: a new connection, a state
// change, a deletion, a connection the holder's balancer purged. The
// peer's entries use its own backend indexes.
func TestSyncPair(t *testing.T) {
	a, b := newSyncPair(t)
	now := a.d.parts.now()
	ia := func(addr netip.AddrPort) uint32 { return a.backend(t, addr).ID }
	ib := func(addr netip.AddrPort) uint32 { return b.backend(t, addr).ID }
	if ia(s1) == ib(s1) {
		t.Fatal("the two nodes give s1 the same index: the test would not see a translation")
	}
	c1 := netip.MustParseAddrPort("10.10.10.101:40001")
	c2 := netip.MustParseAddrPort("10.10.10.102:40002")
	c3 := netip.MustParseAddrPort("10.10.10.103:40003")
	a.dp.AddConn(c1, s1, ia(s1), 20001, now, bpf.FlowEstablished)
	a.dp.AddConn(c2, s2, ia(s2), 20002, now, bpf.FlowClosing)
	// b has a connection a forgot while b was away.
	b.dp.AddConn(c3, s3, ib(s3), 20003, 1e9, bpf.FlowEstablished)

	if ok, why := b.check(); ok || why == "" {
		t.Fatalf("b's check passes before it started syncing: %q", why)
	}
	a.start(t)
	b.start(t)
	waitFor(t, "b in sync", 5*time.Second, func() bool { ok, _ := b.check(); return ok })
	st := b.d.status().Sync
	if st.State != "in sync" || st.LastResync == nil || st.LastResync.Connections != 2 || !st.LastResync.FullTable || st.LastResync.StaleRemoved != 1 {
		t.Fatalf("b's sync status after the resync: %+v %+v", st, st.LastResync)
	}
	got := conns(b.dp)
	want := map[netip.AddrPort]connView{
		c1: {s1, ib(s1), 20001, bpf.FlowEstablished, true},
		c2: {s2, ib(s2), 20002, bpf.FlowClosing, true},
	}
	if len(got) != 2 || got[c1] != want[c1] || got[c2] != want[c2] {
		t.Fatalf("b's connections after the resync:\n%v\nwant\n%v", got, want)
	}

	// A new connection, reported by a's data path.
	c4 := netip.MustParseAddrPort("10.10.10.101:40004")
	ev := upsertEvent(bpf.Connection{Client: c4, Frontend: balancertest.Frontend, Backend: s3, SNATPort: 20004,
		BackendIndex: ia(s3), State: bpf.FlowEstablished, ClientMAC: [6]byte{2, 1}, CreatedNs: now, LastSeenNs: now})
	a.events.ch <- ev
	waitFor(t, "the new connection on b", 2*time.Second, func() bool { _, ok := conns(b.dp)[c4]; return ok })
	if got := conns(b.dp)[c4]; got != (connView{s3, ib(s3), 20004, bpf.FlowEstablished, true}) {
		t.Fatalf("new connection on b: %+v", got)
	}
	// It closes, then the data path forgets it.
	ev.State = uint8(bpf.FlowClosed)
	a.events.ch <- ev
	waitFor(t, "closed on b", 2*time.Second, func() bool { return conns(b.dp)[c4].state == bpf.FlowClosed })
	ev.Kind = uint8(bpf.SyncDelete)
	a.events.ch <- ev
	waitFor(t, "forgotten on b", 2*time.Second, func() bool { _, ok := conns(b.dp)[c4]; return !ok })

	// a's balancer purges s1's connections: b drops them too.
	a.d.bal.SetHealth(s1, false, false)
	waitFor(t, "purge reaches b", 2*time.Second, func() bool { _, ok := conns(b.dp)[c1]; return !ok })
	if _, ok := conns(b.dp)[c2]; !ok {
		t.Fatal("b lost a connection of another backend")
	}
	// b does not hold the VIP: what its balancer removes is not told.
	b.d.bal.SetHealth(s2, false, false)
	time.Sleep(200 * time.Millisecond)
	if _, ok := conns(a.dp)[c2]; !ok {
		t.Fatal("a node without the VIP told the holder to drop a connection")
	}
	sa, sb := a.d.status().Sync, b.d.status().Sync
	if sa.Counters["flows_sent"] < 5 || sb.Counters["flows_installed"] < 4 || sb.Counters["flows_removed"] < 2 ||
		sa.LagSamples == 0 || sb.Sessions != 1 || sa.State != "in sync" {
		t.Fatalf("counters: a %+v\nb %+v", sa, sb)
	}
	for r, n := range sb.Dropped {
		if n != 0 {
			t.Errorf("b dropped %d of the peer's (%s)", n, r)
		}
	}
	reg := b.d.registry()
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint of the sync metrics: %v %v", err, problems)
	}
	m := gatherText(t, reg)
	for _, want := range []string{`xdplb_sync_state{state="in sync"} 1`, `xdplb_sync_gate_open 1`, `xdplb_sync_dropped_total{reason="bad_mac"} 0`,
		`xdplb_sync_flows_installed_total `, "xdplb_sync_last_resync_connections 2", "xdplb_failing_open 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// The VIP moves to b: its takeover is logged with the connections
	// ready, and b now speaks for the connections.
	a.vip.Store(false)
	b.vip.Store(true)
	waitFor(t, "b takes over", 3*time.Second, func() bool { return b.d.status().Sync.Takeovers == 1 })
	if tk := b.d.status().Sync.LastTakeover; tk == nil || tk.ConnectionsReady != 0 {
		// c2 is closing, c1 purged: none established.
		t.Fatalf("takeover: %+v", tk)
	}
}

// TestSyncLoneNode: with no peer to answer, the gate opens after
// syncNoPeerWait: a lone node still takes the VIP.
func TestSyncLoneNode(t *testing.T) {
	defer func(d time.Duration) { syncNoPeerWait = d }(syncNoPeerWait)
	syncNoPeerWait = 300 * time.Millisecond
	start := time.Now()
	a := newSyncRig(t, lb1, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), freePort(t)), []netip.AddrPort{s1, s2, s3})
	a.start(t)
	if ok, why := a.check(); ok {
		t.Fatal("check passes at once")
	} else if why == "" {
		t.Fatal("no reason")
	}
	waitFor(t, "lone node's gate", 3*time.Second, func() bool { ok, _ := a.check(); return ok })
	if took := time.Since(start); took < syncNoPeerWait {
		t.Fatalf("opened after %v", took)
	}
}

// TestSyncHandoff: on a planned stop the check fails at once; the daemon
// returns once the VIP left (and a grace), or after handoffMax.
func TestSyncHandoff(t *testing.T) {
	defer func(g, m time.Duration) { handoffGrace, handoffMax = g, m }(handoffGrace, handoffMax)
	handoffGrace, handoffMax = 100*time.Millisecond, 2*time.Second
	defer func(d time.Duration) { syncNoPeerWait = d }(syncNoPeerWait)
	syncNoPeerWait = 0
	a := newSyncRig(t, lb1, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), freePort(t)), []netip.AddrPort{s1, s2, s3})
	a.vip.Store(true)
	a.d.sync.holds.Store(true)
	a.start(t)
	if ok, why := a.check(); !ok {
		t.Fatalf("check before the stop: %s", why)
	}
	done := make(chan time.Duration)
	go func() {
		start := time.Now()
		a.d.sync.handoff(context.Background())
		done <- time.Since(start)
	}()
	waitFor(t, "check fails", time.Second, func() bool { ok, _ := a.check(); return !ok })
	time.Sleep(300 * time.Millisecond)
	a.vip.Store(false) // keepalived moved it
	took := <-done
	if took < 300*time.Millisecond || took > 1500*time.Millisecond {
		t.Fatalf("handoff took %v", took)
	}
	// Nobody moves the VIP: bounded.
	b := newSyncRig(t, lb2, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), freePort(t)), []netip.AddrPort{s1, s2, s3})
	b.vip.Store(true)
	b.d.sync.holds.Store(true)
	start := time.Now()
	b.d.sync.handoff(context.Background())
	if took := time.Since(start); took < handoffMax || took > handoffMax+time.Second {
		t.Fatalf("unbounded handoff took %v", took)
	}
}

// TestSyncRefusesBadPeers: what a peer with the wrong key, a replayer, a
// stream cut short, an oversized or garbage frame, a host that is not the
// peer, and a well-signed peer describing foreign connections send is
// refused and counted by reason; nothing is installed.
func TestSyncRefusesBadPeers(t *testing.T) {
	port := freePort(t)
	b := newSyncRig(t, lb2, netip.AddrPortFrom(lb1, port), []netip.AddrPort{s1, s2, s3})
	b.start(t)
	target := b.addr.String()
	dialFrom := func(src netip.Addr) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(src.AsSlice())}, Timeout: time.Second}
		c, err := d.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		return c
	}
	dropped := func(r flowsync.Reason) uint64 { return b.d.status().Sync.Dropped[string(r)] }
	expect := func(what string, r flowsync.Reason, before uint64) {
		t.Helper()
		waitFor(t, what+" counted as "+string(r), 2*time.Second, func() bool { return dropped(r) > before })
	}
	session := func(key []byte) (*flowsync.Conn, *recorder, error) {
		conn := &recorder{Conn: dialFrom(lb1)}
		c, err := flowsync.Handshake(conn, key, flowsync.Dialer)
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		return c, conn, nil
	}
	state := flowsync.EncodeState(flowsync.NodeState{Frontend: b.d.node.data.Frontend, SNATLo: b.d.node.data.SNATLo, SNATHi: b.d.node.data.SNATHi})

	// Wrong key.
	before := dropped(flowsync.BadMAC)
	if _, _, err := session([]byte("not the pair's key, and long enough")); err == nil {
		t.Fatal("a handshake with the wrong key succeeded")
	}
	expect("wrong key", flowsync.BadMAC, before)

	// Not the peer's address.
	before = dropped(flowsync.NotPeer)
	c := dialFrom(netip.MustParseAddr("127.0.0.3"))
	c.Write([]byte("anything"))
	c.Close()
	expect("third host", flowsync.NotPeer, before)

	// Raw streams from the peer's address.
	for _, tc := range []struct {
		name   string
		bytes  []byte
		reason flowsync.Reason
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: lb-2\r\n\r\n"), flowsync.Garbage},
		{"oversized", []byte("XS\x01\x01\x7f\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"), flowsync.Oversized},
		{"truncated", []byte("XS\x01\x01\x00\x00\x00\x24\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01"), flowsync.Truncated},
	} {
		before := dropped(tc.reason)
		c := dialFrom(lb1)
		c.Write(tc.bytes)
		c.(*net.TCPConn).CloseWrite()
		expect(tc.name, tc.reason, before)
		c.Close()
	}

	// A well-signed peer: a frame replayed, then foreign connections.
	sc, conn, err := session(syncKey)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := sc.Send(flowsync.MsgState, state); err != nil {
		t.Fatal(err)
	}
	foreign := func(mutate func(*flowsync.Record)) flowsync.Record {
		r := flowsync.Record{Kind: flowsync.Upsert, State: flowsync.StateEstablished, Frontend: b.d.node.data.Frontend,
			Client: netip.MustParseAddrPort("10.10.10.101:41000"), Backend: s1, SNATPort: 20000, CreatedNs: 1, LastSeenNs: 1}
		mutate(&r)
		return r
	}
	before = dropped(flowsync.ForeignFrontend) + dropped(flowsync.UnknownBackend) + dropped(flowsync.ForeignSNAT)
	recs := []flowsync.Record{
		foreign(func(r *flowsync.Record) { r.Frontend = netip.MustParseAddrPort("10.10.10.200:6443") }),
		foreign(func(r *flowsync.Record) { r.Frontend = netip.MustParseAddrPort("10.10.10.100:443") }),
		foreign(func(r *flowsync.Record) { r.Backend = netip.MustParseAddrPort("10.10.10.77:6443") }),
		foreign(func(r *flowsync.Record) { r.SNATPort = 1000 }),
	}
	if err := sc.Send(flowsync.MsgFlows, flowsync.EncodeFlows(recs, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "foreign connections counted", 2*time.Second, func() bool {
		return dropped(flowsync.ForeignFrontend)+dropped(flowsync.UnknownBackend)+dropped(flowsync.ForeignSNAT) == before+4
	})
	if dropped(flowsync.ForeignFrontend) < 2 || dropped(flowsync.UnknownBackend) < 1 || dropped(flowsync.ForeignSNAT) < 1 {
		t.Fatalf("foreign: %v", b.d.status().Sync.Dropped)
	}
	if n := len(conns(b.dp)); n != 0 {
		t.Fatalf("%d connections installed from bad peers", n)
	}
	// Replay: the last frame again, as a man in the middle could.
	before = dropped(flowsync.Replayed)
	conn.Conn.Write(conn.last)
	expect("replayed frame", flowsync.Replayed, before)
	if n := len(conns(b.dp)); n != 0 {
		t.Fatalf("%d connections installed from bad peers", n)
	}
}

// recorder keeps the last bytes written.
type recorder struct {
	net.Conn
	mu   sync.Mutex
	last []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	r.last = slices.Clone(b)
	r.mu.Unlock()
	return r.Conn.Write(b)
}

// TestReadSyncKey: the key is the file's content without surrounding
// white space, at least 32 characters, from a regular file.
func TestReadSyncKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := dir + "/" + name
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	key, err := readSyncKey(write("good", "  "+strings.Repeat("ab", 32)+"\n"), quiet)
	if err != nil || string(key) != strings.Repeat("ab", 32) {
		t.Fatalf("good key: %q %v", key, err)
	}
	if _, err := readSyncKey(write("short", "0123456789abcdef0123456789abcde\n"), quiet); err == nil ||
		!strings.Contains(err.Error(), "the key is 31 characters; want at least 32") {
		t.Fatalf("short key: %v", err)
	}
	if _, err := readSyncKey(dir+"/none", quiet); err == nil || !strings.Contains(err.Error(), "sync-key-file") {
		t.Fatalf("missing key: %v", err)
	}
	if _, err := readSyncKey(dir, quiet); err == nil {
		t.Fatal("a directory as the key file")
	}
}

// TestSyncFollowsPeerSNAT: the node without the VIP moves its SNAT cursor
// for each backend to the port after the peer's newest connection to it
// (newest by creation, whatever order the resync or the events bring), so
// that after a takeover it hands out the ports after the peer's, not ones
// the peer's connections hold.
func TestSyncFollowsPeerSNAT(t *testing.T) {
	a, b := newSyncPair(t)
	now := a.d.parts.now()
	ia := func(addr netip.AddrPort) uint32 { return a.backend(t, addr).ID }
	ib := func(addr netip.AddrPort) uint32 { return b.backend(t, addr).ID }
	lo := b.d.sync.local.Load().SNATLo
	// Created in the order lo+10, lo+11, lo+12 (the newest); the table
	// hands them over in its own order.
	for i, p := range []uint16{lo + 12, lo + 10, lo + 11} {
		created := now + uint64(p-lo-10) // lo+12 the newest
		c := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), 40000+uint16(i))
		ck, cf, rk, rf := bpf.FlowPair(bpf.Connection{Client: c, Frontend: balancertest.Frontend, Backend: s1, SNATPort: p,
			BackendIndex: ia(s1), State: bpf.FlowEstablished, ClientMAC: [6]byte{2, 1}, CreatedNs: created, LastSeenNs: created})
		a.dp.PutConnection(ck, cf, rk, rf)
	}
	a.start(t)
	b.start(t)
	waitFor(t, "b in sync", 5*time.Second, func() bool { ok, _ := b.check(); return ok })
	if got, want := b.dp.SNATNext(ib(s1)), uint32(12+1); got != want {
		t.Fatalf("b's SNAT cursor for s1 after the resync: %d, want %d (the port after the newest, lo+12)", got, want)
	}
	if got := b.dp.SNATNext(ib(s2)); got != 0 {
		t.Fatalf("b's SNAT cursor for s2 moved (%d) without a connection to it", got)
	}
	// A newer connection moves it on; a change to an older one does not
	// move it back.
	send := func(client netip.AddrPort, p uint16, created uint64) {
		a.events.ch <- upsertEvent(bpf.Connection{Client: client, Frontend: balancertest.Frontend, Backend: s1, SNATPort: p,
			BackendIndex: ia(s1), State: bpf.FlowEstablished, ClientMAC: [6]byte{2, 1}, CreatedNs: created, LastSeenNs: a.d.parts.now()})
	}
	newer := netip.MustParseAddrPort("10.10.10.102:40100")
	send(newer, lo+20, a.d.parts.now())
	waitFor(t, "the newer connection on b", 2*time.Second, func() bool { _, ok := conns(b.dp)[newer]; return ok })
	if got := b.dp.SNATNext(ib(s1)); got != 21 {
		t.Fatalf("b's SNAT cursor after a newer connection on lo+20: %d, want 21", got)
	}
	older := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), 40001)
	send(older, lo+10, now)
	time.Sleep(200 * time.Millisecond)
	if got := b.dp.SNATNext(ib(s1)); got != 21 {
		t.Fatalf("b's SNAT cursor moved back to %d by a change to an older connection", got)
	}
}
