package sync

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

func recordOf(i int) Record {
	r := testRecord()
	r.Client = netip.AddrPortFrom(r.Client.Addr(), uint16(30000+i))
	return r
}

// TestOutbox: one record per connection, the latest; sent in the order
// they first became due; the lag is the age of the oldest unsent change;
// past its limit it empties and says so.
func TestOutbox(t *testing.T) {
	t0 := time.Unix(1000, 0)
	o := &Outbox{Limit: 3}
	o.Put(recordOf(1), t0)
	o.Put(recordOf(2), t0.Add(time.Second))
	later := recordOf(1)
	later.State = StateClosing
	o.Put(later, t0.Add(2*time.Second)) // replaces, keeps its place
	if o.Len() != 2 || o.Lag(t0.Add(5*time.Second)) != 5*time.Second {
		t.Fatalf("len %d lag %v", o.Len(), o.Lag(t0.Add(5*time.Second)))
	}
	rs, since := o.Take(1)
	if len(rs) != 1 || rs[0].State != StateClosing || !since[0].Equal(t0) {
		t.Fatalf("first taken: %+v %v", rs, since)
	}
	if o.Lag(t0.Add(5*time.Second)) != 4*time.Second {
		t.Fatalf("lag after one sent: %v", o.Lag(t0.Add(5*time.Second)))
	}
	o.Put(recordOf(1), t0.Add(6*time.Second)) // due again: at the back
	rs, _ = o.Take(10)
	if len(rs) != 2 || rs[0].Client != recordOf(2).Client || rs[1].Client != recordOf(1).Client {
		t.Fatalf("order: %+v", rs)
	}
	if o.Len() != 0 || o.Lag(t0) != 0 || o.Overflowed() {
		t.Fatal("not empty")
	}
	for i := range 4 {
		o.Put(recordOf(i), t0)
	}
	if !o.Overflowed() || o.Overflowed() || o.Len() != 0 {
		t.Fatalf("overflow: len %d", o.Len())
	}
	// Many rounds: the queue does not grow without bound.
	big := &Outbox{}
	for i := range 100000 {
		big.Put(recordOf(i%50), t0)
		if i%7 == 0 {
			big.Take(5)
		}
	}
	if len(big.queue)-big.head > 50 || len(big.queue) > 5000 {
		t.Fatalf("queue of %d (head %d) for 50 connections", len(big.queue), big.head)
	}
}

func TestLags(t *testing.T) {
	var l Lags
	if q, n := l.Quantiles(0.5); n != 0 || q[0] != 0 {
		t.Fatal("empty")
	}
	for i := 1; i <= 100; i++ {
		l.Add(time.Duration(i) * time.Millisecond)
	}
	q, n := l.Quantiles(0.5, 0.99, 1)
	if n != 100 || q[0] != 50*time.Millisecond || q[1] != 99*time.Millisecond || q[2] != 100*time.Millisecond {
		t.Fatalf("%v %d", q, n)
	}
	for range 5000 {
		l.Add(time.Millisecond)
	}
	if q, n := l.Quantiles(1); n != 4096 || q[0] != time.Millisecond {
		t.Fatalf("ring: %v %d", q, n)
	}
}

// TestGate walks the situations of issue 11 §1-2.
func TestGate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		at       time.Duration
		do       func(g *Gate)
		holdsVIP bool
		ok       bool
	}
	run := func(name string, steps []step) {
		g := NewGate(t0, 3*time.Second, 30*time.Second)
		for i, s := range steps {
			if s.do != nil {
				s.do(g)
			}
			ok, why, _ := g.Check(at(s.at), s.holdsVIP)
			if ok != s.ok {
				t.Errorf("%s: step %d at %v: ok %v (%s), want %v", name, i, s.at, ok, why, s.ok)
			}
		}
	}
	sessionUp := func(g *Gate) { g.SessionUp() }
	run("a lone node", []step{
		{at: 0, ok: false},
		{at: 2 * time.Second, ok: false},
		{at: 3 * time.Second, ok: true},
		{at: time.Hour, ok: true},
	})
	run("a restarted node resyncs first", []step{
		{at: 0, ok: false},
		{at: 100 * time.Millisecond, do: sessionUp, ok: false},
		{at: 10 * time.Second, ok: false}, // a long bulk: still waiting
		{at: 11 * time.Second, do: func(g *Gate) { g.Resynced(at(11 * time.Second)) }, ok: true},
		// The peer then dies: this node must be able to take over.
		{at: 12 * time.Second, do: func(g *Gate) { g.SessionDown(at(12 * time.Second)) }, ok: true},
	})
	run("a resync that never ends is bounded", []step{
		{at: 0, do: sessionUp, ok: false},
		{at: 29 * time.Second, ok: false},
		{at: 30 * time.Second, ok: true},
	})
	run("the session drops during the resync: wait for the peer again", []step{
		{at: 0, do: sessionUp, ok: false},
		{at: 5 * time.Second, do: func(g *Gate) { g.SessionDown(at(5 * time.Second)) }, ok: false},
		{at: 7 * time.Second, ok: false},
		{at: 8 * time.Second, ok: true},
	})
	run("the node's own link goes down and comes back", []step{
		{at: 0, do: func(g *Gate) { g.Resynced(t0) }, ok: true},
		{at: time.Second, do: func(g *Gate) { g.LinkDown(); g.SessionDown(at(time.Second)) }, ok: false},
		{at: 20 * time.Second, ok: false},
		{at: 21 * time.Second, do: func(g *Gate) { g.LinkUp(at(21 * time.Second)) }, ok: false},
		{at: 21*time.Second + 300*time.Millisecond, do: sessionUp, ok: false},
		{at: 22 * time.Second, do: func(g *Gate) { g.Resynced(at(22 * time.Second)) }, ok: true},
	})
	run("a node that holds the VIP never fails for sync", []step{
		{at: 0, holdsVIP: true, ok: true},
		{at: time.Second, do: sessionUp, holdsVIP: true, ok: true},
		{at: 2 * time.Second, holdsVIP: false, ok: false},
	})
	run("stopping closes it", []step{
		{at: 0, do: func(g *Gate) { g.Resynced(t0) }, ok: true},
		{at: time.Second, do: func(g *Gate) { g.Stopping() }, holdsVIP: true, ok: false},
	})
	g := NewGate(t0, 3*time.Second, 30*time.Second)
	if _, _, opened := g.Check(at(4*time.Second), false); opened == "" {
		t.Fatal("opening not reported")
	}
	if _, _, opened := g.Check(at(5*time.Second), false); opened != "" {
		t.Fatal("opening reported twice")
	}
	if when, why := g.Opened(); !when.Equal(at(4*time.Second)) || why == "" {
		t.Fatal(fmt.Sprint(when, why))
	}
}
