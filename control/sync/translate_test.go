package sync

import (
	"net/netip"
	"testing"
	"time"

	"github.com/xdplb/xdplb/bpf"
)

var server2 = netip.MustParseAddrPort("10.10.10.51:6443")

func testLocal() *Local {
	return &Local{Frontend: frontend, SNATLo: 6444, SNATHi: 65535,
		Backends: map[netip.AddrPort]LocalBackend{
			server1: {Index: 7, MAC: [6]byte{2, 0x58, 10, 10, 10, 50}},
			server2: {Index: 3},
		},
		LocalMAC: [6]byte{2, 0x58, 10, 10, 10, 99}}
}

// TestConnection: a peer's record becomes this node's connection (its
// backend index, its next hop, its MAC); one that does not belong here is
// refused with the reason.
func TestConnection(t *testing.T) {
	l := testLocal()
	c, err := l.Connection(testRecord(), 42)
	if err != nil {
		t.Fatal(err)
	}
	if c.BackendIndex != 7 || c.BackendMAC != l.Backends[server1].MAC || c.LocalMAC != l.LocalMAC ||
		c.ClientMAC != testRecord().ClientMAC || c.SNATPort != 20001 || c.SyncedNs != 42 || c.State != bpf.FlowEstablished {
		t.Fatalf("%+v", c)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Record)
		reason Reason
	}{
		{"other frontend address", func(r *Record) { r.Frontend = netip.MustParseAddrPort("10.10.10.200:6443") }, ForeignFrontend},
		{"other frontend port", func(r *Record) { r.Frontend = netip.MustParseAddrPort("10.10.10.100:443") }, ForeignFrontend},
		{"unconfigured backend", func(r *Record) { r.Backend = netip.MustParseAddrPort("10.10.10.77:6443") }, UnknownBackend},
		{"backend on another port", func(r *Record) { r.Backend = netip.MustParseAddrPort("10.10.10.50:443") }, UnknownBackend},
		{"snat port outside the range", func(r *Record) { r.SNATPort = 6000 }, ForeignSNAT},
	} {
		r := testRecord()
		tc.mutate(&r)
		if _, err := l.Connection(r, 42); ReasonOf(err) != tc.reason {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.reason)
		}
	}
}

// TestFromEventAndEntries: the data path's event and its map entries give
// the same record, which the peer turns back into the same entries.
func TestFromEventAndEntries(t *testing.T) {
	l := testLocal()
	r := testRecord()
	c, _ := l.Connection(r, 0)
	ck, cf, rk, rf := bpf.FlowPair(c)
	ev := bpf.SyncEvent{Kind: uint8(bpf.SyncUpsert), State: uint8(bpf.FlowEstablished), ClientFlags: cf.Flags, BackendFlags: rf.Flags,
		Backend: 7, Key: ck, SnatPort: bpf.BE16(20001), ClientMac: r.ClientMAC, ClientSeq: r.ClientSeq, BackendSeq: r.BackendSeq,
		CreatedNs: r.CreatedNs, LastSeenNs: r.LastSeenNs}
	got, err := l.FromEvent(ev)
	if err != nil || got != r {
		t.Fatalf("from event: %+v %v\nwant %+v", got, err, r)
	}
	got, ok := FromEntries(ck, cf, &rf)
	if !ok || got != r {
		t.Fatalf("from entries: %+v\nwant %+v", got, r)
	}
	if _, ok := FromEntries(rk, rf, &cf); ok {
		t.Fatal("a reply entry gave a record")
	}
	half := cf
	half.State = uint8(bpf.FlowSynSent)
	if _, ok := FromEntries(ck, half, nil); ok {
		t.Fatal("a half-open connection gave a record")
	}
	ev.Backend = 99
	if _, err := l.FromEvent(ev); err == nil {
		t.Fatal("an event of an unknown backend index gave a record")
	}
	ev.Backend, ev.Kind = 3, uint8(bpf.SyncDelete)
	if got, err := l.FromEvent(ev); err != nil || got.Kind != Delete || got.Backend != server2 {
		t.Fatalf("delete event: %+v %v", got, err)
	}
}

func flowPtr(f bpf.Flow) *bpf.Flow { return &f }

// TestPlan: which version of a connection wins.
func TestPlan(t *testing.T) {
	l := testLocal()
	const sec = uint64(time.Second)
	conn := func(state State, lastSeen uint64, mutate ...func(*Record)) bpf.Connection {
		r := testRecord()
		r.State, r.LastSeenNs = state, lastSeen
		for _, m := range mutate {
			m(&r)
		}
		c, err := l.Connection(r, 0)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	entries := func(c bpf.Connection) (bpf.Flow, bpf.Flow) {
		_, cf, _, rf := bpf.FlowPair(c)
		return cf, rf
	}
	otherSNAT := func(r *Record) { r.SNATPort = 30000 }
	otherClient := func(r *Record) { r.Client = netip.MustParseAddrPort("10.10.10.103:50000") }

	mine := conn(StateEstablished, 100*sec)
	myClient, myReply := entries(mine)
	ck, rk := Keys(mine)
	other := conn(StateEstablished, 100*sec, otherSNAT)
	stranger := conn(StateEstablished, 100*sec, otherClient)
	_, strangerReply := entries(stranger)

	cases := []struct {
		name string
		plan Plan
		want Plan
	}{
		{"nothing here", PlanUpsert(conn(StateEstablished, 50*sec), Existing{}), Plan{Install: true}},
		{"a refresh", PlanUpsert(conn(StateEstablished, 110*sec), Existing{&myClient, &myReply}), Plan{Install: true}},
		{"a little older, same state", PlanUpsert(conn(StateEstablished, 99*sec), Existing{&myClient, &myReply}), Plan{Install: true}},
		{"much older, same state", PlanUpsert(conn(StateEstablished, 90*sec), Existing{&myClient, &myReply}), Plan{Drop: Stale}},
		{"a later state, even older", PlanUpsert(conn(StateClosing, 90*sec), Existing{&myClient, &myReply}), Plan{Install: true}},
		{"back to an earlier state", PlanUpsert(conn(StateEstablished, 120*sec), Existing{flowPtr(entries2(conn(StateClosing, 100*sec))), nil}), Plan{Drop: Stale}},
		{"the client reused its port: newer wins", PlanUpsert(conn(StateEstablished, 120*sec, otherSNAT), Existing{&myClient, nil}),
			Plan{Install: true, Remove: []bpf.FlowKey{myClient.Twin()}}},
		{"the client reused its port: older loses", PlanUpsert(conn(StateEstablished, 90*sec, otherSNAT), Existing{&myClient, nil}), Plan{Drop: Stale}},
		{"another client holds the backend and port: newer wins", PlanUpsert(conn(StateEstablished, 120*sec), Existing{nil, &strangerReply}),
			Plan{Install: true, Remove: []bpf.FlowKey{strangerReply.Twin()}}},
		{"another client holds the backend and port: older loses", PlanUpsert(conn(StateEstablished, 90*sec), Existing{nil, &strangerReply}), Plan{Drop: Stale}},
		{"delete of this version", PlanDelete(conn(StateEstablished, 100*sec), Existing{&myClient, &myReply}), Plan{Remove: []bpf.FlowKey{ck, rk}}},
		{"delete of an older version", PlanDelete(conn(StateEstablished, 50*sec), Existing{&myClient, &myReply}), Plan{Drop: Stale}},
		{"delete of another connection", PlanDelete(other, Existing{&myClient, &myReply}), Plan{}},
		{"delete of nothing", PlanDelete(mine, Existing{}), Plan{}},
		{"delete when the reply entry is another's", PlanDelete(mine, Existing{&myClient, &strangerReply}), Plan{Remove: []bpf.FlowKey{ck}}},
	}
	for _, tc := range cases {
		if !samePlan(tc.plan, tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, tc.plan, tc.want)
		}
	}
}

func entries2(c bpf.Connection) bpf.Flow {
	_, cf, _, _ := bpf.FlowPair(c)
	return cf
}

func samePlan(a, b Plan) bool {
	if a.Install != b.Install || a.Drop != b.Drop || len(a.Remove) != len(b.Remove) {
		return false
	}
	for i := range a.Remove {
		if a.Remove[i] != b.Remove[i] {
			return false
		}
	}
	return true
}
