package daemon

import (
	"context"
	"time"

	"github.com/xdplb/xdplb/bpf"
	flowsync "github.com/xdplb/xdplb/control/sync"
)

// watchVIP follows whether the VIP is on this node's interface: address
// notifications where the node gives them, and a look every second. The
// VIP arriving is a takeover: it logs how many connections were ready.
func (s *syncer) watchVIP(ctx context.Context) {
	if s.p.holdsVIP == nil {
		return
	}
	changed := make(chan struct{}, 1)
	if s.p.vipNotify != nil {
		go func() {
			err := s.p.vipNotify(ctx, func() {
				select {
				case changed <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				s.log.Warn("address notifications; looking every second", "err", err)
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
		}
		holds, err := s.p.holdsVIP()
		if err != nil {
			continue
		}
		if s.holds.Swap(holds) == holds {
			continue
		}
		if holds {
			s.onTakeover()
		} else {
			s.log.Info("the VIP left this node", "vip", s.d.cfg.VIP.String(), "sync", s.syncState())
		}
		s.sendState()
	}
}

// onTakeover logs the connections that were ready when the VIP arrived.
func (s *syncer) onTakeover() {
	ready := 0
	s.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if t == bpf.TableEstablished && f.Dir == uint8(bpf.FlowToBackend) && f.State == uint8(bpf.FlowEstablished) {
			ready++
		}
	})
	state := s.syncState()
	s.mu.Lock()
	s.takeovers++
	s.lastTakeov = takeoverInfo{At: time.Now(), FlowsReady: ready, SyncState: state}
	resync := s.lastResync
	s.mu.Unlock()
	s.log.Info("takeover: the VIP arrived on this node; its connections were ready here", "vip", s.d.cfg.VIP.String(),
		"connections_ready", ready, "sync", state, "last_resync_connections", resync.Records, "lag", s.out.Lag(time.Now()).String())
}

// sendState tells the peer this node's state (it holds the VIP or not,
// it is stopping), when a session is open.
func (s *syncer) sendState() {
	se := s.current()
	if se == nil {
		return
	}
	if err := s.sendFrame(se, flowsync.MsgState, flowsync.EncodeState(s.nodeState())); err != nil {
		se.close()
	}
}

// handoff is a planned stop (SIGTERM) with flow sync: `xdplb check` fails
// at once, so keepalived moves the VIP to the peer, which has every
// connection; the daemon keeps syncing until the VIP has left this node
// (at most handoffMax) and a little longer (clients whose ARP caches still
// point here), then returns. A node without the VIP stops at once.
func (s *syncer) handoff(ctx context.Context) {
	s.stopping.Store(true)
	s.gate.Stopping()
	s.sendState()
	start := time.Now()
	if s.holds.Load() {
		s.log.Info("stopping: handing the VIP over to the peer; `xdplb check` fails from now", "wait_at_most", handoffMax.String())
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for s.holds.Load() && time.Since(start) < handoffMax {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if h, err := s.p.holdsVIP(); err == nil {
				s.holds.Store(h)
			}
		}
		if s.holds.Load() {
			s.log.Warn("stopping: the VIP did not leave this node (is keepalived running with the xdplb check?); stopping anyway",
				"waited", time.Since(start).Round(time.Millisecond).String())
		} else {
			s.log.Info("stopping: the VIP left this node; syncing a little longer", "after", time.Since(start).Round(time.Millisecond).String())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(handoffGrace):
		}
	}
	// What is queued goes out (bounded).
	for deadline := time.Now().Add(time.Second); s.out.Len() > 0 && s.current() != nil && time.Now().Before(deadline); {
		s.kick()
		time.Sleep(20 * time.Millisecond)
	}
	s.log.Info("stopping: handed over", "took", time.Since(start).Round(time.Millisecond).String(), "unsent", s.out.Len())
}
