package sync

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Reason says why something the peer sent was dropped. Frame-level
// reasons end the session (a stream that failed once cannot be trusted
// further); record-level reasons drop one connection and the session
// goes on.
type Reason string

// Frame-level reasons: the session is closed.
const (
	// NotPeer: a connection from an address other than the peer's.
	NotPeer Reason = "not_peer"
	// BadMAC: the frame's HMAC does not verify: forged, a wrong key, or a
	// frame of another session replayed (keys are per session).
	BadMAC Reason = "bad_mac"
	// Replayed: a sequence number already used in this session (or one
	// skipped: frames travel in order on one TCP stream).
	Replayed Reason = "replayed"
	// Truncated: the stream ended inside a frame, or a payload is shorter
	// than what it announces.
	Truncated Reason = "truncated"
	// Oversized: a frame announcing more than MaxPayload bytes.
	Oversized Reason = "oversized"
	// Garbage: not a frame (bad magic, unknown type, a payload that does
	// not parse, frames out of protocol order).
	Garbage Reason = "garbage"
	// BadVersion: a version this node does not speak (refused, never
	// half-parsed).
	BadVersion Reason = "version"
	// Handshake: the session did not open (timeout, a node talking to
	// itself, a peer configured for another frontend or SNAT range).
	HandshakeFailed Reason = "handshake"
)

// Record-level reasons: the connection is not installed.
const (
	// Malformed: a record that cannot describe a synced connection.
	Malformed Reason = "malformed"
	// ForeignFrontend: a connection to another frontend address or port.
	ForeignFrontend Reason = "foreign_frontend"
	// UnknownBackend: a connection to a backend this node does not have.
	UnknownBackend Reason = "unknown_backend"
	// ForeignSNAT: a SNAT port outside this node's range.
	ForeignSNAT Reason = "foreign_snat"
	// Stale: older than what this node has of the connection.
	Stale Reason = "stale"
	// TableFull: the connection table has no room.
	TableFull Reason = "table_full"
	// InstallError: the map write failed otherwise.
	InstallError Reason = "install_error"
)

// FrameReasons and RecordReasons list every reason, for metrics that
// show each one from the start.
var (
	FrameReasons  = []Reason{NotPeer, BadMAC, Replayed, Truncated, Oversized, Garbage, BadVersion, HandshakeFailed}
	RecordReasons = []Reason{Malformed, ForeignFrontend, UnknownBackend, ForeignSNAT, Stale, TableFull, InstallError}
)

// Error is a drop with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func errorf(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// ReasonOf returns the reason of a drop error, or "" for other errors
// (the connection closed, a deadline).
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Counts are flow sync's counters. Safe for concurrent use.
type Counts struct {
	mu sync.Mutex
	c  map[string]uint64
}

// Add adds n to counter name.
func (c *Counts) Add(name string, n uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		c.c = map[string]uint64{}
	}
	c.c[name] += n
}

// Drop counts one drop of reason r.
func (c *Counts) Drop(r Reason) { c.Add("dropped_"+string(r), 1) }

// Get returns counter name.
func (c *Counts) Get(name string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c[name]
}

// Snapshot returns every counter.
func (c *Counts) Snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.c))
	for k, v := range c.c {
		out[k] = v
	}
	return out
}

// Dropped returns the drops by reason, every reason present.
func (c *Counts) Dropped() map[Reason]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[Reason]uint64{}
	for _, r := range append(append([]Reason{}, FrameReasons...), RecordReasons...) {
		out[r] = c.c["dropped_"+string(r)]
	}
	return out
}

// SortedReasons returns reasons in a stable order.
func SortedReasons(m map[Reason]uint64) []Reason {
	out := make([]Reason, 0, len(m))
	for r := range m {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
