package sync

import (
	"fmt"
	"sync"
	"time"
)

// Gate decides whether `xdplb check` may pass as far as flow sync is
// concerned: a node that may have missed its peer's changes (it just
// started, or its own link was down) must not take the VIP before it has
// the peer's table, or it would cut every connection the peer carries. It
// may once it has it (the peer's bulk resync ended), or once it is clear
// nobody answers (no session for NoPeerWait: the first start of the pair,
// or the peer is down: a lone node must still take the VIP within a few
// seconds), or, bounded, after MaxWait. A node that holds the VIP always
// passes (failing would only make the VIP move to a node that knows less);
// a node that is stopping never does (it hands the VIP over).
//
// Safe for concurrent use.
type Gate struct {
	NoPeerWait time.Duration
	MaxWait    time.Duration

	mu          sync.Mutex
	need        bool      // a resync is needed before the VIP may come here
	needSince   time.Time // when the need began (start, the link back up)
	waitFrom    time.Time // when the wait for a peer (re)started
	linkDown    bool
	sessionUp   bool
	stopping    bool
	openedWhy   string
	openedAt    time.Time
	openedCount int
}

// NewGate returns a gate that needs a resync, from now.
func NewGate(now time.Time, noPeerWait, maxWait time.Duration) *Gate {
	return &Gate{NoPeerWait: noPeerWait, MaxWait: maxWait, need: true, needSince: now, waitFrom: now}
}

// LinkDown: this node's own link went down; it misses the peer's changes
// until it is back and has resynced.
func (g *Gate) LinkDown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.linkDown = true
	g.need = true
}

// LinkUp: the link is back; the wait for the peer starts again.
func (g *Gate) LinkUp(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.linkDown {
		g.linkDown = false
		g.needSince, g.waitFrom = now, now
	}
}

// SessionUp: a session with the peer is open (its bulk will follow).
func (g *Gate) SessionUp() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sessionUp = true
}

// SessionDown: the session ended; a node still waiting for a resync waits
// NoPeerWait again (bounded by MaxWait).
func (g *Gate) SessionDown(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sessionUp = false
	g.waitFrom = now
}

// Resynced: the peer's bulk resync ended.
func (g *Gate) Resynced(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.need && !g.linkDown {
		g.openLocked(now, "in sync with the peer")
	}
}

// Stopping: the node is handing over; the gate stays closed.
func (g *Gate) Stopping() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopping = true
}

func (g *Gate) openLocked(now time.Time, why string) {
	g.need = false
	g.openedWhy, g.openedAt = why, now
	g.openedCount++
}

// Check says whether the node may take (or keep) the VIP at now, and why
// not. opened is non-empty when this call opened the gate, saying why (to
// log once).
func (g *Gate) Check(now time.Time, holdsVIP bool) (ok bool, why, opened string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.stopping:
		return false, "stopping: handing the VIP over to the peer", ""
	case g.linkDown:
		return false, "this node's link is down: it misses the peer's changes until it is back and has resynced", ""
	case !g.need:
		return true, "", ""
	case holdsVIP:
		return true, "", ""
	case now.Sub(g.needSince) >= g.MaxWait:
		why := fmt.Sprintf("resync from the peer not complete after %v: going on without it", g.MaxWait)
		g.openLocked(now, why)
		return true, "", why
	case g.sessionUp:
		return false, fmt.Sprintf("resyncing from the peer (%v so far, at most %v)", now.Sub(g.needSince).Round(time.Millisecond), g.MaxWait), ""
	case now.Sub(g.waitFrom) >= g.NoPeerWait:
		why := fmt.Sprintf("no peer answered within %v: nothing to resync", g.NoPeerWait)
		g.openLocked(now, why)
		return true, "", why
	}
	return false, fmt.Sprintf("waiting for the peer to resync from (%v of %v)", now.Sub(g.waitFrom).Round(time.Millisecond), g.NoPeerWait), ""
}

// Opened says when the gate last opened and why (zero: never).
func (g *Gate) Opened() (time.Time, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.openedAt, g.openedWhy
}
