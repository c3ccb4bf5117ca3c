// Package apiserver is a mock K3s API server for the xdplb tests, demo and
// benchmarks: TLS on :6443, /readyz that can be switched between 200 and
// 503, /whoami naming the server, and /watch, a never-ending chunked stream
// of heartbeat lines like a Kubernetes watch. It also has the test PKI
// (CA, server and client certificates) and plain TCP echo/discard sinks.
package apiserver

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultHeartbeat is the interval between two heartbeat lines of /watch.
const DefaultHeartbeat = 100 * time.Millisecond

// Heartbeat is one line of the /watch stream (JSON, newline terminated).
type Heartbeat struct {
	// Seq counts the lines of this stream from 0.
	Seq uint64 `json:"seq"`
	// Server is the name of the server sending it.
	Server string `json:"server"`
	// Time is when the server sent it.
	Time time.Time `json:"time"`
}

// Config configures a Server.
type Config struct {
	// Name is what /whoami answers and every heartbeat carries ("server-1").
	Name string
	// Certificate is the server certificate. Nil: an ephemeral one for Name
	// and DefaultSANs, signed by a throw-away CA (clients must then skip
	// verification).
	Certificate *tls.Certificate
	// ClientCAs, if set, makes client certificates signed by these CAs an
	// accepted credential (requested, verified if given).
	ClientCAs *x509.CertPool
	// Token, if set, makes "Authorization: Bearer <Token>" an accepted
	// credential.
	Token string
	// With ClientCAs or Token set, a request without an accepted credential
	// gets 401, as K3s refuses anonymous requests; /readyz too unless
	// PublicReadyz is set.
	PublicReadyz bool
	// Heartbeat is the interval of /watch heartbeats (DefaultHeartbeat if 0).
	// A request may ask for another with ?heartbeat=50ms.
	Heartbeat time.Duration
	// Unready starts the server with /readyz answering 503.
	Unready bool
	// PlainHTTP serves HTTP without TLS (for debugging only).
	PlainHTTP bool
	// Logf, if set, receives one line per notable event.
	Logf func(format string, args ...any)
}

// Server is a mock K3s API server. Create it with New, serve listeners with
// Serve, and end it with Shutdown (graceful), Close (FIN) or Abort (RST).
type Server struct {
	cfg       Config
	tlsConfig *tls.Config
	srv       *http.Server

	ready      atomic.Bool
	stopping   chan struct{} // closed by Shutdown: watch streams end cleanly
	stopOnce   sync.Once
	requests   atomic.Uint64
	watches    atomic.Int64
	watchTotal atomic.Uint64
	unauth     atomic.Uint64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Stats are counters of a Server.
type Stats struct {
	Requests      uint64 // HTTP requests served
	Unauthorized  uint64 // (part of Requests) answered 401
	ActiveWatches int64  // /watch streams open now
	TotalWatches  uint64 // /watch streams opened so far
	Conns         int    // client connections open now
}

// New creates a server; it does not listen yet.
func New(cfg Config) (*Server, error) {
	if cfg.Name == "" {
		return nil, errors.New("apiserver: config needs a Name")
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Heartbeat < time.Millisecond {
		return nil, fmt.Errorf("apiserver: heartbeat %v is below 1ms", cfg.Heartbeat)
	}
	s := &Server{
		cfg:      cfg,
		stopping: make(chan struct{}),
		conns:    make(map[net.Conn]struct{}),
	}
	s.ready.Store(!cfg.Unready)
	if !cfg.PlainHTTP {
		cert := cfg.Certificate
		if cert == nil {
			ca, err := NewCA()
			if err != nil {
				return nil, err
			}
			kp, err := ca.IssueServer(cfg.Name)
			if err != nil {
				return nil, err
			}
			cert = &kp.TLS
		}
		s.tlsConfig = &tls.Config{
			Certificates: []tls.Certificate{*cert},
			MinVersion:   tls.VersionTLS12,
		}
		if cfg.ClientCAs != nil {
			s.tlsConfig.ClientCAs = cfg.ClientCAs
			s.tlsConfig.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         s.tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         s.connState,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	if cfg.Logf != nil {
		s.srv.ErrorLog = log.New(logWriter(cfg.Logf), "", 0)
	}
	return s, nil
}

type logWriter func(string, ...any)

func (f logWriter) Write(p []byte) (int, error) {
	f("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// Name returns the server's name.
func (s *Server) Name() string { return s.cfg.Name }

// Serve serves ln (with TLS unless PlainHTTP) until Shutdown, Close or
// Abort, and then returns nil. It may be called for several listeners.
func (s *Server) Serve(ln net.Listener) error {
	var err error
	if s.cfg.PlainHTTP {
		err = s.srv.Serve(ln)
	} else {
		err = s.srv.ServeTLS(ln, "", "")
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ListenAndServe listens on addr (TCP) and serves it.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("apiserver: listen: %w", err)
	}
	return s.Serve(ln)
}

// SetReady switches /readyz between 200 (true) and 503 (false).
func (s *Server) SetReady(ready bool) {
	if s.ready.Swap(ready) != ready {
		s.logf("apiserver %s: ready=%v", s.cfg.Name, ready)
	}
}

// Ready reports what /readyz answers.
func (s *Server) Ready() bool { return s.ready.Load() }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	conns := len(s.conns)
	s.mu.Unlock()
	return Stats{
		Requests:      s.requests.Load(),
		Unauthorized:  s.unauth.Load(),
		ActiveWatches: s.watches.Load(),
		TotalWatches:  s.watchTotal.Load(),
		Conns:         conns,
	}
}

// Shutdown ends gracefully: it stops accepting, ends every watch stream with
// a proper end of stream, and waits for requests to finish until ctx is done
// (then it closes what is left).
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	return err
}

// Close closes the listeners and every connection at once, with a TLS
// close_notify and a FIN: clients see their stream end (EOF).
func (s *Server) Close() error {
	s.stopOnce.Do(func() { close(s.stopping) })
	return s.srv.Close()
}

// Abort closes the listeners and resets every connection (RST, SO_LINGER 0)
// without a TLS close_notify, as when the server's host fails hard: clients
// see ECONNRESET.
func (s *Server) Abort() error {
	s.mu.Lock()
	for c := range s.conns {
		raw := c
		if tc, ok := c.(*tls.Conn); ok {
			raw = tc.NetConn()
		}
		if tcp, ok := raw.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
		_ = raw.Close()
	}
	s.mu.Unlock()
	s.stopOnce.Do(func() { close(s.stopping) })
	return s.srv.Close()
}

func (s *Server) connState(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch state {
	case http.StateNew:
		s.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// Handler returns the HTTP handler (for use without TLS or under another
// server).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /healthz", s.readyz)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s.cfg.Name+"\n") })
	mux.HandleFunc("GET /watch", s.watch)
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"major":"1","minor":"30","gitVersion":"v1.30.0+xdplb-mock"}`+"\n")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		w.Header().Set("X-Server-Name", s.cfg.Name)
		public := s.cfg.PublicReadyz && (r.URL.Path == "/readyz" || r.URL.Path == "/healthz" || r.URL.Path == "/livez")
		if !public && !s.authorized(r) {
			s.unauth.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`+"\n")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	if s.cfg.Token == "" && s.cfg.ClientCAs == nil {
		return true
	}
	if s.cfg.ClientCAs != nil && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return true
	}
	if s.cfg.Token != "" {
		auth := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(auth, "Bearer ")
		if ok && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Token)) == 1 {
			return true
		}
	}
	return false
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !s.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "[-]xdplb-mock not ready\nreadyz check failed\n")
		return
	}
	io.WriteString(w, "ok")
}

func (s *Server) watch(w http.ResponseWriter, r *http.Request) {
	interval := s.cfg.Heartbeat
	if v := r.URL.Query().Get("heartbeat"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Millisecond {
			http.Error(w, "heartbeat: want a duration of at least 1ms", http.StatusBadRequest)
			return
		}
		interval = d
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	s.watches.Add(1)
	s.watchTotal.Add(1)
	defer s.watches.Add(-1)

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	var seq uint64
	send := func() error {
		if err := enc.Encode(Heartbeat{Seq: seq, Server: s.cfg.Name, Time: time.Now()}); err != nil {
			return err
		}
		flusher.Flush()
		seq++
		return nil
	}
	if send() != nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stopping:
			return
		case <-t.C:
			if send() != nil {
				return
			}
		}
	}
}
