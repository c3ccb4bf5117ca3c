package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/perf"

	"github.com/xdplb/xdplb/bpf/packet"
)

// syncEvents reads the data path's sync events.
type syncEvents struct {
	t *testing.T
	r *perf.Reader
}

func newSyncEvents(t *testing.T, h *harness) *syncEvents {
	t.Helper()
	r, err := perf.NewReader(h.maps.XdplbSyncEv, os.Getpagesize())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &syncEvents{t: t, r: r}
}

// next returns the next event, or ok false when none comes within 100 ms.
func (s *syncEvents) next() (SyncEvent, bool) {
	s.t.Helper()
	s.r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	rec, err := s.r.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return SyncEvent{}, false
	}
	if err != nil {
		s.t.Fatal(err)
	}
	if rec.LostSamples > 0 {
		s.t.Fatalf("%d events lost", rec.LostSamples)
	}
	var ev SyncEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
		s.t.Fatal(err)
	}
	return ev, true
}

func (s *syncEvents) want(what string, kind SyncEventKind, state FlowState) SyncEvent {
	s.t.Helper()
	ev, ok := s.next()
	if !ok {
		s.t.Fatalf("%s: no sync event", what)
	}
	if SyncEventKind(ev.Kind) != kind || FlowState(ev.State) != state {
		s.t.Fatalf("%s: event kind %d state %v, want %d %v", what, ev.Kind, FlowState(ev.State), kind, state)
	}
	return ev
}

func (s *syncEvents) none(what string) {
	s.t.Helper()
	if ev, ok := s.next(); ok {
		s.t.Fatalf("%s: unexpected sync event %+v", what, ev)
	}
}

// TestSyncEvents: the data path reports a connection once established,
// at each change of state, again when due while packets flow, and when it
// forgets it; nothing for half-open connections, nothing at all when sync
// is off.
func TestSyncEvents(t *testing.T) {
	for _, hk := range hooks {
		t.Run(hk.name, func(t *testing.T) {
			h := newHarness(t, Config{Sync: true, SyncRefresh: time.Nanosecond}, threeServers)
			evs := newSyncEvents(t, h)
			c := &conn{t: t, h: h, hk: hk, client: agent1, cseq: clientISN}
			c.fromClient(packet.SYN, nil)
			evs.none("half-open")
			f, _ := h.flow(TableHalfOpen, Key(agent1, frontend))
			c.be, c.snat, c.bseq = backendByAddr(f.Dst()), f.Src(), backendISN
			c.fromBackend(packet.SYN|packet.ACK, nil)
			evs.none("syn-ack")
			c.fromClient(packet.ACK, nil)
			ev := evs.want("established", SyncUpsert, FlowEstablished)
			if ev.Key != Key(agent1, frontend) || ev.Backend != c.be.id || Port(ev.SnatPort) != c.snat.Port() ||
				ev.ClientMac != agentMAC || ev.ClientSeq != clientISN+1 || ev.BackendSeq != backendISN+1 || ev.CreatedNs == 0 {
				t.Fatalf("established event %+v", ev)
			}
			// Refresh: last_seen moves at most once a second, and the
			// report follows it. Both go back 2 s (the coarse clock may
			// not have ticked since the ACK).
			lastSeen := func() {
				for _, k := range []FlowKey{Key(agent1, frontend), Key(c.be.addr, c.snat)} {
					f, _ := h.flow(TableEstablished, k)
					f.LastSeenNs -= 2e9
					f.SyncedNs -= 2e9
					h.maps.XdplbFlows.Put(k, f)
				}
			}
			lastSeen()
			c.fromClient(packet.ACK, []byte("x"))
			evs.want("refresh", SyncUpsert, FlowEstablished)
			c.fromBackend(packet.ACK, []byte("y"))
			evs.none("a backend packet") // refreshes ride on the client's
			c.fromClient(packet.FIN|packet.ACK, nil)
			evs.want("client FIN", SyncUpsert, FlowClosing)
			c.fromBackend(packet.FIN|packet.ACK, nil)
			evs.want("backend FIN", SyncUpsert, FlowClosed)
			c.fromClient(packet.ACK, nil)
			c.cseq = clientISN + 100000
			c.fromClient(packet.SYN, nil) // reopens: the old one is forgotten
			evs.want("reopened", SyncDelete, FlowClosed)
		})
	}
	h := newHarness(t, Config{}, threeServers)
	evs := newSyncEvents(t, h)
	openConn(t, h, hooks[0], agent1)
	evs.none("sync off")
}
