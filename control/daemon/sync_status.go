package daemon

import (
	"fmt"
	"io"
	"strings"
	"time"

	flowsync "github.com/xdplb/xdplb/control/sync"
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

// writeSyncMetrics writes flow sync's metrics (the text format).
func writeSyncMetrics(w io.Writer, st *SyncStatus) {
	family := func(name, typ, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	family("xdplb_sync_state", "gauge", "1 for the state of the session with the peer: disconnected, resyncing or in sync.")
	for _, s := range []string{syncDisconnected, syncResyncing, syncInSync} {
		fmt.Fprintf(w, "xdplb_sync_state{state=%q} %d\n", s, b2i(st.State == s))
	}
	family("xdplb_sync_gate_open", "gauge", "1 when flow sync lets `xdplb check` pass (resynced, nobody to resync from, or this node forwards).")
	fmt.Fprintf(w, "xdplb_sync_gate_open %d\n", b2i(st.GateOpen))
	family("xdplb_sync_holds_vip", "gauge", "1 while the VIP is on this node.")
	fmt.Fprintf(w, "xdplb_sync_holds_vip %d\n", b2i(st.HoldsVIP))
	family("xdplb_sync_lag_seconds", "gauge", "Age of the oldest change not yet sent to the peer.")
	fmt.Fprintf(w, "xdplb_sync_lag_seconds %g\n", st.LagMS/1000)
	family("xdplb_sync_pending", "gauge", "Connections whose change waits to be sent.")
	fmt.Fprintf(w, "xdplb_sync_pending %d\n", st.Pending)
	family("xdplb_sync_sent_lag_seconds", "gauge", "Quantiles of how long the recent changes waited before they were sent.")
	fmt.Fprintf(w, "xdplb_sync_sent_lag_seconds{quantile=\"0.5\"} %g\n", st.LagP50MS/1000)
	fmt.Fprintf(w, "xdplb_sync_sent_lag_seconds{quantile=\"0.99\"} %g\n", st.LagP99MS/1000)
	family("xdplb_sync_total", "counter", "Flow sync counters, by name (see the help of each in the docs).")
	for _, c := range syncCounterHelp {
		fmt.Fprintf(w, "xdplb_sync_total{counter=%q} %d\n", c.name, st.Counters[c.name])
	}
	family("xdplb_sync_dropped_total", "counter", "Frames and connections of the peer refused, by reason; nothing refused is installed.")
	for _, r := range append(append([]flowsync.Reason{}, flowsync.FrameReasons...), flowsync.RecordReasons...) {
		fmt.Fprintf(w, "xdplb_sync_dropped_total{reason=%q} %d\n", r, st.Dropped[string(r)])
	}
	family("xdplb_sync_sessions_total", "counter", "Sync sessions opened with the peer.")
	fmt.Fprintf(w, "xdplb_sync_sessions_total %d\n", st.Sessions)
	family("xdplb_sync_takeovers_total", "counter", "Times the VIP arrived on this node.")
	fmt.Fprintf(w, "xdplb_sync_takeovers_total %d\n", st.Takeovers)
	if r := st.LastResync; r != nil {
		family("xdplb_sync_last_resync_seconds", "gauge", "Duration of the last bulk resync received from the peer.")
		fmt.Fprintf(w, "xdplb_sync_last_resync_seconds %g\n", r.DurationMS/1000)
		family("xdplb_sync_last_resync_connections", "gauge", "Connections of the last bulk resync received from the peer.")
		fmt.Fprintf(w, "xdplb_sync_last_resync_connections %d\n", r.Connections)
	}
	if t := st.LastTakeover; t != nil {
		family("xdplb_sync_last_takeover_connections_ready", "gauge", "Established connections in this node's table when the VIP last arrived.")
		fmt.Fprintf(w, "xdplb_sync_last_takeover_connections_ready %d\n", t.ConnectionsReady)
	}
}
