package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/xdplb/xdplb/tests/apiserver"
)

// DefaultHungAfter is how long a stream may go without a heartbeat before it
// counts as hung (ten heartbeats of the mock server's default).
const DefaultHungAfter = time.Second

// Stream states, as reported in StreamReport.State.
const (
	StateConnecting = "connecting" // request sent, no answer yet
	StateOpen       = "open"       // heartbeats arriving
	StateHung       = "hung"       // open, but no heartbeat for more than HungAfter
	// Broken states: the stream ended before Stop.
	StateReset = "reset" // ECONNRESET
	StateEOF   = "eof"   // the server (or something) closed it
	StateError = "error" // anything else: see StreamReport.Error and Class
)

// WatchOptions configure a WatchSet.
type WatchOptions struct {
	// Streams is the number of watch streams, each on its own connection
	// (1 if 0).
	Streams int
	// HungAfter is the silence after which an open stream counts as hung
	// (DefaultHungAfter if 0).
	HungAfter time.Duration
	// Heartbeat, if set, asks the server for this heartbeat interval.
	Heartbeat time.Duration
}

// WatchSet is a group of watch streams opened by StartWatch.
type WatchSet struct {
	opts    WatchOptions
	started time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	streams []*stream

	stopOnce sync.Once
	mu       sync.Mutex
	stopped  time.Time
}

type stream struct {
	id int

	mu            sync.Mutex
	server        string
	local, remote string
	state         string
	class         string
	err           string
	opened        time.Time
	last          time.Time
	brokenAt      time.Time
	heartbeats    uint64
	lastSeq       uint64
	seqErrors     uint64
	maxGap        time.Duration
	stalls        int
}

// StreamReport is the state of one watch stream.
type StreamReport struct {
	ID     int    `json:"id"`
	Server string `json:"server"`
	Local  string `json:"local,omitempty"`
	Remote string `json:"remote,omitempty"`
	// State is one of the State* constants.
	State string `json:"state"`
	// Broken: the stream ended (reset, EOF, error) before Stop.
	Broken bool `json:"broken"`
	// Hung: open but silent for more than HungAfter now.
	Hung bool `json:"hung"`
	// Class is Classify of the error that broke the stream.
	Class string `json:"class,omitempty"`
	Error string `json:"error,omitempty"`
	// Heartbeats received and the sequence number of the last one.
	Heartbeats uint64 `json:"heartbeats"`
	LastSeq    uint64 `json:"last_seq"`
	// SeqErrors counts heartbeats whose sequence number was not the
	// previous one plus one (must stay 0 on a TCP stream).
	SeqErrors     uint64     `json:"seq_errors"`
	Opened        *time.Time `json:"opened,omitempty"`
	LastHeartbeat *time.Time `json:"last_heartbeat,omitempty"`
	BrokenAt      *time.Time `json:"broken_at,omitempty"`
	// MaxGap is the longest time without a heartbeat, including the
	// silence before a break and, for an open stream, the current one.
	MaxGap   time.Duration `json:"-"`
	MaxGapMS float64       `json:"max_gap_ms"`
	// Stalls counts silences longer than HungAfter that ended with a
	// heartbeat (the stream recovered).
	Stalls int `json:"stalls"`
}

// WatchReport summarises a WatchSet.
type WatchReport struct {
	Streams int `json:"streams"`
	// Open streams are alive and not hung; Hung are alive but silent.
	Open int `json:"open"`
	Hung int `json:"hung"`
	// Broken = Reset + EOF + Errors (including never connected).
	Broken int `json:"broken"`
	Reset  int `json:"reset"`
	EOF    int `json:"eof"`
	Errors int `json:"errors"`
	// Stalled counts streams that recovered from a silence > HungAfter.
	Stalled int `json:"stalled"`
	// MaxGap is the largest StreamReport.MaxGap.
	MaxGap   time.Duration `json:"-"`
	MaxGapMS float64       `json:"max_gap_ms"`
	// PerServer counts streams by the server they were attached to.
	PerServer   map[string]int `json:"per_server"`
	HungAfterMS float64        `json:"hung_after_ms"`
	ElapsedMS   float64        `json:"elapsed_ms"`
	Details     []StreamReport `json:"details"`
}

// StartWatch opens opts.Streams watch streams to rawURL's /watch, each on its
// own TLS connection, and returns once each has received its first
// heartbeat or failed (at most Client.Timeout). Streams that failed are in
// the report as broken; StartWatch only fails on bad arguments. The streams
// run until Stop or ctx is done.
func (c *Client) StartWatch(ctx context.Context, rawURL string, opts WatchOptions) (*WatchSet, error) {
	if opts.Streams <= 0 {
		opts.Streams = 1
	}
	if opts.HungAfter <= 0 {
		opts.HungAfter = DefaultHungAfter
	}
	u, err := endpoint(rawURL, "/watch")
	if err != nil {
		return nil, err
	}
	if opts.Heartbeat > 0 {
		pu, _ := url.Parse(u)
		q := pu.Query()
		q.Set("heartbeat", opts.Heartbeat.String())
		pu.RawQuery = q.Encode()
		u = pu.String()
	}
	ctx, cancel := context.WithCancel(ctx)
	ws := &WatchSet{opts: opts, started: time.Now(), cancel: cancel}
	ready := make(chan struct{}, opts.Streams)
	for i := range opts.Streams {
		s := &stream{id: i, state: StateConnecting}
		ws.streams = append(ws.streams, s)
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			c.runStream(ctx, u, s, opts.HungAfter, ready)
		}()
	}
	for range opts.Streams {
		select {
		case <-ready:
		case <-ctx.Done():
			return ws, nil
		}
	}
	return ws, nil
}

func (c *Client) runStream(ctx context.Context, u string, s *stream, hungAfter time.Duration, ready chan<- struct{}) {
	signalled := false
	signal := func() {
		if !signalled {
			signalled = true
			ready <- struct{}{}
		}
	}
	defer signal()

	tr := c.transport()
	defer tr.CloseIdleConnections()
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			s.mu.Lock()
			s.local, s.remote = info.Conn.LocalAddr().String(), info.Conn.RemoteAddr().String()
			s.mu.Unlock()
		},
	}
	req, err := c.newRequest(httptrace.WithClientTrace(ctx, trace), u, "/watch")
	if err != nil {
		s.fail(ctx, err)
		return
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		s.fail(ctx, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.fail(ctx, &StatusError{Code: resp.StatusCode, Body: resp.Status})
		return
	}
	s.mu.Lock()
	now := time.Now()
	s.opened, s.last, s.state = now, now, StateOpen
	s.server = resp.Header.Get("X-Server-Name")
	s.mu.Unlock()

	r := bufio.NewReaderSize(resp.Body, 4096)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				err = fmt.Errorf("heartbeat line longer than %d bytes", r.Size())
			}
			s.fail(ctx, err)
			return
		}
		var hb apiserver.Heartbeat
		if err := json.Unmarshal(line, &hb); err != nil {
			s.fail(ctx, fmt.Errorf("bad heartbeat %q: %w", line, err))
			return
		}
		now := time.Now()
		s.mu.Lock()
		gap := now.Sub(s.last)
		s.maxGap = max(s.maxGap, gap)
		if s.heartbeats > 0 {
			if gap > hungAfter {
				s.stalls++
			}
			if hb.Seq != s.lastSeq+1 {
				s.seqErrors++
			}
		}
		s.last = now
		s.heartbeats++
		s.lastSeq = hb.Seq
		if hb.Server != "" {
			s.server = hb.Server
		}
		s.mu.Unlock()
		signal()
	}
}

// fail records why a stream ended. A stream ended by Stop (ctx canceled)
// keeps its state: it was fine until we stopped it.
func (s *stream) fail(ctx context.Context, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		if s.state == StateConnecting {
			s.state, s.class, s.err = StateError, ClassCanceled, "stopped before the stream opened"
			s.brokenAt = time.Now()
		}
		return
	}
	now := time.Now()
	s.brokenAt = now
	s.class = Classify(err)
	s.err = err.Error()
	switch s.class {
	case ClassReset:
		s.state = StateReset
	case ClassEOF:
		s.state = StateEOF
	default:
		s.state = StateError
	}
	if !s.last.IsZero() {
		s.maxGap = max(s.maxGap, now.Sub(s.last))
	}
}

// Report returns the state of every stream now.
func (ws *WatchSet) Report() WatchReport {
	ws.mu.Lock()
	at := ws.stopped
	ws.mu.Unlock()
	if at.IsZero() {
		at = time.Now()
	}
	rep := WatchReport{
		Streams:     len(ws.streams),
		PerServer:   map[string]int{},
		HungAfterMS: ms(ws.opts.HungAfter),
		ElapsedMS:   ms(at.Sub(ws.started)),
	}
	for _, s := range ws.streams {
		sr := s.report(at, ws.opts.HungAfter)
		switch {
		case sr.Hung:
			rep.Hung++
		case sr.State == StateOpen:
			rep.Open++
		case sr.State == StateReset:
			rep.Reset++
		case sr.State == StateEOF:
			rep.EOF++
		case sr.State == StateError:
			rep.Errors++
		}
		if sr.Broken {
			rep.Broken++
		}
		if sr.Stalls > 0 {
			rep.Stalled++
		}
		if sr.Server != "" {
			rep.PerServer[sr.Server]++
		}
		rep.MaxGap = max(rep.MaxGap, sr.MaxGap)
		rep.Details = append(rep.Details, sr)
	}
	rep.MaxGapMS = ms(rep.MaxGap)
	sort.Slice(rep.Details, func(i, j int) bool { return rep.Details[i].ID < rep.Details[j].ID })
	return rep
}

func (s *stream) report(at time.Time, hungAfter time.Duration) StreamReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	sr := StreamReport{
		ID: s.id, Server: s.server, Local: s.local, Remote: s.remote,
		State: s.state, Class: s.class, Error: s.err,
		Heartbeats: s.heartbeats, LastSeq: s.lastSeq, SeqErrors: s.seqErrors,
		MaxGap: s.maxGap, Stalls: s.stalls,
	}
	if !s.opened.IsZero() {
		t := s.opened
		sr.Opened = &t
	}
	if s.heartbeats > 0 {
		t := s.last
		sr.LastHeartbeat = &t
	}
	if !s.brokenAt.IsZero() {
		t := s.brokenAt
		sr.BrokenAt = &t
	}
	switch s.state {
	case StateReset, StateEOF, StateError:
		sr.Broken = true
	case StateOpen:
		if cur := at.Sub(s.last); cur > 0 {
			sr.MaxGap = max(sr.MaxGap, cur)
			if cur > hungAfter {
				sr.Hung = true
				sr.State = StateHung
			}
		}
	}
	sr.MaxGapMS = ms(sr.MaxGap)
	return sr
}

// Stop ends every stream and returns the final report, taken as of the
// moment Stop was called (streams open then count as open, not broken).
func (ws *WatchSet) Stop() WatchReport {
	ws.stopOnce.Do(func() {
		ws.mu.Lock()
		ws.stopped = time.Now()
		ws.mu.Unlock()
		ws.cancel()
		ws.wg.Wait()
	})
	return ws.Report()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
