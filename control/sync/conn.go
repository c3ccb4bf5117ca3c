package sync

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"sync"
)

// Role is which end of the TCP connection a node is: the session keys of
// the two directions differ, so a frame cannot be reflected back to its
// sender.
type Role uint8

const (
	Dialer   Role = 1
	Listener Role = 2
)

const nonceLen = 32

// helloLen: versions min and max, role, reserved, nonce.
const helloLen = 4 + nonceLen

// Conn is an authenticated session over a byte stream (TCP): every frame
// carries the next sequence number of its direction and an HMAC-SHA256
// under that direction's session key. Send is safe for concurrent use;
// Recv is for one reader.
type Conn struct {
	rw      io.ReadWriter
	version uint8

	wmu     sync.Mutex
	sendKey []byte
	sendSeq uint64

	recvKey []byte
	recvSeq uint64
	hdr     [headerLen]byte
	mac     [macLen]byte
}

// Version is the frame version the session speaks.
func (c *Conn) Version() uint8 { return c.version }

// Handshake opens a session on rw with the shared key: both ends send a
// hello (the versions they speak, a fresh nonce, their role) under an HMAC
// keyed with the shared key, and derive each direction's key from the
// shared key and both nonces. The first frame each end then sends (its
// state) is the answer to the other's challenge: only a holder of the key
// can MAC it under keys that depend on this session's nonces, and a frame
// recorded from another session does not verify.
//
// Handshake does not set deadlines: the caller bounds it on the
// connection.
func Handshake(rw io.ReadWriter, key []byte, role Role) (*Conn, error) {
	if len(key) < MinKeyLen {
		return nil, errorf(HandshakeFailed, "key of %d characters: want at least %d", len(key), MinKeyLen)
	}
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	hello := make([]byte, helloLen)
	hello[0], hello[1], hello[2] = minVersion, Version, byte(role)
	copy(hello[4:], nonce[:])
	// Both ends write their hello first: write it beside the read, so
	// that an unbuffered stream (net.Pipe) does not deadlock.
	wrote := make(chan error, 1)
	go func() {
		_, err := rw.Write(frame(1, MsgHello, 0, hello, key))
		wrote <- err
	}()
	c := &Conn{rw: rw}
	t, seq, payload, err := c.readFrame(key, 1)
	// Our hello goes out whatever we think of the peer's: the peer then
	// sees this end's key too (and counts a wrong one).
	if werr := <-wrote; err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	switch {
	case t != MsgHello || seq != 0:
		return nil, errorf(Garbage, "first frame is %s #%d, want a hello", t, seq)
	case len(payload) != helloLen:
		return nil, errorf(Garbage, "hello of %d bytes, want %d", len(payload), helloLen)
	}
	peerMin, peerMax, peerRole := payload[0], payload[1], Role(payload[2])
	switch {
	case peerRole != Dialer && peerRole != Listener:
		return nil, errorf(Garbage, "hello role %d", peerRole)
	case peerRole == role:
		return nil, errorf(HandshakeFailed, "the peer says it is the %s too: a node talking to itself?", roleName(role))
	case peerMin > peerMax:
		return nil, errorf(Garbage, "hello versions %d-%d", peerMin, peerMax)
	}
	c.version = min(uint8(Version), peerMax)
	if c.version < max(uint8(minVersion), peerMin) {
		return nil, errorf(BadVersion, "the peer speaks versions %d-%d, this node %d-%d", peerMin, peerMax, minVersion, Version)
	}
	var peerNonce [nonceLen]byte
	copy(peerNonce[:], payload[4:])
	if peerNonce == nonce {
		return nil, errorf(HandshakeFailed, "the peer sent this node's own nonce back")
	}
	dialerNonce, listenerNonce := nonce, peerNonce
	if role == Listener {
		dialerNonce, listenerNonce = peerNonce, nonce
	}
	toListener := sessionKey(key, "dialer>listener", dialerNonce, listenerNonce)
	toDialer := sessionKey(key, "listener>dialer", dialerNonce, listenerNonce)
	if role == Dialer {
		c.sendKey, c.recvKey = toListener, toDialer
	} else {
		c.sendKey, c.recvKey = toDialer, toListener
	}
	return c, nil
}

func roleName(r Role) string {
	if r == Dialer {
		return "dialer"
	}
	return "listener"
}

func sessionKey(key []byte, label string, dialer, listener [nonceLen]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("xdplb flow sync v1 " + label))
	m.Write(dialer[:])
	m.Write(listener[:])
	return m.Sum(nil)
}

// frame builds a frame: header, payload, HMAC of both under key.
func frame(version uint8, t MsgType, seq uint64, payload, key []byte) []byte {
	b := make([]byte, headerLen, headerLen+len(payload)+macLen)
	copy(b, magic[:])
	b[2], b[3] = version, byte(t)
	binary.BigEndian.PutUint32(b[4:], uint32(len(payload)))
	binary.BigEndian.PutUint64(b[8:], seq)
	b = append(b, payload...)
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(b)
}

// Send writes one frame of type t.
func (c *Conn) Send(t MsgType, payload []byte) error {
	if len(payload) > MaxPayload {
		return errorf(Oversized, "payload of %d bytes", len(payload))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.sendSeq++
	_, err := c.rw.Write(frame(c.version, t, c.sendSeq, payload, c.sendKey))
	return err
}

// Recv reads the next frame: its type and payload, once its MAC verified
// and its sequence number is the next one. A frame that fails is an
// *Error with the reason (the session must then be closed); io.EOF is the
// peer closing between frames.
func (c *Conn) Recv() (MsgType, []byte, error) {
	t, seq, payload, err := c.readFrame(c.recvKey, c.version)
	if err != nil {
		return 0, nil, err
	}
	if seq != c.recvSeq+1 {
		return 0, nil, errorf(Replayed, "%s frame #%d, want #%d", t, seq, c.recvSeq+1)
	}
	c.recvSeq = seq
	if t == MsgHello || t == 0 || t > maxMsg {
		return 0, nil, errorf(Garbage, "frame of type %s in a session", t)
	}
	return t, payload, nil
}

// readFrame reads one frame and verifies its MAC under key; version is
// the version the frame must have.
func (c *Conn) readFrame(key []byte, version uint8) (MsgType, uint64, []byte, error) {
	if _, err := io.ReadFull(c.rw, c.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, nil, errorf(Truncated, "stream ended inside a frame header")
		}
		return 0, 0, nil, err
	}
	h := c.hdr[:]
	if h[0] != magic[0] || h[1] != magic[1] {
		return 0, 0, nil, errorf(Garbage, "not a sync frame (starts % x)", h[:4])
	}
	n := binary.BigEndian.Uint32(h[4:])
	if n > MaxPayload {
		return 0, 0, nil, errorf(Oversized, "frame announces %d bytes, at most %d", n, MaxPayload)
	}
	if h[2] != version {
		return 0, 0, nil, errorf(BadVersion, "frame of version %d in a session of version %d", h[2], version)
	}
	t, seq := MsgType(h[3]), binary.BigEndian.Uint64(h[8:])
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.rw, payload); err != nil {
		return 0, 0, nil, truncated(err)
	}
	if _, err := io.ReadFull(c.rw, c.mac[:]); err != nil {
		return 0, 0, nil, truncated(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write(h)
	m.Write(payload)
	if !hmac.Equal(m.Sum(nil), c.mac[:]) {
		return 0, 0, nil, errorf(BadMAC, "%s frame #%d does not verify", t, seq)
	}
	return t, seq, payload, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf(Truncated, "stream ended inside a frame")
	}
	return err
}
