package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/apiserver"
)

type server struct {
	srv  *apiserver.Server
	url  string
	addr string
}

var (
	caOnce sync.Once
	testCA *apiserver.CA
	srvKP  *apiserver.KeyPair
)

func pki(t *testing.T) (*apiserver.CA, *apiserver.KeyPair) {
	t.Helper()
	caOnce.Do(func() {
		var err error
		if testCA, err = apiserver.NewCA(); err != nil {
			panic(err)
		}
		if srvKP, err = testCA.IssueServer("server"); err != nil {
			panic(err)
		}
	})
	return testCA, srvKP
}

// startServer serves a mock API server on 127.0.0.1; the test's cleanup
// closes it.
func startServer(t *testing.T, cfg apiserver.Config) *server {
	t.Helper()
	_, kp := pki(t)
	cfg.Certificate = &kp.TLS
	srv, err := apiserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &server{srv: srv, addr: ln.Addr().String(), url: "https://" + ln.Addr().String()}
}

func client(t *testing.T) *Client {
	ca, _ := pki(t)
	return &Client{TLS: &tls.Config{RootCAs: ca.Pool()}, Timeout: 3 * time.Second}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestWhoami(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "server-1"})
	name, err := client(t).Whoami(ctxT(t, 5*time.Second), s.url)
	if err != nil || name != "server-1" {
		t.Fatalf("Whoami = %q, %v", name, err)
	}
	ca, _ := pki(t)
	if name, err := Whoami(ctxT(t, 5*time.Second), s.url+"/whoami", &tls.Config{RootCAs: ca.Pool()}); err != nil || name != "server-1" {
		t.Errorf("package Whoami = %q, %v", name, err)
	}
	// Unverifiable certificate.
	if _, err := Whoami(ctxT(t, 5*time.Second), s.url, &tls.Config{}); Classify(err) != ClassTLS {
		t.Errorf("without the CA: %v (class %s), want a TLS error", err, Classify(err))
	}
	if err := client(t).Readyz(ctxT(t, 5*time.Second), s.url); err != nil {
		t.Errorf("Readyz: %v", err)
	}
	s.srv.SetReady(false)
	if err := client(t).Readyz(ctxT(t, 5*time.Second), s.url); Classify(err) != "http-503" {
		t.Errorf("Readyz when unready: %v, want HTTP 503", err)
	}
}

func TestWhoamiNewConnectionEachTime(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "server-1"})
	c := client(t)
	res, err := c.Balance(ctxT(t, 10*time.Second), s.url, 20, 4)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counts["server-1"] != 20 || res.Failures != 0 || res.Requests != 20 {
		t.Fatalf("Balance = %+v", res)
	}
	// Each request had its own TCP connection; all are closed again.
	deadline := time.Now().Add(2 * time.Second)
	for s.srv.Stats().Conns != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.srv.Stats(); st.Conns != 0 || st.Requests != 20 {
		t.Errorf("server stats after Balance: %+v", st)
	}
	var conns atomic.Int32
	c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	if _, err := c.Balance(ctxT(t, 10*time.Second), s.url, 7, 2); err != nil {
		t.Fatal(err)
	}
	if conns.Load() != 7 {
		t.Errorf("7 requests opened %d connections, want 7", conns.Load())
	}
}

func TestBalanceFailures(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "server-1", Token: "tok"})
	c := client(t)
	res, err := c.Balance(ctxT(t, 10*time.Second), s.url, 5, 5)
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures != 5 || res.Errors["http-401"] != 5 || len(res.Counts) != 0 {
		t.Errorf("without token: %+v, want 5 × http-401", res)
	}
	c.Token = "tok"
	if res, _ := c.Balance(ctxT(t, 10*time.Second), s.url, 5, 5); res.Counts["server-1"] != 5 {
		t.Errorf("with token: %+v", res)
	}

	// Nothing listening: refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "https://" + ln.Addr().String()
	ln.Close()
	res, err = c.Balance(ctxT(t, 10*time.Second), dead, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Failures != 3 || res.Errors[ClassRefused] != 3 || res.FirstError == "" {
		t.Errorf("against a closed port: %+v, want 3 refused", res)
	}

	if _, err := c.Balance(context.Background(), s.url, 0, 1); err == nil {
		t.Error("n=0 accepted")
	}
	if _, err := c.Balance(context.Background(), "ftp://x", 1, 1); err == nil {
		t.Error("ftp URL accepted")
	}
	// A canceled context stops early; what was not made is not counted.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, _ = c.Balance(ctx, s.url, 1000, 1)
	if res.Requests > 1 {
		t.Errorf("canceled Balance made %d requests", res.Requests)
	}
}

func TestWatchHealthy(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "server-1", Heartbeat: 10 * time.Millisecond})
	ws, err := client(t).StartWatch(ctxT(t, 10*time.Second), s.url, WatchOptions{Streams: 5, HungAfter: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.srv.Stats(); st.ActiveWatches != 5 {
		t.Errorf("server has %d watches after StartWatch returned, want 5", st.ActiveWatches)
	}
	time.Sleep(300 * time.Millisecond)
	rep := ws.Stop()
	if rep.Streams != 5 || rep.Open != 5 || rep.Broken != 0 || rep.Hung != 0 || rep.PerServer["server-1"] != 5 {
		t.Fatalf("report %+v", rep)
	}
	for _, d := range rep.Details {
		if d.Heartbeats < 10 || d.SeqErrors != 0 || d.State != StateOpen || d.Local == "" || d.Remote != s.addr {
			t.Errorf("stream %+v", d)
		}
		if d.MaxGap > 150*time.Millisecond {
			t.Errorf("stream %d: max gap %v with 10ms heartbeats", d.ID, d.MaxGap)
		}
	}
	// Stop ended every stream on the server too.
	deadline := time.Now().Add(2 * time.Second)
	for s.srv.Stats().ActiveWatches != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := s.srv.Stats().ActiveWatches; n != 0 {
		t.Errorf("%d watches still open on the server after Stop", n)
	}
	// Stop is idempotent and the report stays the same.
	if rep2 := ws.Stop(); rep2.Open != 5 || rep2.ElapsedMS != rep.ElapsedMS {
		t.Errorf("second Stop: %+v", rep2)
	}
}

func TestWatchHeartbeatOption(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "s", Heartbeat: time.Hour})
	ws, err := client(t).StartWatch(ctxT(t, 10*time.Second), s.url, WatchOptions{Heartbeat: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	rep := ws.Stop()
	if rep.Details[0].Heartbeats < 10 {
		t.Errorf("asked for 10ms heartbeats, got %d in 200ms", rep.Details[0].Heartbeats)
	}
}

func TestWatchBrokenByServer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stop  func(*apiserver.Server)
		state string
	}{
		{"abort", func(s *apiserver.Server) { s.Abort() }, StateReset},
		{"close", func(s *apiserver.Server) { s.Close() }, StateEOF},
		{"shutdown", func(s *apiserver.Server) { s.Shutdown(context.Background()) }, StateEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, apiserver.Config{Name: "server-2", Heartbeat: 10 * time.Millisecond})
			ws, err := client(t).StartWatch(ctxT(t, 10*time.Second), s.url, WatchOptions{Streams: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Stop()
			time.Sleep(50 * time.Millisecond)
			before := time.Now()
			tc.stop(s.srv)
			rep := waitReport(t, ws, func(r WatchReport) bool { return r.Broken == 3 })
			for _, d := range rep.Details {
				if d.State != tc.state || !d.Broken || d.BrokenAt == nil || d.BrokenAt.Before(before) || d.Server != "server-2" {
					t.Errorf("stream %d: %+v, want state %s", d.ID, d, tc.state)
				}
			}
			if tc.state == StateReset && rep.Reset != 3 {
				t.Errorf("Reset = %d", rep.Reset)
			}
			if tc.state == StateEOF && rep.EOF != 3 {
				t.Errorf("EOF = %d", rep.EOF)
			}
		})
	}
}

func waitReport(t *testing.T, ws *WatchSet, ok func(WatchReport) bool) WatchReport {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep := ws.Report()
		if ok(rep) {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("report never reached the expected state: %+v", rep)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freezeProxy forwards TCP to target; while frozen it forwards nothing (the
// connections stay open), like a path through a dead load balancer.
type freezeProxy struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
	return p
}

func (p *freezeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			time.Sleep(time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func TestWatchHungAndRecovered(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "server-3", Heartbeat: 10 * time.Millisecond})
	p := newFreezeProxy(t, s.addr)
	ws, err := client(t).StartWatch(ctxT(t, 10*time.Second), "https://"+p.ln.Addr().String(), WatchOptions{Streams: 2, HungAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Stop()
	time.Sleep(50 * time.Millisecond)

	p.frozen.Store(true)
	rep := waitReport(t, ws, func(r WatchReport) bool { return r.Hung == 2 })
	for _, d := range rep.Details {
		if d.State != StateHung || !d.Hung || d.Broken {
			t.Errorf("frozen stream %+v, want hung and not broken", d)
		}
	}
	time.Sleep(200 * time.Millisecond)
	p.frozen.Store(false)

	rep = waitReport(t, ws, func(r WatchReport) bool { return r.Open == 2 })
	if rep.Hung != 0 || rep.Broken != 0 || rep.Stalled != 2 {
		t.Errorf("after unfreezing: %+v, want 2 open, 2 stalled", rep)
	}
	if rep.MaxGap < 250*time.Millisecond {
		t.Errorf("max gap %v, want at least the ~300ms freeze", rep.MaxGap)
	}
	for _, d := range rep.Details {
		if d.Stalls != 1 || d.SeqErrors != 0 {
			t.Errorf("stream %d: stalls %d seq errors %d", d.ID, d.Stalls, d.SeqErrors)
		}
	}
}

func TestWatchFailures(t *testing.T) {
	s := startServer(t, apiserver.Config{Name: "s", Token: "tok"})
	ws, err := client(t).StartWatch(ctxT(t, 10*time.Second), s.url, WatchOptions{Streams: 2})
	if err != nil {
		t.Fatal(err)
	}
	rep := ws.Stop()
	if rep.Broken != 2 || rep.Errors != 2 || rep.Details[0].Class != "http-401" {
		t.Errorf("without token: %+v, want 2 broken with http-401", rep)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "https://" + ln.Addr().String()
	ln.Close()
	ws, err = client(t).StartWatch(ctxT(t, 10*time.Second), dead, WatchOptions{Streams: 1})
	if err != nil {
		t.Fatal(err)
	}
	rep = ws.Stop()
	if rep.Broken != 1 || rep.Details[0].Class != ClassRefused {
		t.Errorf("against a closed port: %+v, want refused", rep)
	}
	if _, err := client(t).StartWatch(context.Background(), "::bad", WatchOptions{}); err == nil {
		t.Error("bad URL accepted")
	}
}

// A real mockapi process killed with SIGKILL mid-stream: its kernel closes
// the sockets, the streams end (EOF, or reset if data was unread).
func TestWatchServerProcessKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tests/cmd/mockapi")
	}
	bin := buildMockapi(t)
	dir := t.TempDir()
	p, err := apiserver.WritePKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	proc, addr := startMockapi(t, bin, "--listen", "127.0.0.1:0", "--name", "server-1",
		"--cert", p.ServerCert, "--key", p.ServerKey, "--heartbeat", "10ms")
	c := &Client{TLS: &tls.Config{RootCAs: p.CA.Pool()}}
	url := "https://" + addr
	ws, err := c.StartWatch(ctxT(t, 10*time.Second), url, WatchOptions{Streams: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Stop()
	if rep := ws.Report(); rep.Open != 4 {
		t.Fatalf("before the kill: %+v", rep)
	}
	if err := proc.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	rep := waitReport(t, ws, func(r WatchReport) bool { return r.Broken == 4 })
	if rep.Reset+rep.EOF != 4 {
		t.Errorf("after SIGKILL: %+v, want every stream reset or EOF", rep)
	}
	t.Logf("after SIGKILL: reset=%d eof=%d", rep.Reset, rep.EOF)
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ClassOK},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, ClassReset},
		{fmt.Errorf("get: %w", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), ClassRefused},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, ClassUnreachable},
		{io.ErrUnexpectedEOF, ClassEOF},
		{fmt.Errorf("x: %w", io.EOF), ClassEOF},
		{context.DeadlineExceeded, ClassTimeout},
		{os.ErrDeadlineExceeded, ClassTimeout},
		{context.Canceled, ClassCanceled},
		{syscall.EPIPE, ClassPipe},
		{&StatusError{Code: 401}, "http-401"},
		{tls.AlertError(42), ClassTLS},
		{errors.New("something"), ClassError},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Summary().Count != 0 {
		t.Error("empty histogram not zero")
	}
	r := rand.New(rand.NewPCG(1, 2))
	var samples []time.Duration
	var parts [4]Histogram
	for i := range 100000 {
		d := time.Duration(r.ExpFloat64() * float64(200*time.Microsecond))
		samples = append(samples, d)
		parts[i%4].Record(d)
	}
	for i := range parts {
		h.Merge(&parts[i])
	}
	slices.Sort(samples)
	if h.Count() != uint64(len(samples)) {
		t.Fatalf("count %d", h.Count())
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if diff := float64(got-want) / float64(want); diff > 0.035 || diff < -0.035 {
			t.Errorf("p%v = %v, want %v (±3.5%%)", q*100, got, want)
		}
	}
	if h.Quantile(1) != samples[len(samples)-1] {
		t.Errorf("max %v, want %v", h.Quantile(1), samples[len(samples)-1])
	}
	// Exact for tiny values; monotonic bucket mapping everywhere.
	for v := uint64(0); v < 64; v++ {
		if histValue(histIndex(v)) != v {
			t.Errorf("value %d not exact", v)
		}
	}
	prev := -1
	for v := uint64(1); v < 1<<62; v = v*3/2 + 1 {
		i := histIndex(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("index of %d = %d (prev %d)", v, i, prev)
		}
		prev = i
	}
}

func TestLoads(t *testing.T) {
	echoLn, _ := net.Listen("tcp", "127.0.0.1:0")
	echo := apiserver.ServeSink(echoLn, apiserver.Echo)
	defer echo.Close()
	discardLn, _ := net.Listen("tcp", "127.0.0.1:0")
	discard := apiserver.ServeSink(discardLn, apiserver.Discard)
	defer discard.Close()

	t.Run("rr by count", func(t *testing.T) {
		res, err := RR(context.Background(), LoadOptions{Addr: echo.Addr().String(), Concurrency: 2, N: 500})
		if err != nil {
			t.Fatal(err)
		}
		if res.Ops != 500 || res.Failures != 0 || res.Latency.Count != 500 || res.Latency.P50US <= 0 || res.OpsPerSec <= 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("rr by duration", func(t *testing.T) {
		start := time.Now()
		res, err := RR(context.Background(), LoadOptions{Addr: echo.Addr().String(), Duration: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a 200ms run took %v", d)
		}
		if res.Ops == 0 || res.Failures != 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("connrate", func(t *testing.T) {
		before := echo.Stats().Accepted
		res, err := ConnRate(context.Background(), LoadOptions{Addr: echo.Addr().String(), Concurrency: 4, N: 200, ResetClose: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.Ops != 200 || res.Failures != 0 {
			t.Errorf("%+v", res)
		}
		if got := echo.Stats().Accepted - before; got != 200 {
			t.Errorf("sink accepted %d connections, want 200", got)
		}
	})
	t.Run("bulk", func(t *testing.T) {
		before := discard.Stats().Bytes
		res, err := Bulk(context.Background(), LoadOptions{Addr: discard.Addr().String(), Concurrency: 2, Duration: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Bytes == 0 || res.Gbps <= 0 || res.Failures != 0 {
			t.Errorf("%+v", res)
		}
		deadline := time.Now().Add(2 * time.Second)
		for discard.Stats().Bytes-before < res.Bytes && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := discard.Stats().Bytes - before; got != res.Bytes {
			t.Errorf("sink received %d bytes, client sent %d", got, res.Bytes)
		}
	})
	t.Run("dead sink fails boundedly", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		start := time.Now()
		res, err := ConnRate(context.Background(), LoadOptions{Addr: addr, Duration: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > time.Second || res.Ops != 0 || res.Errors[ClassRefused] == 0 {
			t.Errorf("%+v", res)
		}
	})
	t.Run("unbounded is refused", func(t *testing.T) {
		if _, err := RR(context.Background(), LoadOptions{Addr: "127.0.0.1:1"}); err == nil {
			t.Error("RR without duration or count accepted")
		}
		if _, err := Bulk(context.Background(), LoadOptions{Addr: "127.0.0.1:1", N: 10}); err == nil {
			t.Error("Bulk without duration accepted")
		}
	})
}
