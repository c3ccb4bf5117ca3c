package daemon

import (
	"strings"
	"time"
)

// SyncStatus is flow sync in `xdplb status --json`.
type SyncStatus struct {
	Peer string `json:"peer"`
	// State of the session: "disconnected", "resyncing" (open, the
	// peer's bulk not yet received) or "in sync".
	State      string    `json:"state"`
	StateSince time.Time `json:"state_since"`
	// Gate: whether `xdplb check` may pass as far as sync goes, and why
	// not.
	GateOpen bool   `json:"gate_open"`
	GateWhy  string `json:"gate_why,omitempty"`
	HoldsVIP bool   `json:"holds_vip"`
	Stopping bool   `json:"stopping"`
	// PeerHoldsVIP is what the peer last said.
	PeerHoldsVIP bool   `json:"peer_holds_vip"`
	Sessions     uint64 `json:"sessions"`
	LastError    string `json:"last_error,omitempty"`
	// LagMS is the age of the oldest change not yet sent; Pending the
	// connections waiting. LagP50MS and LagP99MS are over the last
	// LagSamples changes sent.
	LagMS      float64 `json:"lag_ms"`
	Pending    int     `json:"pending"`
	LagP50MS   float64 `json:"lag_p50_ms"`
	LagP99MS   float64 `json:"lag_p99_ms"`
	LagSamples int     `json:"lag_samples"`
	// Counters: messages, flows and bytes sent and received, flows
	// installed, removed and refreshed, data path events read and lost,
	// bulks sent and received.
	Counters map[string]uint64 `json:"counters"`
	// Dropped are the peer's frames and connections refused, by reason.
	Dropped    map[string]uint64 `json:"dropped"`
	LastResync *SyncResync       `json:"last_resync,omitempty"`
	Takeovers  uint64            `json:"takeovers"`
	// LastTakeover is the last time the VIP arrived on this node.
	LastTakeover *SyncTakeover `json:"last_takeover,omitempty"`
}

// SyncResync is the last bulk resync received from the peer.
type SyncResync struct {
	At           time.Time `json:"at"`
	DurationMS   float64   `json:"duration_ms"`
	Connections  uint64    `json:"connections"`
	FullTable    bool      `json:"full_table"`
	StaleRemoved int       `json:"stale_removed"`
}

// SyncTakeover is the VIP arriving on this node.
type SyncTakeover struct {
	At               time.Time `json:"at"`
	ConnectionsReady int       `json:"connections_ready"`
	SyncState        string    `json:"sync_state"`
}

func (s *syncer) status() SyncStatus {
	ok, why := s.checkGate()
	now := time.Now()
	q, n := s.lags.Quantiles(0.5, 0.99)
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SyncStatus{
		Peer: s.p.peer.String(), State: s.state, StateSince: s.stateSince,
		GateOpen: ok, GateWhy: why, HoldsVIP: s.holds.Load(), Stopping: s.stopping.Load(),
		PeerHoldsVIP: s.sess != nil && s.peerState.HoldsVIP, Sessions: s.sessions, LastError: s.lastErr,
		LagMS: ms(s.out.Lag(now)), Pending: s.out.Len(), LagP50MS: ms(q[0]), LagP99MS: ms(q[1]), LagSamples: n,
		Counters: map[string]uint64{}, Dropped: map[string]uint64{}, Takeovers: s.takeovers,
	}
	for k, v := range s.count.Snapshot() {
		if !strings.HasPrefix(k, "dropped_") {
			st.Counters[k] = v
		}
	}
	for r, v := range s.count.Dropped() {
		st.Dropped[string(r)] = v
	}
	if r := s.lastResync; r.Complete {
		st.LastResync = &SyncResync{At: r.At, DurationMS: ms(r.Took), Connections: r.Records, FullTable: r.Full, StaleRemoved: r.Swept}
	}
	if t := s.lastTakeov; !t.At.IsZero() {
		st.LastTakeover = &SyncTakeover{At: t.At, ConnectionsReady: t.FlowsReady, SyncState: t.SyncState}
	}
	return st
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// syncCounterHelp names the counters of SyncStatus.Counters for metrics.
var syncCounterHelp = []struct{ name, help string }{
	{"messages_sent", "Sync frames sent to the peer."},
	{"messages_received", "Sync frames received from the peer and verified."},
	{"bytes_sent", "Payload bytes sent to the peer."},
	{"bytes_received", "Payload bytes received from the peer."},
	{"flows_sent", "Connections sent to the peer."},
	{"flows_received", "Connections received from the peer."},
	{"flows_installed", "Connections of the peer installed in this node's table."},
	{"flows_removed", "Connections removed from this node's table because the peer ended them."},
	{"flows_refreshed", "Idle connections sent again so the peer never ages them out first."},
	{"events", "Connection reports read from the data path."},
	{"events_lost", "Connection reports the data path dropped (perf buffer full); the whole table is sent instead."},
	{"events_unsendable", "Connection reports of a backend this node no longer has."},
	{"bulks_sent", "Whole tables sent to the peer."},
	{"bulks_received", "Bulk resyncs received from the peer."},
}
