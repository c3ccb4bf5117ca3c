// Package sync holds the decisions of flow sync between the two LBs of a
// pair: the wire format (versioned, 16-byte addresses), the session's
// authentication with the shared key (a mutual challenge-response that
// derives per-session keys, an HMAC and a sequence number on every frame),
// the validation of what the peer sends with a reason for every drop, the
// translation of the peer's connections into this node's entries (its
// backend indexes, its clock) and of the data path's events into messages,
// which of two versions of a connection wins, the coalescing send queue and
// its lag, and the resync gate that keeps `xdplb check` failing until a
// starting node has the peer's table.
//
// It touches nothing: it reads and writes the io.ReadWriter it is given
// (the daemon's TCP connection, or net.Pipe in tests) and returns what the
// daemon must do; control/daemon does the dialing, the perf reading and the
// map writes. Its tests run without root.
package sync

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Version is the newest frame format this node speaks. A peer announces
// the range it speaks in its hello; the session uses the highest version
// both speak. The hello itself never changes, so a node one release ahead
// still finds out what its peer speaks.
const Version = 1

// minVersion is the oldest frame format this node speaks.
const minVersion = 1

// DefaultPort is the TCP port sync listens on (on the node's own address,
// never the VIP).
const DefaultPort = 6450

// MinKeyLen is the shortest shared key accepted, in characters (e.g. the
// 64 hex digits of `openssl rand -hex 32`).
const MinKeyLen = 32

// Frame layout: a 16-byte header, the payload, a 32-byte HMAC-SHA256 of
// header and payload.
//
//	0  magic "XS"
//	2  version
//	3  type
//	4  payload length (big endian)
//	8  sequence number (big endian): 0 for the hello, then 1, 2, ... per
//	   direction and session
const (
	headerLen = 16
	macLen    = 32
	// MaxPayload bounds a frame's payload; a larger length is refused
	// before anything is read.
	MaxPayload = 64 << 10
)

var magic = [2]byte{'X', 'S'}

// MsgType is what a frame carries.
type MsgType uint8

const (
	// MsgHello opens a session: the versions spoken, a nonce, the role.
	// Its MAC is keyed with the shared key itself; every later frame's
	// with the session's key.
	MsgHello MsgType = 1
	// MsgState is a node's state: whether it holds the VIP, whether it is
	// stopping, its frontend and SNAT range (a peer configured for
	// another frontend is refused). The first frame after the hello.
	MsgState MsgType = 2
	// MsgFlows carries connections (Records).
	MsgFlows MsgType = 3
	// MsgBulkBegin starts a bulk resync: Full says the records that
	// follow are the sender's whole table (it holds the VIP); otherwise
	// none follow (it does not forward: nothing to resync from it).
	MsgBulkBegin MsgType = 4
	// MsgBulkEnd ends a bulk resync, with the number of records sent.
	MsgBulkEnd MsgType = 5
	// MsgPing keeps an idle session alive (one a second).
	MsgPing MsgType = 6
	maxMsg  MsgType = MsgPing
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "hello"
	case MsgState:
		return "state"
	case MsgFlows:
		return "flows"
	case MsgBulkBegin:
		return "bulk-begin"
	case MsgBulkEnd:
		return "bulk-end"
	case MsgPing:
		return "ping"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Kind says what a Record reports.
type Kind uint8

const (
	// Upsert: the connection exists in this state (established, changed
	// state, refreshed, or part of a bulk).
	Upsert Kind = 1
	// Delete: the sender forgot the connection (expired, reopened, or its
	// daemon removed it).
	Delete Kind = 2
)

// State is a connection's TCP state, as the data path's enum flow_state.
type State uint8

// The states a synced connection can be in (half-open ones are never
// synced).
const (
	StateEstablished State = 2
	StateClosing     State = 3
	StateReset       State = 4
	StateClosed      State = 5
)

// Record is one connection as flow sync carries it. Times are on the
// clock of the node that holds the record: the sender's when it encodes
// it, the receiver's once decoded (the wire carries ages).
type Record struct {
	Kind     Kind
	State    State
	Frontend netip.AddrPort
	Client   netip.AddrPort
	Backend  netip.AddrPort
	SNATPort uint16
	// ClientFlags and BackendFlags are the data path's FLOW_F_* bits of
	// each direction; ClientSeq and BackendSeq each sender's next
	// sequence number.
	ClientFlags, BackendFlags uint8
	ClientSeq, BackendSeq     uint32
	ClientMAC                 [6]byte
	CreatedNs, LastSeenNs     uint64
}

// Key is a connection's identity as the client sees it.
func (r Record) Key() ConnKey { return ConnKey{Client: r.Client, Frontend: r.Frontend} }

// ConnKey identifies a connection: client and frontend.
type ConnKey struct{ Client, Frontend netip.AddrPort }

// recordLen is the size of a Record on the wire (version 1):
//
//	 0 kind, state, client flags, backend flags
//	 4 frontend address (16, IPv4 as ::ffff:a.b.c.d), port
//	22 client address, port
//	40 backend address, port
//	58 SNAT port
//	60 client MAC
//	66 reserved (2)
//	68 client seq, backend seq
//	76 age of creation, age of last activity (ns, when sent)
//	92 reserved (4)
const recordLen = 96

// maxAge bounds the ages a record may carry: more than a year is not a
// connection's.
const maxAge = uint64(366 * 24 * time.Hour)

// RecordsPerFrame is how many records fit in one MsgFlows frame.
const RecordsPerFrame = (MaxPayload - 2) / recordLen

func putAddrPort(b []byte, ap netip.AddrPort) {
	a16 := ap.Addr().As16()
	copy(b[:16], a16[:])
	binary.BigEndian.PutUint16(b[16:], ap.Port())
}

func getAddrPort(b []byte) netip.AddrPort {
	a := netip.AddrFrom16([16]byte(b[:16])).Unmap()
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[16:]))
}

// age is now - t, 0 when t is in the future or unset.
func age(now, t uint64) uint64 {
	if t == 0 || t > now {
		return 0
	}
	return now - t
}

// since is now - a, the time a record's age points to on this clock.
func since(now, a uint64) uint64 {
	if a >= now {
		return 1 // the clock's start: as old as anything
	}
	return now - a
}

// AppendRecord appends r to b in the wire format, its times turned into
// ages at now (the sender's clock).
func AppendRecord(b []byte, r Record, now uint64) []byte {
	var w [recordLen]byte
	w[0], w[1], w[2], w[3] = byte(r.Kind), byte(r.State), r.ClientFlags, r.BackendFlags
	putAddrPort(w[4:], r.Frontend)
	putAddrPort(w[22:], r.Client)
	putAddrPort(w[40:], r.Backend)
	binary.BigEndian.PutUint16(w[58:], r.SNATPort)
	copy(w[60:66], r.ClientMAC[:])
	binary.BigEndian.PutUint32(w[68:], r.ClientSeq)
	binary.BigEndian.PutUint32(w[72:], r.BackendSeq)
	binary.BigEndian.PutUint64(w[76:], age(now, r.CreatedNs))
	binary.BigEndian.PutUint64(w[84:], age(now, r.LastSeenNs))
	return append(b, w[:]...)
}

// DecodeRecord reads one record, its ages turned into times at now (the
// receiver's clock). A record that cannot describe a synced connection
// is an error of reason Malformed.
func DecodeRecord(w []byte, now uint64) (Record, error) {
	if len(w) < recordLen {
		return Record{}, errorf(Truncated, "record of %d bytes, want %d", len(w), recordLen)
	}
	r := Record{
		Kind: Kind(w[0]), State: State(w[1]), ClientFlags: w[2], BackendFlags: w[3],
		Frontend: getAddrPort(w[4:]), Client: getAddrPort(w[22:]), Backend: getAddrPort(w[40:]),
		SNATPort:  binary.BigEndian.Uint16(w[58:]),
		ClientSeq: binary.BigEndian.Uint32(w[68:]), BackendSeq: binary.BigEndian.Uint32(w[72:]),
	}
	copy(r.ClientMAC[:], w[60:66])
	created, seen := binary.BigEndian.Uint64(w[76:]), binary.BigEndian.Uint64(w[84:])
	switch {
	case r.Kind != Upsert && r.Kind != Delete:
		return r, errorf(Malformed, "record kind %d", r.Kind)
	case r.State < StateEstablished || r.State > StateClosed:
		return r, errorf(Malformed, "record state %d", r.State)
	case !usable(r.Frontend) || !usable(r.Client) || !usable(r.Backend) || r.SNATPort == 0:
		return r, errorf(Malformed, "record addresses %s -> %s -> %s (snat port %d)", r.Client, r.Frontend, r.Backend, r.SNATPort)
	case r.Client.Addr().Is4() != r.Frontend.Addr().Is4() || r.Backend.Addr().Is4() != r.Frontend.Addr().Is4():
		return r, errorf(Malformed, "record mixes address families: %s -> %s -> %s", r.Client, r.Frontend, r.Backend)
	case created > maxAge || seen > maxAge:
		return r, errorf(Malformed, "record ages %d and %d ns", created, seen)
	}
	r.CreatedNs, r.LastSeenNs = since(now, created), since(now, seen)
	return r, nil
}

// usable: a unicast address and a port.
func usable(ap netip.AddrPort) bool {
	a := ap.Addr()
	return ap.Port() != 0 && a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// EncodeFlows is the payload of a MsgFlows frame: a count, then the
// records (at most RecordsPerFrame).
func EncodeFlows(rs []Record, now uint64) []byte {
	if len(rs) > RecordsPerFrame {
		panic("sync: too many records for one frame")
	}
	b := make([]byte, 2, 2+len(rs)*recordLen)
	binary.BigEndian.PutUint16(b, uint16(len(rs)))
	for _, r := range rs {
		b = AppendRecord(b, r, now)
	}
	return b
}

// DecodeFlows splits a MsgFlows payload into records. A payload whose
// length does not match its count is refused whole (Truncated or
// Garbage); a record that does not parse is returned as an error in its
// place (bad[i]), so that the others still count.
func DecodeFlows(p []byte, now uint64) (rs []Record, bad []error, err error) {
	if len(p) < 2 {
		return nil, nil, errorf(Truncated, "flows payload of %d bytes", len(p))
	}
	n := int(binary.BigEndian.Uint16(p))
	body := p[2:]
	switch {
	case len(body) < n*recordLen:
		return nil, nil, errorf(Truncated, "flows payload announces %d records, holds %d bytes", n, len(body))
	case len(body) > n*recordLen:
		return nil, nil, errorf(Garbage, "flows payload announces %d records, holds %d bytes more", n, len(body)-n*recordLen)
	}
	rs = make([]Record, n)
	bad = make([]error, n)
	for i := range n {
		rs[i], bad[i] = DecodeRecord(body[i*recordLen:], now)
	}
	return rs, bad, nil
}

// NodeState is a MsgState payload: what a node tells its peer of itself.
type NodeState struct {
	// HoldsVIP: the node has the VIP on its interface (it forwards).
	HoldsVIP bool
	// Stopping: the node is handing over and will exit.
	Stopping bool
	// Frontend and the SNAT range, which must be the peer's too.
	Frontend       netip.AddrPort
	SNATLo, SNATHi uint16
}

const stateLen = 1 + 1 + 18 + 4

// EncodeState is the payload of a MsgState frame.
func EncodeState(s NodeState) []byte {
	b := make([]byte, stateLen)
	if s.HoldsVIP {
		b[0] |= 1
	}
	if s.Stopping {
		b[0] |= 2
	}
	putAddrPort(b[2:], s.Frontend)
	binary.BigEndian.PutUint16(b[20:], s.SNATLo)
	binary.BigEndian.PutUint16(b[22:], s.SNATHi)
	return b
}

// DecodeState reads a MsgState payload. Bytes past the ones known are
// what a newer version adds, and are ignored only if the version says so:
// here, within one version, they are garbage.
func DecodeState(p []byte) (NodeState, error) {
	if len(p) != stateLen {
		return NodeState{}, errorf(Garbage, "state payload of %d bytes, want %d", len(p), stateLen)
	}
	s := NodeState{HoldsVIP: p[0]&1 != 0, Stopping: p[0]&2 != 0, Frontend: getAddrPort(p[2:]),
		SNATLo: binary.BigEndian.Uint16(p[20:]), SNATHi: binary.BigEndian.Uint16(p[22:])}
	if p[0]&^3 != 0 || p[1] != 0 {
		return s, errorf(Garbage, "state flags %#x %#x", p[0], p[1])
	}
	return s, nil
}

// EncodeBulkBegin is the payload of a MsgBulkBegin frame.
func EncodeBulkBegin(full bool) []byte {
	if full {
		return []byte{1}
	}
	return []byte{0}
}

// DecodeBulkBegin reads a MsgBulkBegin payload: whether the bulk is the
// sender's whole table.
func DecodeBulkBegin(p []byte) (full bool, err error) {
	if len(p) != 1 || p[0] > 1 {
		return false, errorf(Garbage, "bulk-begin payload % x", p)
	}
	return p[0] == 1, nil
}

// EncodeBulkEnd is the payload of a MsgBulkEnd frame.
func EncodeBulkEnd(records uint32) []byte { return binary.BigEndian.AppendUint32(nil, records) }

// DecodeBulkEnd reads a MsgBulkEnd payload.
func DecodeBulkEnd(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, errorf(Garbage, "bulk-end payload of %d bytes", len(p))
	}
	return binary.BigEndian.Uint32(p), nil
}
