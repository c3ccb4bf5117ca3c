package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/xdplb/xdplb/bpf"
	flowsync "github.com/xdplb/xdplb/control/sync"
)

// session is one authenticated session with the peer.
type session struct {
	conn net.Conn
	c    *flowsync.Conn
	done chan struct{}
	once sync.Once
}

func (se *session) close() {
	se.once.Do(func() {
		close(se.done)
		se.conn.Close()
	})
}

// accept takes the peer's connections until ctx ends: one from another
// address is closed at once and counted (not_peer); the peer's is
// authenticated and becomes the session.
func (s *syncer) accept(ctx context.Context) {
	go func() {
		<-ctx.Done()
		s.p.listener.Close()
	}()
	var delay time.Duration
	for {
		conn, err := s.p.listener.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		from, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
		if from.Addr().Unmap() != s.p.peer.Addr() {
			s.count.Drop(flowsync.NotPeer)
			if s.warn.allow() {
				s.log.Warn("sync connection from an address that is not the peer's: closed", "from", from.String(), "peer", s.p.peer.Addr().String())
			}
			conn.Close()
			continue
		}
		go s.open(ctx, conn, flowsync.Listener)
	}
}

// dialLoop keeps a session with the peer open, dialing it whenever there
// is none (this node has the lower address), until ctx ends.
func (s *syncer) dialLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if s.current() == nil {
			dctx, cancel := context.WithTimeout(ctx, syncHandshakeTimeout)
			conn, err := s.p.dial(dctx)
			cancel()
			if err == nil {
				s.open(ctx, conn, flowsync.Dialer)
				backoff = 100 * time.Millisecond
			} else {
				s.setErr(fmt.Sprintf("dial the peer %s: %v", s.p.peer, err))
				backoff = min(2*backoff, syncDialBackoff)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

func (s *syncer) current() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sess
}

func (s *syncer) setErr(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = msg
}

// open authenticates a connection and runs the session on it until it
// ends; a new session replaces an older one (the peer restarted, or the
// old one died silently).
func (s *syncer) open(ctx context.Context, conn net.Conn, role flowsync.Role) {
	conn.SetDeadline(time.Now().Add(syncHandshakeTimeout))
	c, err := flowsync.Handshake(conn, s.p.key, role)
	if err == nil {
		err = c.Send(flowsync.MsgState, flowsync.EncodeState(s.nodeState()))
	}
	var peer flowsync.NodeState
	if err == nil {
		peer, err = s.readState(c)
	}
	if err != nil {
		conn.Close()
		s.sessionFailed("open a sync session", conn, err)
		return
	}
	conn.SetDeadline(time.Time{})
	se := &session{conn: conn, c: c, done: make(chan struct{})}
	s.mu.Lock()
	old := s.sess
	s.sess = se
	s.sessions++
	s.peerState = peer
	s.lastErr = ""
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	s.log.Info("sync session open", "peer", conn.RemoteAddr().String(), "role", roleString(role),
		"peer_holds_vip", peer.HoldsVIP, "this_node_holds_vip", s.holds.Load(), "version", c.Version())
	s.gate.SessionUp()
	s.setState(syncResyncing)
	s.serve(ctx, se)
}

func roleString(r flowsync.Role) string {
	if r == flowsync.Dialer {
		return "dialer"
	}
	return "listener"
}

// readState reads the peer's first frame, its state, and refuses a peer
// configured for another frontend or SNAT range.
func (s *syncer) readState(c *flowsync.Conn) (flowsync.NodeState, error) {
	t, p, err := c.Recv()
	if err != nil {
		return flowsync.NodeState{}, err
	}
	if t != flowsync.MsgState {
		return flowsync.NodeState{}, &flowsync.Error{Reason: flowsync.Garbage, Err: fmt.Errorf("first frame is %s, want state", t)}
	}
	peer, err := flowsync.DecodeState(p)
	if err != nil {
		return peer, err
	}
	own := s.nodeState()
	if peer.Frontend != own.Frontend || peer.SNATLo != own.SNATLo || peer.SNATHi != own.SNATHi {
		return peer, &flowsync.Error{Reason: flowsync.HandshakeFailed, Err: fmt.Errorf(
			"the peer balances frontend %s with SNAT ports %d-%d, this node %s with %d-%d: give both LBs the same vip, port and snat-ports",
			peer.Frontend, peer.SNATLo, peer.SNATHi, own.Frontend, own.SNATLo, own.SNATHi)}
	}
	return peer, nil
}

func (s *syncer) nodeState() flowsync.NodeState {
	n := s.d.node.data
	return flowsync.NodeState{HoldsVIP: s.holds.Load(), Stopping: s.stopping.Load(), Frontend: n.Frontend, SNATLo: n.SNATLo, SNATHi: n.SNATHi}
}

// sessionFailed counts and logs a session that failed, by reason.
func (s *syncer) sessionFailed(what string, conn net.Conn, err error) {
	if r := flowsync.ReasonOf(err); r != "" {
		s.count.Drop(r)
	}
	msg := fmt.Sprintf("%s with %s: %v", what, conn.RemoteAddr(), err)
	s.setErr(msg)
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		s.log.Debug(msg)
		return
	}
	if s.warn.allow() {
		s.log.Warn(what, "peer", conn.RemoteAddr().String(), "err", err)
	}
}

// serve runs a session: this node's bulk then its changes go out, the
// peer's come in, until either side fails or ctx ends.
func (s *syncer) serve(ctx context.Context, se *session) {
	go func() {
		select {
		case <-ctx.Done():
		case <-se.done:
		}
		se.close()
	}()
	go func() {
		if err := s.send(se); err != nil {
			select {
			case <-se.done:
			default:
				s.sessionFailed("send to the peer", se.conn, err)
			}
		}
		se.close()
	}()
	err := s.receive(se)
	select {
	case <-se.done:
	default:
		s.sessionFailed("sync session", se.conn, err)
	}
	se.close()
	s.mu.Lock()
	current := s.sess == se
	if current {
		s.sess = nil
	}
	s.mu.Unlock()
	if current {
		s.gate.SessionDown(time.Now())
		s.setState(syncDisconnected)
		s.log.Info("sync session closed", "peer", se.conn.RemoteAddr().String())
	}
}

// sendFrame writes one frame within syncWriteTimeout, and counts it.
func (s *syncer) sendFrame(se *session, t flowsync.MsgType, payload []byte) error {
	se.conn.SetWriteDeadline(time.Now().Add(syncWriteTimeout))
	if err := se.c.Send(t, payload); err != nil {
		return err
	}
	s.count.Add("messages_sent", 1)
	s.count.Add("bytes_sent", uint64(len(payload)))
	return nil
}

// send sends this node's bulk (its whole table if it holds the VIP,
// else an empty one), then its changes as they come, and a ping when
// there is nothing else to say.
func (s *syncer) send(se *session) error {
	if err := s.sendBulk(se); err != nil {
		return err
	}
	ping := time.NewTicker(syncPing)
	defer ping.Stop()
	lastSent := time.Now()
	for {
		select {
		case <-se.done:
			return nil
		case <-s.wake:
		case <-ping.C:
		}
		if s.needFull.Swap(false) && s.holds.Load() {
			if err := s.sendBulk(se); err != nil {
				return err
			}
		}
		if s.out.Overflowed() && s.holds.Load() {
			if err := s.sendBulk(se); err != nil {
				return err
			}
		}
		for {
			rs, since := s.out.Take(flowsync.RecordsPerFrame)
			if len(rs) == 0 {
				break
			}
			if err := s.sendRecords(se, rs); err != nil {
				return err
			}
			now := time.Now()
			for _, t := range since {
				s.lags.Add(now.Sub(t))
			}
			lastSent = now
		}
		if time.Since(lastSent) >= syncPing {
			if err := s.sendFrame(se, flowsync.MsgPing, nil); err != nil {
				return err
			}
			lastSent = time.Now()
		}
	}
}

func (s *syncer) sendRecords(se *session, rs []flowsync.Record) error {
	if err := s.sendFrame(se, flowsync.MsgFlows, flowsync.EncodeFlows(rs, s.d.parts.now())); err != nil {
		return err
	}
	s.count.Add("flows_sent", uint64(len(rs)))
	return nil
}

// sendBulk sends this node's whole table if it holds the VIP (the peer
// then holds exactly what this node forwards), else an empty bulk: a node
// that does not forward has nothing the peer must have.
func (s *syncer) sendBulk(se *session) error {
	full := s.holds.Load()
	if err := s.sendFrame(se, flowsync.MsgBulkBegin, flowsync.EncodeBulkBegin(full)); err != nil {
		return err
	}
	var n uint32
	if full {
		// The bulk carries what the queue holds, and newer.
		s.out.Clear()
		type entry struct {
			k bpf.FlowKey
			f bpf.Flow
		}
		var conns []entry
		err := s.dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
			if t == bpf.TableEstablished && f.Dir == uint8(bpf.FlowToBackend) {
				conns = append(conns, entry{k, f})
			}
		})
		if err != nil {
			return fmt.Errorf("read the connection table for a bulk: %w", err)
		}
		batch := make([]flowsync.Record, 0, flowsync.RecordsPerFrame)
		for _, e := range conns {
			var reply *bpf.Flow
			if rf, ok, err := s.dp.LookupFlow(bpf.TableEstablished, e.f.Twin()); err == nil && ok {
				reply = &rf
			}
			r, ok := flowsync.FromEntries(e.k, e.f, reply)
			if !ok {
				continue
			}
			batch = append(batch, r)
			if len(batch) == cap(batch) {
				if err := s.sendRecords(se, batch); err != nil {
					return err
				}
				n += uint32(len(batch))
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			if err := s.sendRecords(se, batch); err != nil {
				return err
			}
			n += uint32(len(batch))
		}
		s.count.Add("bulks_sent", 1)
	}
	return s.sendFrame(se, flowsync.MsgBulkEnd, flowsync.EncodeBulkEnd(n))
}

// receive reads the peer's frames until the session fails: its
// connections are installed, its bulks end the resync.
func (s *syncer) receive(se *session) error {
	var (
		inBulk, full bool
		seen         map[bpf.FlowKey]struct{}
		began        uint64
		beganAt      time.Time
		records      uint64
	)
	for {
		se.conn.SetReadDeadline(time.Now().Add(syncReadTimeout))
		t, p, err := se.c.Recv()
		if err != nil {
			return err
		}
		s.count.Add("messages_received", 1)
		s.count.Add("bytes_received", uint64(len(p)))
		switch t {
		case flowsync.MsgFlows:
			rs, bad, err := flowsync.DecodeFlows(p, s.d.parts.now())
			if err != nil {
				return err
			}
			s.count.Add("flows_received", uint64(len(rs)))
			for i, r := range rs {
				if bad[i] != nil {
					s.drop(bad[i])
					continue
				}
				s.install(r, seen)
			}
			if inBulk {
				records += uint64(len(rs))
			}
		case flowsync.MsgBulkBegin:
			if full, err = flowsync.DecodeBulkBegin(p); err != nil {
				return err
			}
			inBulk, records, began, beganAt = true, 0, s.d.parts.now(), time.Now()
			seen = nil
			if full {
				seen = map[bpf.FlowKey]struct{}{}
			}
		case flowsync.MsgBulkEnd:
			if _, err := flowsync.DecodeBulkEnd(p); err != nil {
				return err
			}
			if !inBulk {
				return &flowsync.Error{Reason: flowsync.Garbage, Err: errors.New("bulk-end without a bulk")}
			}
			swept := 0
			if full && !s.holds.Load() {
				swept = s.sweep(seen, began)
			}
			info := resyncInfo{At: time.Now(), Took: time.Since(beganAt), Records: records, Full: full, Swept: swept, Complete: true}
			s.mu.Lock()
			s.lastResync = info
			s.mu.Unlock()
			s.count.Add("bulks_received", 1)
			s.gate.Resynced(time.Now())
			s.setState(syncInSync)
			s.log.Info("bulk resync from the peer done", "connections", records, "full_table", full,
				"took", info.Took.Round(time.Millisecond), "stale_removed", swept)
			inBulk, seen = false, nil
		case flowsync.MsgState:
			st, err := flowsync.DecodeState(p)
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.peerState = st
			s.mu.Unlock()
		case flowsync.MsgPing:
		}
	}
}
