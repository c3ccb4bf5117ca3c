package balancer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer/balancertest"
	"github.com/xdplb/xdplb/control/config"
)

// TestPlanReconcile: what a reload does with each backend, decided from the
// current backends and the configured ones.
func TestPlanReconcile(t *testing.T) {
	s4 := netip.MustParseAddrPort("10.10.10.53:6443")
	current := []Backend{
		{ID: 0, Addr: s1, Name: "server-1", Weight: 1, Up: true},
		{ID: 1, Addr: s2, Weight: 1, Up: true},
		{ID: 2, Addr: s3, Name: "server-3", Weight: 1, Up: true, Retired: true},
	}
	specs := []config.BackendSpec{
		{Addr: s1, Name: "server-1", Weight: 1}, // unchanged
		{Addr: s3, Name: "server-3", Weight: 2}, // listed again, new weight
		{Addr: s4, Name: "server-4", Weight: 1}, // new
	} // s2 gone
	var got []string
	for _, c := range PlanReconcile(current, specs).Changes {
		got = append(got, c.String())
	}
	want := []string{
		"backend server-3 (10.10.10.52:6443) listed again: takes new connections again",
		"backend server-3 (10.10.10.52:6443) weight 1 -> 2",
		"backend server-4 (10.10.10.53:6443) added (weight 1; takes connections once its checks pass)",
		"backend 10.10.10.51:6443 removed: no new connections; its established ones stay until they end",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p := PlanReconcile(current[:2], []config.BackendSpec{{Addr: s1, Name: "server-1", Weight: 1}, {Addr: s2, Weight: 1}}); len(p.Changes) != 0 {
		t.Errorf("same backends: %v", p.Changes)
	}
	renamed := PlanReconcile(current[:1], []config.BackendSpec{{Addr: s1, Name: "api-1", Weight: 1}})
	if len(renamed.Changes) != 1 || renamed.Changes[0].String() != "backend server-1 (10.10.10.50:6443) name server-1 -> api-1" {
		t.Errorf("rename: %v", renamed.Changes)
	}
}

// TestReconcileTouchesNoFlow: a reload adds, retires, reweighs and renames
// backends; no connection is removed, a retired backend takes no new
// connection and its slot is freed once its last one has ended, an added
// one starts down with a free slot, a drain stays.
func TestReconcileTouchesNoFlow(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	nudges := &recordNudger{}
	b := newTestBalancer(t, dp, &now, nudges)
	st1, _ := b.Lookup(s1)
	st2, _ := b.Lookup(s2)
	st3, _ := b.Lookup(s3)
	c1 := dp.AddConn(netip.MustParseAddrPort("10.10.10.101:1"), s1, st1.ID, 30000, now, bpf.FlowEstablished)
	c2 := dp.AddConn(netip.MustParseAddrPort("10.10.10.101:2"), s2, st2.ID, 30001, now, bpf.FlowEstablished)
	if err := b.SetDrained(s3, true); err != nil {
		t.Fatal(err)
	}
	before := len(dp.Flows(bpf.TableEstablished))
	s4 := netip.MustParseAddrPort("10.10.10.53:6443")
	changes, err := b.Reconcile([]config.BackendSpec{
		{Addr: s1, Name: "server-1", Weight: 3},
		{Addr: s3, Weight: 1},
		{Addr: s4, Name: "server-4", Weight: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 4 { // s1 weight, s1 name, s4 added, s2 retired
		t.Fatalf("changes: %v", changes)
	}
	if n := len(dp.Flows(bpf.TableEstablished)); n != before || len(nudges.got) != 0 {
		t.Fatalf("reconcile touched flows: %d entries (was %d), nudged %v", n, before, nudges.got)
	}
	sh := share(dp.Live())
	if sh[st2.ID] != 0 {
		t.Error("the retired backend still owns slots of the table")
	}
	if sh[st3.ID] != 0 {
		t.Error("a drain did not survive the reload")
	}
	st4, ok := b.Lookup(s4)
	if !ok || st4.Up || sh[st4.ID] != 0 || st4.ID == st1.ID || st4.ID == st2.ID || st4.ID == st3.ID {
		t.Fatalf("added backend %+v: want a free slot, down, out of the table until its checks pass", st4)
	}
	if b1, _ := b.Lookup(s1); b1.Weight != 3 || b1.Name != "server-1" {
		t.Errorf("s1 after reload: %+v", b1)
	}
	// The retired backend's connection goes on; the GC keeps its slot.
	res, err := b.GC()
	if err != nil || len(res.Freed) != 0 || res.Connections[st2.ID] != 1 {
		t.Fatalf("GC with the retired backend's connection alive: %+v, %v", res, err)
	}
	if _, ok := dp.Flows(bpf.TableEstablished)[c2]; !ok {
		t.Fatal("the retired backend's connection was removed")
	}
	// Its connection ends: the slot is freed, the backend gone.
	dp.DeleteFlows(bpf.TableEstablished, connKeys(dp, st2.ID))
	res, _ = b.GC()
	if len(res.Freed) != 1 || res.Freed[0].Addr != s2 || dp.Backend(st2.ID) != (bpf.Backend{}) {
		t.Fatalf("GC after the last connection: freed %v, slot %+v", res.Freed, dp.Backend(st2.ID))
	}
	if _, ok := b.Lookup(s2); ok {
		t.Fatal("a freed backend is still listed")
	}
	if _, ok := dp.Flows(bpf.TableEstablished)[c1]; !ok {
		t.Fatal("another backend's connection was removed")
	}
	// Its slot is free for the next backend.
	s5 := netip.MustParseAddrPort("10.10.10.54:6443")
	if _, err := b.Reconcile([]config.BackendSpec{{Addr: s1, Name: "server-1", Weight: 3}, {Addr: s3, Weight: 1}, {Addr: s4, Name: "server-4", Weight: 1}, {Addr: s5, Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	if st5, _ := b.Lookup(s5); st5.ID != st2.ID {
		t.Errorf("new backend got slot %d, want the freed %d", st5.ID, st2.ID)
	}
}

// TestReconcileRetiredComesBack: a retired backend listed again before its
// last connection ended keeps its slot and state.
func TestReconcileRetiredComesBack(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	b := newTestBalancer(t, dp, &now, nil)
	st2, _ := b.Lookup(s2)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:2"), s2, st2.ID, 30001, now, bpf.FlowEstablished)
	all := []config.BackendSpec{{Addr: s1, Weight: 1}, {Addr: s2, Weight: 1}, {Addr: s3, Weight: 1}}
	if _, err := b.Reconcile([]config.BackendSpec{all[0], all[2]}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reconcile(all); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.Lookup(s2); st.ID != st2.ID || st.Retired || !st.Up || share(dp.Live())[st.ID] == 0 {
		t.Fatalf("s2 back: %+v", st)
	}
}

// TestRetiredAtRestart: a restart whose configuration no longer lists a
// backend retires it as a reload does.
func TestRetiredAtRestart(t *testing.T) {
	dp := balancertest.New()
	now := uint64(100e9)
	b := newTestBalancer(t, dp, &now, nil)
	st2, _ := b.Lookup(s2)
	dp.AddConn(netip.MustParseAddrPort("10.10.10.101:2"), s2, st2.ID, 30001, now, bpf.FlowEstablished)
	b2, err := New(dp, Options{Frontend: balancertest.Frontend, Backends: []config.BackendSpec{{Addr: s1, Weight: 1}},
		Now: func() uint64 { return now }, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Sync(); err != nil {
		t.Fatal(err)
	}
	st, ok := b2.Lookup(s2)
	if !ok || !st.Retired || st.ID != st2.ID || share(dp.Live())[st.ID] != 0 {
		t.Fatalf("s2 after a restart without it: %+v", st)
	}
	res, _ := b2.GC()
	if len(dp.Flows(bpf.TableEstablished)) != 2 || len(res.Freed) != 1 || res.Freed[0].Addr != s3 {
		t.Fatalf("GC: %d entries, freed %v: want s2's connection kept and s3 (no connection) freed", len(dp.Flows(bpf.TableEstablished)), res.Freed)
	}
}

func connKeys(dp *balancertest.Datapath, id uint32) []bpf.FlowKey {
	var keys []bpf.FlowKey
	for k, f := range dp.Flows(bpf.TableEstablished) {
		if f.Backend == id {
			keys = append(keys, k)
		}
	}
	return keys
}
