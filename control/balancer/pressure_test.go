package balancer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer/balancertest"
)

// TestRefuseNew: the table refuses new connections from capacity less the
// headroom, and accepts them again only below capacity less twice the
// headroom.
func TestRefuseNew(t *testing.T) {
	const c = 1000 // headroom 10
	for _, tc := range []struct {
		live     int
		refusing bool
		want     bool
	}{
		{0, false, false},
		{989, false, false},
		{990, false, true},
		{1000, false, true},
		{990, true, true},
		{980, true, true},
		{979, true, false},
		{0, true, false},
	} {
		if got := RefuseNew(tc.live, c, tc.refusing); got != tc.want {
			t.Errorf("RefuseNew(live %d of %d, refusing %v) = %v, want %v", tc.live, c, tc.refusing, got, tc.want)
		}
	}
	if h := Headroom(16); h != 4 {
		t.Errorf("Headroom(16) = %d, want the minimum 4", h)
	}
	if !RefuseNew(12, 16, false) || RefuseNew(11, 16, false) {
		t.Error("a 16-connection table: want refusals from 12 live")
	}
}

func TestNextGC(t *testing.T) {
	normal := 10 * time.Second
	for _, tc := range []struct {
		p    Pressure
		want time.Duration
	}{
		{Pressure{Capacity: 100, Entries: 20, Live: 10}, normal},
		{Pressure{Capacity: 100, Entries: 99, Live: 10}, normal},
		{Pressure{Capacity: 100, Entries: 100, Live: 10}, PressureGC}, // half the entries
		{Pressure{Capacity: 100, Entries: 10, Live: 5, Refusing: true}, PressureGC},
	} {
		if got := NextGC(tc.p, normal); got != tc.want {
			t.Errorf("NextGC(%+v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := NextGC(Pressure{Refusing: true}, 500*time.Millisecond); got != 500*time.Millisecond {
		t.Errorf("NextGC never lengthens the configured interval: %v", got)
	}
}

// TestBalancerGCUnderPressure: a table of 100 connections. Ended
// connections (closed, reset, closing and idle) crowd it: the GC removes
// them before their timeout, never an established one. Live connections
// reaching capacity less the headroom make the data path refuse new ones;
// falling below capacity less twice the headroom accepts them again.
func TestBalancerGCUnderPressure(t *testing.T) {
	dp := balancertest.New()
	dp.SetCapacity(bpf.TableEstablished, 200)
	now := uint64(1000e9)
	b := newTestBalancer(t, dp, &now, &recordNudger{})
	st, _ := b.Lookup(s1)
	port := uint16(20000)
	add := func(n int, client string, state bpf.FlowState, idle time.Duration) []bpf.FlowKey {
		var keys []bpf.FlowKey
		for range n {
			port++
			c := netip.AddrPortFrom(netip.MustParseAddr(client), port)
			keys = append(keys, dp.AddConn(c, s1, st.ID, port, now-uint64(idle), state))
		}
		return keys
	}
	live := add(60, "10.10.10.101", bpf.FlowEstablished, time.Minute)
	add(5, "10.10.10.102", bpf.FlowClosed, 0)
	add(5, "10.10.10.102", bpf.FlowReset, 0)
	add(5, "10.10.10.102", bpf.FlowClosing, 5*time.Second)               // idle: ended
	busy := add(5, "10.10.10.102", bpf.FlowClosing, 10*time.Millisecond) // still sending

	// 80 connections, 160 of 200 entries: crowded.
	res, err := b.GC()
	if err != nil {
		t.Fatal(err)
	}
	if res.Pressure.Reclaimed != 15 || res.Pressure.Live != 60 || res.Pressure.Entries != 160 || res.Pressure.Capacity != 100 || res.Pressure.Refusing {
		t.Fatalf("crowded table: %+v; want 15 ended connections reclaimed, 60 live, not refusing", res.Pressure)
	}
	flows := dp.Flows(bpf.TableEstablished)
	if len(flows) != 2*65 {
		t.Fatalf("%d entries left, want the 60 live and 5 busy closing connections' 130", len(flows))
	}
	for _, k := range append(live, busy...) {
		if _, ok := flows[k]; !ok {
			t.Fatal("the GC removed a live connection to make room")
		}
	}
	if dp.RefuseNew() {
		t.Fatal("refusing with 60 of 100 live")
	}

	// 96 live: refuse.
	add(36, "10.10.10.103", bpf.FlowEstablished, 0)
	if res, _ = b.GC(); !res.Pressure.Refusing || !dp.RefuseNew() || res.Pressure.Live != 96 {
		t.Fatalf("96 live of 100: %+v, refuse_new=%v; want refusing", res.Pressure, dp.RefuseNew())
	}
	if d := NextGC(res.Pressure, 10*time.Second); d != PressureGC {
		t.Errorf("next GC in %v under pressure", d)
	}
	// Down to 93 live: above capacity less twice the headroom, still refusing.
	for _, k := range live[:3] {
		dp.DeleteFlows(bpf.TableEstablished, []bpf.FlowKey{k, flows[k].Twin()})
	}
	if res, _ = b.GC(); !res.Pressure.Refusing {
		t.Fatalf("93 live: %+v; want still refusing (hysteresis)", res.Pressure)
	}
	for _, k := range live[3:5] {
		dp.DeleteFlows(bpf.TableEstablished, []bpf.FlowKey{k, flows[k].Twin()})
	}
	if res, _ = b.GC(); res.Pressure.Refusing || dp.RefuseNew() || res.Pressure.Live != 91 {
		t.Fatalf("91 live: %+v refuse_new=%v; want accepting again", res.Pressure, dp.RefuseNew())
	}
}

// TestBalancerGCRewritesClientCounts: with a per-client limit, each GC
// writes the exact established count of every client and drops the others
// (the data path counts opens, but not the closes it leaves to timeouts).
func TestBalancerGCRewritesClientCounts(t *testing.T) {
	dp := balancertest.New()
	now := uint64(1000e9)
	b := newTestBalancer(t, dp, &now, &recordNudger{})
	b.timeouts.MaxConnsPerClient = 10
	st, _ := b.Lookup(s2)
	a, c, gone := netip.MustParseAddr("10.10.10.101"), netip.MustParseAddr("10.10.10.102"), netip.MustParseAddr("10.10.10.103")
	for i := range 3 {
		dp.AddConn(netip.AddrPortFrom(a, uint16(40000+i)), s2, st.ID, uint16(30000+i), now, bpf.FlowEstablished)
	}
	dp.AddConn(netip.AddrPortFrom(c, 40000), s2, st.ID, 31000, now, bpf.FlowEstablished)
	dp.AddConn(netip.AddrPortFrom(c, 40001), s2, st.ID, 31001, now, bpf.FlowClosing)
	dp.SetClientCount(a, 7)    // drifted up: closes the data path did not see
	dp.SetClientCount(gone, 2) // all its connections ended
	if _, err := b.GC(); err != nil {
		t.Fatal(err)
	}
	got := dp.ClientConns()
	if len(got) != 2 || got[a] != 3 || got[c] != 1 {
		t.Fatalf("client counts %v; want %s: 3, %s: 1 (its closing connection not counted), %s gone", got, a, c, gone)
	}
}

func TestGCDue(t *testing.T) {
	last := Pressure{Capacity: 100, Entries: 40, Live: 20}
	for _, tc := range []struct {
		newFlows, refused uint64
		want              bool
	}{
		{0, 0, false},
		{29, 0, false},
		{30, 0, true}, // 40 + 60 entries: half the table's 200
		{0, 1, true},
	} {
		if got := GCDue(last, tc.newFlows, tc.refused); got != tc.want {
			t.Errorf("GCDue(%+v, %d new, %d refused) = %v, want %v", last, tc.newFlows, tc.refused, got, tc.want)
		}
	}
}
