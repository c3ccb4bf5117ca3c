package bpf

import (
	"testing"

	"github.com/xdplb/xdplb/bpf/packet"
)

// withoutTimes clears what FlowPair takes from the caller's clock.
func withoutTimes(f Flow) Flow {
	f.CreatedNs, f.LastSeenNs, f.SyncedNs = 0, 0, 0
	return f
}

// TestFlowPairLikeTheDataPath: the two entries FlowPair builds for a
// connection are the ones the data path built for it (but for times),
// and a second data path (the peer LB) given them forwards the
// connection's packets, both ways, to the same bytes as the first, and
// tracks its close.
func TestFlowPairLikeTheDataPath(t *testing.T) {
	for _, hk := range hooks {
		t.Run(hk.name, func(t *testing.T) {
			h := newHarness(t, Config{}, threeServers)
			peer := newHarness(t, Config{}, threeServers)
			c := openConn(t, h, hk, agent1)
			c.fromClient(packet.ACK|packet.PSH, []byte("GET /watch"))
			c.fromBackend(packet.ACK|packet.PSH, []byte("HTTP/1.1 200 OK"))
			ck, rk := Key(agent1, frontend), Key(c.be.addr, c.snat)
			cf, ok1 := h.flow(TableEstablished, ck)
			rf, ok2 := h.flow(TableEstablished, rk)
			if !ok1 || !ok2 {
				t.Fatal("no established entries")
			}
			gck, gcf, grk, grf := FlowPair(Connection{
				Client: agent1, Frontend: frontend, Backend: c.be.addr, SNATPort: c.snat.Port(),
				BackendIndex: c.be.id, State: FlowState(cf.State),
				ClientFlags: cf.Flags, BackendFlags: rf.Flags, ClientSeq: cf.SeqNext, BackendSeq: rf.SeqNext,
				ClientMAC: agentMAC, LocalMAC: lbMAC, BackendMAC: cf.Dmac, BackendIfindex: cf.Ifindex,
				CreatedNs: 1, LastSeenNs: 2, SyncedNs: 3,
			})
			if gck != ck || grk != rk {
				t.Fatalf("keys: go %+v %+v, data path %+v %+v", gck, grk, ck, rk)
			}
			if withoutTimes(gcf) != withoutTimes(cf) {
				t.Fatalf("client entry:\n go  %+v\n C   %+v", gcf, cf)
			}
			if withoutTimes(grf) != withoutTimes(rf) {
				t.Fatalf("reply entry:\n go  %+v\n C   %+v", grf, rf)
			}
			if gcf.CreatedNs != 1 || gcf.LastSeenNs != 2 || gcf.SyncedNs != 3 || grf.LastSeenNs != 2 {
				t.Fatalf("times not taken: %+v %+v", gcf, grf)
			}

			now := Now()
			gcf.CreatedNs, gcf.LastSeenNs, grf.CreatedNs, grf.LastSeenNs = now, now, now, now
			if err := peer.maps.XdplbFlows.Put(grk, grf); err != nil {
				t.Fatal(err)
			}
			if err := peer.maps.XdplbFlows.Put(gck, gcf); err != nil {
				t.Fatal(err)
			}
			// The same segments through both data paths.
			for _, step := range []struct {
				what      string
				fromPeer  bool
				flags     packet.Flags
				payload   []byte
				wantState FlowState
			}{
				{"client data", false, packet.ACK | packet.PSH, []byte("more"), FlowEstablished},
				{"backend data", true, packet.ACK | packet.PSH, []byte("{\"type\":\"ADDED\"}"), FlowEstablished},
				{"client FIN", false, packet.FIN | packet.ACK, nil, FlowClosing},
				{"backend FIN", true, packet.FIN | packet.ACK, nil, FlowClosed},
			} {
				var p packet.TCP
				if step.fromPeer {
					p = c.backendSegment(step.flags, step.payload)
					advance(&c.bseq, p)
				} else {
					p = c.clientSegment(step.flags, step.payload)
					advance(&c.cseq, p)
				}
				a := h.run(hk.prog(h), p.Frame())
				b := peer.run(hk.prog(peer), p.Frame())
				if a.verdict != hk.tx || b.verdict != a.verdict {
					t.Fatalf("%s: verdicts %d (data path) and %d (peer), want %d; peer %v", step.what, a.verdict, b.verdict, hk.tx, named(b.stats))
				}
				wantBytes(t, step.what, b.out, a.out)
				wantChecksums(t, step.what+" on the peer", b.out)
				for _, hh := range []*harness{h, peer} {
					f1, _ := hh.flow(TableEstablished, ck)
					f2, _ := hh.flow(TableEstablished, rk)
					if FlowState(f1.State) != step.wantState || FlowState(f2.State) != step.wantState {
						t.Fatalf("%s: states %v/%v, want %v", step.what, FlowState(f1.State), FlowState(f2.State), step.wantState)
					}
				}
			}
		})
	}
}
