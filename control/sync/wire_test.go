package sync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef0123")
	frontend = netip.MustParseAddrPort("10.10.10.100:6443")
	client1  = netip.MustParseAddrPort("10.10.10.101:40001")
	server1  = netip.MustParseAddrPort("10.10.10.50:6443")
)

func testRecord() Record {
	return Record{Kind: Upsert, State: StateEstablished, Frontend: frontend, Client: client1, Backend: server1,
		SNATPort: 20001, ClientFlags: 0x02, BackendFlags: 0x0a, ClientSeq: 1001, BackendSeq: 5001,
		ClientMAC: [6]byte{2, 0x58, 10, 10, 10, 101}, CreatedNs: 1_000_000_000, LastSeenNs: 9_000_000_000}
}

// TestRecordRoundTrip: a record crosses the wire unchanged but for its
// times, which arrive as the same ages on the receiver's clock.
func TestRecordRoundTrip(t *testing.T) {
	r := testRecord()
	b := AppendRecord(nil, r, 10_000_000_000) // sender: created 9 s ago, seen 1 s ago
	if len(b) != recordLen {
		t.Fatalf("record of %d bytes, want %d", len(b), recordLen)
	}
	got, err := DecodeRecord(b, 100_000_000_000) // receiver's clock is elsewhere
	if err != nil {
		t.Fatal(err)
	}
	want := r
	want.CreatedNs, want.LastSeenNs = 91_000_000_000, 99_000_000_000
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	// 16-byte addresses: an IPv6 connection crosses too.
	r6 := r
	r6.Frontend = netip.MustParseAddrPort("[2001:db8::100]:6443")
	r6.Client = netip.MustParseAddrPort("[2001:db8::101]:40001")
	r6.Backend = netip.MustParseAddrPort("[2001:db8::50]:6443")
	got6, err := DecodeRecord(AppendRecord(nil, r6, 10_000_000_000), 10_000_000_000)
	if err != nil || got6.Client != r6.Client || got6.Backend != r6.Backend || got6.Frontend != r6.Frontend {
		t.Fatalf("ipv6: %+v %v", got6, err)
	}
}

func TestDecodeRecordRefuses(t *testing.T) {
	base := AppendRecord(nil, testRecord(), 10_000_000_000)
	cases := []struct {
		name   string
		mutate func(b []byte)
		reason Reason
	}{
		{"kind 0", func(b []byte) { b[0] = 0 }, Malformed},
		{"kind 3", func(b []byte) { b[0] = 3 }, Malformed},
		{"half-open state", func(b []byte) { b[1] = 1 }, Malformed},
		{"state 6", func(b []byte) { b[1] = 6 }, Malformed},
		{"unspecified client", func(b []byte) { copy(b[22:38], make([]byte, 16)) }, Malformed},
		{"client port 0", func(b []byte) { b[38], b[39] = 0, 0 }, Malformed},
		{"snat port 0", func(b []byte) { b[58], b[59] = 0, 0 }, Malformed},
		{"mixed families", func(b []byte) { copy(b[22:38], netip.MustParseAddr("2001:db8::1").AsSlice()) }, Malformed},
		{"age of centuries", func(b []byte) { binary.BigEndian.PutUint64(b[84:], ^uint64(0)) }, Malformed},
		{"multicast backend", func(b []byte) { copy(b[52:56], []byte{224, 0, 0, 1}) }, Malformed},
	}
	for _, tc := range cases {
		b := append([]byte(nil), base...)
		tc.mutate(b)
		if _, err := DecodeRecord(b, 1e12); ReasonOf(err) != tc.reason {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.reason)
		}
	}
	if _, err := DecodeRecord(base[:50], 1e12); ReasonOf(err) != Truncated {
		t.Errorf("short record: %v", err)
	}
}

func TestFlowsPayload(t *testing.T) {
	rs := []Record{testRecord(), testRecord()}
	rs[1].Client = netip.MustParseAddrPort("10.10.10.102:40002")
	rs[1].Kind = Delete
	p := EncodeFlows(rs, 10e9)
	got, bad, err := DecodeFlows(p, 10e9)
	if err != nil || len(got) != 2 || bad[0] != nil || bad[1] != nil || got[1].Kind != Delete || got[1].Client != rs[1].Client {
		t.Fatalf("%+v %v %v", got, bad, err)
	}
	if _, _, err := DecodeFlows(p[:len(p)-1], 10e9); ReasonOf(err) != Truncated {
		t.Errorf("short payload: %v", err)
	}
	if _, _, err := DecodeFlows(append(p, 0), 10e9); ReasonOf(err) != Garbage {
		t.Errorf("long payload: %v", err)
	}
	// One bad record among good ones: only it is refused.
	p[2+recordLen+1] = 9
	_, bad, err = DecodeFlows(p, 10e9)
	if err != nil || bad[0] != nil || ReasonOf(bad[1]) != Malformed {
		t.Fatalf("one bad record: %v %v", bad, err)
	}
	if n := RecordsPerFrame; 2+n*recordLen > MaxPayload || 2+(n+1)*recordLen <= MaxPayload {
		t.Fatalf("RecordsPerFrame %d does not fill a frame", n)
	}
}

func TestStatePayload(t *testing.T) {
	s := NodeState{HoldsVIP: true, Frontend: frontend, SNATLo: 6444, SNATHi: 65535}
	got, err := DecodeState(EncodeState(s))
	if err != nil || got != s {
		t.Fatalf("%+v %v", got, err)
	}
	bad := EncodeState(s)
	bad[0] |= 0x80
	if _, err := DecodeState(bad); ReasonOf(err) != Garbage {
		t.Fatalf("unknown flag: %v", err)
	}
	if _, err := DecodeState(append(EncodeState(s), 1)); ReasonOf(err) != Garbage {
		t.Fatalf("long: %v", err)
	}
	if full, err := DecodeBulkBegin(EncodeBulkBegin(true)); !full || err != nil {
		t.Fatal("bulk begin")
	}
	if n, err := DecodeBulkEnd(EncodeBulkEnd(77)); n != 77 || err != nil {
		t.Fatal("bulk end")
	}
}

// pair opens a session over net.Pipe.
func pair(t *testing.T, dialerKey, listenerKey []byte) (d, l *Conn, derr, lerr error) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	a.SetDeadline(time.Now().Add(5 * time.Second))
	b.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, lerr = Handshake(b, listenerKey, Listener)
		if lerr != nil {
			b.Close()
		}
	}()
	d, derr = Handshake(a, dialerKey, Dialer)
	if derr != nil {
		a.Close()
	}
	<-done
	return d, l, derr, lerr
}

func TestSession(t *testing.T) {
	d, l, derr, lerr := pair(t, testKey, testKey)
	if derr != nil || lerr != nil {
		t.Fatal(derr, lerr)
	}
	if d.Version() != Version {
		t.Fatalf("version %d", d.Version())
	}
	go func() {
		d.Send(MsgState, EncodeState(NodeState{Frontend: frontend}))
		d.Send(MsgFlows, EncodeFlows([]Record{testRecord()}, 10e9))
	}()
	for _, want := range []MsgType{MsgState, MsgFlows} {
		typ, p, err := l.Recv()
		if err != nil || typ != want {
			t.Fatalf("recv %s: %v %v", want, typ, err)
		}
		if typ == MsgFlows {
			if rs, _, err := DecodeFlows(p, 10e9); err != nil || rs[0].Client != client1 {
				t.Fatalf("flows: %v %v", rs, err)
			}
		}
	}
	// And the other way.
	go l.Send(MsgPing, nil)
	if typ, _, err := d.Recv(); typ != MsgPing || err != nil {
		t.Fatal(typ, err)
	}
}

// TestSessionRefuses: a wrong key, a node talking to itself, a frame
// replayed within the session or from another one, a stream cut short,
// an oversized frame, garbage and an unknown version: each refused with
// its reason.
func TestSessionRefuses(t *testing.T) {
	wrong := []byte("not the key, but long enough to be one....")
	_, _, derr, lerr := pair(t, testKey, wrong)
	// The first to read the other's hello refuses it and closes (net.Pipe
	// drops the other's unread hello; TCP would deliver both).
	if derr == nil || lerr == nil || (ReasonOf(derr) != BadMAC && ReasonOf(lerr) != BadMAC) {
		t.Fatalf("wrong key: dialer %v, listener %v", derr, lerr)
	}
	if _, err := Handshake(&bytes.Buffer{}, []byte("short"), Dialer); ReasonOf(err) != HandshakeFailed {
		t.Fatalf("short key: %v", err)
	}

	// Recorded frames of one session, replayed.
	var rec bytes.Buffer
	sender := &Conn{rw: &rec, version: 1, sendKey: []byte("session key one, 32 bytes long!!")}
	sender.Send(MsgState, EncodeState(NodeState{Frontend: frontend}))
	frame1 := append([]byte(nil), rec.Bytes()...)
	sender.Send(MsgPing, nil)
	recv := func(key []byte, stream []byte) error {
		c := &Conn{rw: readOnly(stream), version: 1, recvKey: key}
		for {
			if _, _, err := c.Recv(); err != nil {
				return err
			}
		}
	}
	if err := recv(sender.sendKey, append(append([]byte(nil), frame1...), frame1...)); ReasonOf(err) != Replayed {
		t.Fatalf("frame replayed in its session: %v", err)
	}
	if err := recv([]byte("session key two, 32 bytes long!!"), frame1); ReasonOf(err) != BadMAC {
		t.Fatalf("frame replayed into another session: %v", err)
	}
	if err := recv(sender.sendKey, rec.Bytes()); err != io.EOF {
		t.Fatalf("the recorded session itself: %v", err)
	}
	for _, tc := range []struct {
		name   string
		stream []byte
		reason Reason
	}{
		{"cut in the header", frame1[:7], Truncated},
		{"cut in the payload", frame1[:headerLen+3], Truncated},
		{"cut in the MAC", frame1[:len(frame1)-1], Truncated},
		{"oversized", func() []byte {
			b := append([]byte(nil), frame1...)
			binary.BigEndian.PutUint32(b[4:], MaxPayload+1)
			return b
		}(), Oversized},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Garbage},
		{"version 2", func() []byte {
			b := append([]byte(nil), frame1...)
			b[2] = 2
			return b
		}(), BadVersion},
		{"a flipped bit", func() []byte {
			b := append([]byte(nil), frame1...)
			b[headerLen+5] ^= 1
			return b
		}(), BadMAC},
		{"a hello inside the session", frame(1, MsgHello, 1, make([]byte, helloLen), sender.sendKey), Garbage},
		{"an unknown type", frame(1, 99, 1, nil, sender.sendKey), Garbage},
	} {
		if err := recv(sender.sendKey, tc.stream); ReasonOf(err) != tc.reason {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.reason)
		}
	}

	// A hello of a newer node that speaks only version 2 and up.
	var hb bytes.Buffer
	hello := make([]byte, helloLen)
	hello[0], hello[1], hello[2] = 2, 3, byte(Listener)
	hb.Write(frame(1, MsgHello, 0, hello, testKey))
	rw := struct {
		io.Reader
		io.Writer
	}{&hb, io.Discard}
	if _, err := Handshake(rw, testKey, Dialer); ReasonOf(err) != BadVersion {
		t.Fatalf("peer of versions 2-3: %v", err)
	}
	// A hello of a node one release ahead (1-2): version 1 is spoken.
	hb.Reset()
	hello[0], hello[1] = 1, 2
	hb.Write(frame(1, MsgHello, 0, hello, testKey))
	if c, err := Handshake(rw, testKey, Dialer); err != nil || c.Version() != 1 {
		t.Fatalf("peer of versions 1-2: %v", err)
	}
	// Our own hello reflected back.
	hb.Reset()
	hello[0], hello[1], hello[2] = 1, 1, byte(Dialer)
	hb.Write(frame(1, MsgHello, 0, hello, testKey))
	if _, err := Handshake(rw, testKey, Dialer); ReasonOf(err) != HandshakeFailed {
		t.Fatalf("reflected hello: %v", err)
	}
}

func TestReasonOf(t *testing.T) {
	if ReasonOf(io.EOF) != "" || ReasonOf(errors.Join(errorf(Stale, "x"))) != Stale {
		t.Fatal("ReasonOf")
	}
}

// FuzzRecv feeds arbitrary bytes to a session's reader and decodes
// whatever frames verify: nothing panics, every refusal has a reason,
// nothing is accepted that was not MACed with the session's key.
func FuzzRecv(f *testing.F) {
	key := []byte("fuzz session key, 32 bytes long!")
	var seed bytes.Buffer
	s := &Conn{rw: &seed, version: 1, sendKey: key}
	s.Send(MsgState, EncodeState(NodeState{HoldsVIP: true, Frontend: frontend, SNATLo: 6444, SNATHi: 65535}))
	s.Send(MsgBulkBegin, EncodeBulkBegin(true))
	s.Send(MsgFlows, EncodeFlows([]Record{testRecord()}, 10e9))
	s.Send(MsgBulkEnd, EncodeBulkEnd(1))
	f.Add(seed.Bytes())
	f.Add([]byte("XS\x01\x03\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00"))
	f.Add(EncodeFlows([]Record{testRecord()}, 10e9))
	f.Fuzz(func(t *testing.T, data []byte) {
		// The payload decoders on raw bytes.
		DecodeFlows(data, 1e12)
		DecodeState(data)
		DecodeBulkBegin(data)
		DecodeBulkEnd(data)
		DecodeRecord(data, 1e12)
		// The frame reader on raw bytes, then on frames MACed right.
		for _, stream := range [][]byte{data, resign(data, key)} {
			c := &Conn{rw: readOnly(stream), version: 1, recvKey: key}
			for {
				typ, p, err := c.Recv()
				if err != nil {
					if err != io.EOF && ReasonOf(err) == "" {
						t.Fatalf("refusal without a reason: %v", err)
					}
					break
				}
				switch typ {
				case MsgFlows:
					DecodeFlows(p, 1e12)
				case MsgState:
					DecodeState(p)
				case MsgBulkBegin:
					DecodeBulkBegin(p)
				case MsgBulkEnd:
					DecodeBulkEnd(p)
				}
			}
		}
	})
}

// resign cuts data into frames of its own announced lengths and MACs each
// with key and the next sequence number, so the fuzzer reaches the
// payload decoders.
func resign(data, key []byte) []byte {
	var out []byte
	seq := uint64(1)
	for len(data) >= headerLen {
		n := int(binary.BigEndian.Uint32(data[4:]) % 4096)
		if headerLen+n > len(data) {
			n = len(data) - headerLen
		}
		out = append(out, frame(1, MsgType(data[3]), seq, data[headerLen:headerLen+n], key)...)
		seq++
		data = data[headerLen+n:]
	}
	return out
}

// readOnly is a stream to read frames from.
func readOnly(b []byte) io.ReadWriter {
	return struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(b), io.Discard}
}
