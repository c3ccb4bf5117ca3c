package apiserver

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// SinkMode is what a Sink does with the bytes it receives.
type SinkMode int

const (
	// Echo writes every byte back (for request/response and connection
	// rate benchmarks).
	Echo SinkMode = iota
	// Discard reads and drops everything (for throughput benchmarks).
	Discard
)

func (m SinkMode) String() string {
	switch m {
	case Echo:
		return "echo"
	case Discard:
		return "discard"
	}
	return "unknown"
}

// Sink is a plain TCP server that echoes or discards, for benchmarks through
// the load balancer without TLS in the way.
type Sink struct {
	ln   net.Listener
	mode SinkMode

	accepted atomic.Uint64
	bytes    atomic.Uint64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// SinkStats are counters of a Sink.
type SinkStats struct {
	Accepted uint64 // connections accepted so far
	Active   int    // connections open now
	Bytes    uint64 // bytes received so far
}

// ServeSink serves ln in the background until Close.
func ServeSink(ln net.Listener, mode SinkMode) *Sink {
	s := &Sink{ln: ln, mode: mode, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr is the listener's address.
func (s *Sink) Addr() net.Addr { return s.ln.Addr() }

func (s *Sink) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepted.Add(1)
		go s.handle(c)
	}
}

func (s *Sink) handle(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.bytes.Add(uint64(n))
			if s.mode == Echo {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if err == io.EOF {
				// Half close from the client: finish ours too.
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			return
		}
	}
}

// Stats returns the sink's counters.
func (s *Sink) Stats() SinkStats {
	s.mu.Lock()
	active := len(s.conns)
	s.mu.Unlock()
	return SinkStats{Accepted: s.accepted.Load(), Active: active, Bytes: s.bytes.Load()}
}

// Close stops accepting, closes every connection and waits for the
// goroutines to end.
func (s *Sink) Close() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
