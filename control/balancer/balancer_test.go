package balancer

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer/balancertest"
	"github.com/xdplb/xdplb/control/config"
)

type recordNudger struct{ got []netip.AddrPort }

func (r *recordNudger) Nudge(_, client netip.AddrPort) error {
	r.got = append(r.got, client)
	return nil
}

var (
	s1 = netip.MustParseAddrPort("10.10.10.50:6443")
	s2 = netip.MustParseAddrPort("10.10.10.51:6443")
	s3 = netip.MustParseAddrPort("10.10.10.52:6443")
)

func newTestBalancer(t *testing.T, dp *balancertest.Datapath, now *uint64, n Nudger) *Balancer {
	t.Helper()
	b, err := New(dp, Options{
		Frontend: netip.MustParseAddrPort("10.10.10.100:6443"),
		Backends: []config.BackendSpec{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}, {Addr: s3, Weight: 1}},
		Timeouts: bpf.Config{IdleTimeout: time.Hour, SynTimeout: 10 * time.Second},
		Nudger:   n, Now: func() uint64 { return *now }, Logger: quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	return b
}

func share(table []uint32) map[uint32]int {
	out := map[uint32]int{}
	for _, id := range table {
		out[id]++
	}
	return out
}

// TestBalancerDownPurgesAndNudges: a backend going down leaves the live
// table at once, its connections are removed (both entries) and their
// clients nudged; other backends' connections stay.
func TestBalancerDownPurgesAndNudges(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	nudges := &recordNudger{}
	b := newTestBalancer(t, dp, &now, nudges)
	st2, _ := b.Lookup(s2)
	if share(dp.Live())[st2.ID] == 0 {
		t.Fatal("s2 has no slots while up")
	}
	victim := netip.MustParseAddrPort("10.10.10.101:40000")
	other := netip.MustParseAddrPort("10.10.10.102:40000")
	dp.AddConn(victim, s2, st2.ID, 30000, now, bpf.FlowEstablished)
	st1, _ := b.Lookup(s1)
	keep := dp.AddConn(other, s1, st1.ID, 30001, now, bpf.FlowEstablished)

	if err := b.SetHealth(s2, false, false); err != nil {
		t.Fatal(err)
	}
	if share(dp.Live())[st2.ID] != 0 {
		t.Fatal("down backend still owns slots in the live table")
	}
	if len(dp.Flows(bpf.TableEstablished)) != 2 {
		t.Fatalf("flows left: %d entries, want the other connection's 2", len(dp.Flows(bpf.TableEstablished)))
	}
	if _, ok := dp.Flows(bpf.TableEstablished)[keep]; !ok {
		t.Fatal("a healthy backend's connection was removed")
	}
	if len(nudges.got) != 1 || nudges.got[0] != victim {
		t.Fatalf("nudged %v, want [%v]", nudges.got, victim)
	}
	if dp.Backend(st2.ID).Flags&backendFlagUp != 0 {
		t.Fatal("down state not recorded in the backends map")
	}
	// Up again: back in the table, its refusal flag cleared.
	dp.SetRefused(st2.ID, 5)
	if err := b.SetHealth(s2, true, false); err != nil {
		t.Fatal(err)
	}
	if share(dp.Live())[st2.ID] == 0 || refused(dp, st2.ID) != 0 {
		t.Fatal("backend back up: not in the table, or refusal flag kept")
	}
}

// TestBalancerDrainKeepsFlows: drain takes the backend out of the table but
// leaves its connections alone; weights give proportional slots.
func TestBalancerDrainKeepsFlows(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	b := newTestBalancer(t, dp, &now, nil)
	st1, _ := b.Lookup(s1)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40000"), s1, st1.ID, 30000, now, bpf.FlowEstablished)
	if err := b.SetDrained(s1, true); err != nil {
		t.Fatal(err)
	}
	if share(dp.Live())[st1.ID] != 0 {
		t.Fatal("drained backend owns slots")
	}
	if res, _ := b.GC(); len(dp.Flows(bpf.TableEstablished)) != 2 || res.Connections[st1.ID] != 1 {
		t.Fatalf("drain removed flows or GC lost count: %+v", res)
	}
	if err := b.SetDrained(s1, false); err != nil {
		t.Fatal(err)
	}
	if err := b.SetWeight(s3, 3); err != nil {
		t.Fatal(err)
	}
	st3, _ := b.Lookup(s3)
	sh := share(dp.Live())
	ratio := float64(sh[st3.ID]) / float64(sh[st1.ID])
	if ratio < 2.9 || ratio > 3.1 {
		t.Fatalf("weight 3 vs 1 gives slot ratio %.2f", ratio)
	}
	if err := b.SetWeight(s3, config.MaxWeight+1); err == nil {
		t.Fatal("weight above the maximum accepted")
	}
	if err := b.SetDrained(netip.MustParseAddrPort("10.0.0.1:6443"), true); err == nil {
		t.Fatal("drain of an unknown backend accepted")
	}
}

// TestBalancerGC: idle and closed flows expire by their state's timeout;
// flows of backends no longer configured are removed.
func TestBalancerGC(t *testing.T) {
	dp := balancertest.New()
	now := uint64(10_000e9)
	b := newTestBalancer(t, dp, &now, nil)
	st1, _ := b.Lookup(s1)
	fresh := dp.AddConn(netip.MustParseAddrPort("10.10.10.101:1"), s1, st1.ID, 30000, now-uint64(time.Minute), bpf.FlowEstablished)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:2"), s1, st1.ID, 30001, now-uint64(2*time.Hour), bpf.FlowEstablished)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:3"), s1, st1.ID, 30002, now-uint64(20*time.Second), bpf.FlowClosing)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:4"), netip.MustParseAddrPort("10.10.10.60:6443"), 77, 30003, now, bpf.FlowEstablished)
	res, err := b.GC()
	if err != nil {
		t.Fatal(err)
	}
	if res.Expired != 4 || res.Orphaned != 2 || len(dp.Flows(bpf.TableEstablished)) != 2 {
		t.Fatalf("gc %+v, %d entries left", res, len(dp.Flows(bpf.TableEstablished)))
	}
	if _, ok := dp.Flows(bpf.TableEstablished)[fresh]; !ok {
		t.Fatal("a live flow was collected")
	}
}

// TestBalancerKeepsIDsAcrossRestart: a new balancer over the same maps
// keeps each backend's index and health, and gives a new backend a free one.
func TestBalancerKeepsIDsAcrossRestart(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	b := newTestBalancer(t, dp, &now, nil)
	before := map[netip.AddrPort]uint32{}
	for _, st := range b.Backends() {
		before[st.Addr] = st.ID
	}
	if err := b.SetHealth(s3, false, false); err != nil {
		t.Fatal(err)
	}
	s4 := netip.MustParseAddrPort("10.10.10.53:6443")
	b2, err := New(dp, Options{
		Frontend: netip.MustParseAddrPort("10.10.10.100:6443"),
		Backends: []config.BackendSpec{{Addr: s4, Weight: 1}, {Addr: s3, Weight: 1}, {Addr: s1, Weight: 1}},
		Now:      func() uint64 { return now }, Logger: quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.AddrPort{s1, s3} {
		st, _ := b2.Lookup(a)
		if st.ID != before[a] {
			t.Fatalf("%v changed index %d -> %d", a, before[a], st.ID)
		}
	}
	if st, _ := b2.Lookup(s3); st.Up {
		t.Fatal("s3's down state lost across restart")
	}
	st4, _ := b2.Lookup(s4)
	if st4.ID == before[s1] || st4.ID == before[s2] || st4.ID == before[s3] {
		t.Fatalf("new backend got index %d, one of the configured or retiring backends'", st4.ID)
	}
	// s2, no longer configured, retires: freed by the first GC (no flow).
	if st2, _ := b2.Lookup(s2); !st2.Retired {
		t.Fatalf("s2 not retired: %+v", st2)
	}
	if res, _ := b2.GC(); len(res.Freed) != 1 || res.Freed[0].Addr != s2 {
		t.Fatalf("GC freed %v, want s2", res.Freed)
	}
}

// TestBalancerNotReadyKeepsFlows: a backend down because it answers "not
// ready" keeps its connections until it stops answering.
func TestBalancerNotReadyKeepsFlows(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	nudges := &recordNudger{}
	b := newTestBalancer(t, dp, &now, nudges)
	st2, _ := b.Lookup(s2)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40000"), s2, st2.ID, 30000, now, bpf.FlowEstablished)
	if err := b.SetHealth(s2, false, true); err != nil {
		t.Fatal(err)
	}
	if share(dp.Live())[st2.ID] != 0 {
		t.Fatal("not-ready backend still owns slots")
	}
	if res, _ := b.GC(); len(dp.Flows(bpf.TableEstablished)) != 2 || res.Connections[st2.ID] != 1 || len(nudges.got) != 0 {
		t.Fatalf("not-ready backend lost its connections: %+v, nudged %v", res, nudges.got)
	}
	if err := b.PurgeFlows(s2); err != nil {
		t.Fatal(err)
	}
	if len(dp.Flows(bpf.TableEstablished)) != 0 || len(nudges.got) != 1 {
		t.Fatalf("purge left %d entries, nudged %v", len(dp.Flows(bpf.TableEstablished)), nudges.got)
	}
}

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func refused(dp *balancertest.Datapath, id uint32) uint64 {
	ts, _ := dp.Refused(id)
	return ts
}

// TestBalancerFailsOpen (issue 11 §3): when no backend is up the table
// holds every configured backend that is not drained, their connections
// are kept by the GC, and the balancer says it fails open; one backend up
// again ends it. With the drop policy the table is empty instead.
func TestBalancerFailsOpen(t *testing.T) {
	for _, open := range []bool{true, false} {
		dp := balancertest.New()
		now := uint64(100e9)
		b, err := New(dp, Options{
			Frontend: netip.MustParseAddrPort("10.10.10.100:6443"),
			Backends: []config.BackendSpec{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}, {Addr: s3, Weight: 1}},
			Timeouts: bpf.Config{IdleTimeout: time.Hour}, Now: func() uint64 { return now }, Logger: quietLogger,
			FailOpen: open,
		})
		if err != nil {
			t.Fatal(err)
		}
		b.Sync()
		b.SetDrained(s3, true)
		st1, _ := b.Lookup(s1)
		st2, _ := b.Lookup(s2)
		st3, _ := b.Lookup(s3)
		b.SetHealth(s1, false, false)
		if b.FailingOpen() {
			t.Fatal("failing open while s2 is up")
		}
		b.SetHealth(s2, false, false)
		live := share(dp.Live())
		if !open {
			if b.FailingOpen() || live[st1.ID] != 0 || live[st2.ID] != 0 || live[st3.ID] != 0 || dp.NoBackendReset() {
				t.Fatalf("drop policy: failing open %v, table %v", b.FailingOpen(), live)
			}
			continue
		}
		if !b.FailingOpen() || live[st1.ID] == 0 || live[st2.ID] == 0 || live[st3.ID] != 0 || !dp.NoBackendReset() {
			t.Fatalf("open policy: failing open %v, table %v (s3 drained), reset %v", b.FailingOpen(), live, dp.NoBackendReset())
		}
		// A connection the fail-open table made survives the GC.
		c := dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40000"), s1, st1.ID, 30000, now, bpf.FlowEstablished)
		if res, _ := b.GC(); res.Orphaned != 0 {
			t.Fatalf("GC removed %d entries while failing open", res.Orphaned)
		}
		if _, ok := dp.Flows(bpf.TableEstablished)[c]; !ok {
			t.Fatal("connection gone")
		}
		b.SetHealth(s2, true, false)
		if b.FailingOpen() || share(dp.Live())[st1.ID] != 0 || dp.NoBackendReset() {
			t.Fatalf("s2 back: failing open %v, table %v, reset %v", b.FailingOpen(), share(dp.Live()), dp.NoBackendReset())
		}
		// Every backend drained: nothing to fail open to.
		b.SetHealth(s2, false, false)
		b.SetDrained(s1, true)
		b.SetDrained(s2, true)
		if b.FailingOpen() {
			t.Fatal("failing open with every backend drained")
		}
	}
}

// TestBalancerTellsForgotten: the connections the balancer removes are
// reported with why (flow sync tells the peer).
func TestBalancerTellsForgotten(t *testing.T) {
	dp := balancertest.New()
	now := uint64(10000e9)
	got := map[Forgotten]int{}
	b, err := New(dp, Options{
		Frontend: netip.MustParseAddrPort("10.10.10.100:6443"),
		Backends: []config.BackendSpec{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}},
		Timeouts: bpf.Config{IdleTimeout: time.Hour}, Now: func() uint64 { return now }, Logger: quietLogger,
		Forgot: func(why Forgotten, k bpf.FlowKey, f bpf.Flow) {
			if f.Dir != uint8(bpf.FlowToBackend) {
				t.Errorf("told of a reply entry")
			}
			got[why]++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Sync()
	st1, _ := b.Lookup(s1)
	st2, _ := b.Lookup(s2)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40000"), s1, st1.ID, 30000, now-2*uint64(time.Hour), bpf.FlowEstablished)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40001"), s2, st2.ID, 30001, now, bpf.FlowEstablished)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:40002"), s1, st1.ID, 30002, now, bpf.FlowEstablished)
	b.GC()
	b.SetHealth(s2, false, false)
	if got[ForgotExpired] != 1 || got[ForgotPurged] != 1 || len(got) != 2 {
		t.Fatalf("told %v", got)
	}
}
