package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
)

// flakyListener fails its first n Accepts with err, as a listener of a
// process out of file descriptors does.
type flakyListener struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestControlSocketSurvivesAcceptErrors (issue 10 §1): accept errors
// (EMFILE) do not end the control socket; once descriptors are back,
// `xdplb check` answers again. It used to return on the first error, for
// good.
func TestControlSocketSurvivesAcceptErrors(t *testing.T) {
	RunDir = t.TempDir()
	r := newRig(t)
	cs, err := listenControl("flaky")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: cs.Listener, err: &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}}
	fl.n.Store(8) // 5 ms doubling to 640 ms: 1.3 s of backoff
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.d.serveControl(ctx, fl); close(done) }()
	defer func() { cancel(); cs.close(); <-done }()
	start := time.Now()
	resp, err := Call("flaky", Request{Cmd: "check"})
	if err != nil || !resp.OK {
		t.Fatalf("check after 8 accept errors: %+v %v", resp, err)
	}
	if fl.n.Load() >= 0 {
		t.Fatal("the accept errors were not all seen")
	}
	t.Logf("check answered %v after 8 EMFILE accept errors", time.Since(start).Round(time.Millisecond))
}

// TestControlRequestLimit (issue 10 §12): a request larger than 64 KiB is
// refused after reading 64 KiB of it; the daemon never holds more (a 1 GB
// request used to grow it to 3.1 GB).
func TestControlRequestLimit(t *testing.T) {
	r := newRig(t)
	for _, body := range []struct {
		name string
		fill byte
		head string
		want string
	}{
		{"one long string", 'a', `{"cmd":"`, "larger than 65536 bytes"},
		{"deep nesting", '[', ``, "exceeded max depth"},
		{"whitespace", ' ', ``, "larger than 65536 bytes"},
	} {
		t.Run(body.name, func(t *testing.T) {
			client, server := net.Pipe()
			done := make(chan struct{})
			go func() { r.d.handleConn(server); close(done) }()
			var sent atomic.Int64
			go func() {
				client.Write([]byte(body.head))
				chunk := bytes.Repeat([]byte{body.fill}, 32<<10)
				for sent.Load() < 1<<30 { // 1 GB, or until the daemon hangs up
					n, err := client.Write(chunk)
					sent.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
			var resp Response
			err := json.NewDecoder(client).Decode(&resp)
			client.Close()
			<-done
			if err != nil || resp.OK || !strings.Contains(resp.Error, body.want) {
				t.Fatalf("huge request: %+v %v", resp, err)
			}
			if n := sent.Load(); n > maxRequest+64<<10 {
				t.Fatalf("the daemon read %d bytes of the request, want at most %d", n, maxRequest)
			}
		})
	}
}

// TestOldDaemonKeepsNewSocket (issue 10 §9): a daemon that exits removes
// its own socket, never a socket a later daemon made in its place.
func TestOldDaemonKeepsNewSocket(t *testing.T) {
	RunDir = t.TempDir()
	old, err := listenControl("swap")
	if err != nil {
		t.Fatal(err)
	}
	newer, err := listenControl("swap") // as a daemon that found the old one's socket stale
	if err != nil {
		t.Fatal(err)
	}
	old.close()
	if _, err := os.Stat(SocketPath("swap")); err != nil {
		t.Fatalf("the old daemon removed the new daemon's socket: %v", err)
	}
	newer.close()
	if _, err := os.Stat(SocketPath("swap")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the daemon left its own socket: %v", err)
	}
}

// TestDetachSparesAStoppedDaemon (issue 10 §9): a daemon that holds its
// instance's lock but does not answer (SIGSTOP) is not taken for a crash:
// detach fails saying so, and removes nothing. Without a holder, detach
// removes a stale socket.
func TestDetachSparesAStoppedDaemon(t *testing.T) {
	RunDir = t.TempDir()
	bpffs := t.TempDir()
	lock, err := lockInstance("stopped")
	if err != nil {
		t.Fatal(err)
	}
	// A socket that accepts (the kernel's backlog) but is never served.
	cs, err := listenControl("stopped")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = Detach(bpffs, "stopped")
	if err == nil || !strings.Contains(err.Error(), "holds its lock but does not answer") || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("detach of a stopped daemon: %v", err)
	}
	t.Logf("detach gave up after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if _, err := os.Stat(SocketPath("stopped")); err != nil {
		t.Fatalf("detach removed the stopped daemon's socket: %v", err)
	}
	// What waits in the socket for the daemon to resume must not stop it.
	conn, err := cs.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var queued Request
	if err := json.NewDecoder(conn).Decode(&queued); err != nil || queued.Cmd != "status" {
		t.Fatalf("detach left %+v (%v) waiting for the stopped daemon; want a harmless status", queued, err)
	}
	conn.Close()
	// The daemon is gone (its lock released): detach cleans up.
	cs.Listener.Close()
	lock.release()
	if stopped, err := Detach(bpffs, "stopped"); err != nil || stopped {
		t.Fatalf("detach after the daemon died: stopped=%v %v", stopped, err)
	}
	if _, err := os.Stat(SocketPath("stopped")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale socket left: %v", err)
	}
}

// TestCallErrors (issue 10 §15): a socket the caller may not open is
// reported as such, not as "no daemon"; a daemon that does not answer is
// named.
func TestCallErrors(t *testing.T) {
	perm := dialError("x", "/run/xdplb/x.sock", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !strings.Contains(perm.Error(), "permission denied on the control socket /run/xdplb/x.sock") || !strings.Contains(perm.Error(), "run xdplb as root") {
		t.Errorf("EACCES: %v", perm)
	}
	gone := dialError("x", "/run/xdplb/x.sock", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)})
	if !strings.Contains(gone.Error(), `no xdplb daemon for instance "x"`) {
		t.Errorf("ENOENT: %v", gone)
	}
	for _, bad := range []string{"", "..", "../..", "a/b"} {
		if _, err := Call(bad, Request{Cmd: "check"}); err == nil || !strings.Contains(err.Error(), "want 1-32 characters") {
			t.Errorf("Call(%q): %v", bad, err)
		}
	}
}

// failingListener fails every Accept with an error no retry helps.
type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("listener broken") }

// TestServeStopsOnFailure (issue 10 §6): when a part of the daemon fails
// (here the metrics server), serve stops every other part and returns the
// failure, so the daemon exits non-zero instead of lingering half alive.
func TestServeStopsOnFailure(t *testing.T) {
	RunDir = t.TempDir()
	r := newRig(t)
	cs, err := listenControl("fails")
	if err != nil {
		t.Fatal(err)
	}
	defer cs.close()
	done := make(chan error, 1)
	go func() { done <- r.d.serve(context.Background(), cs, failingListener{cs.Listener}, nil) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "metrics: listener broken") {
			t.Fatalf("serve returned %v, want the metrics failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve still running 5s after its metrics server failed")
	}
}

// TestMetricsListener (issue 10 §1, §6): the port in use is refused when
// the listener is opened (before the kernel is touched), and at most
// maxMetricsConns connections are held at once; more are closed at once.
func TestMetricsListener(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := listenMetrics(busy.Addr().String()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("metrics on a port in use: %v", err)
	}

	r := newRig(t)
	ln, err := listenMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := r.d.metricsServer()
	go srv.Serve(ln)
	defer srv.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 * maxMetricsConns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	cl := ln.(*capListener)
	deadline := time.Now().Add(5 * time.Second)
	for cl.accepted.Load()+cl.refused.Load() < uint64(len(conns)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := cl.accepted.Load(); got != maxMetricsConns {
		t.Fatalf("%d idle connections held, want the cap %d (refused %d)", got, maxMetricsConns, cl.refused.Load())
	}
	if srv.ReadHeaderTimeout == 0 || srv.IdleTimeout == 0 || srv.ReadTimeout == 0 || srv.WriteTimeout == 0 {
		t.Fatalf("metrics server without timeouts: %+v", srv)
	}
}

// TestOwnFaultsDoNotMarkDown (issue 10 §1, §7): checks failing with this
// node's own errors (out of descriptors, no route), or failing in any way
// while its link is down, move no backend and purge no flow; once the
// node is well again, a backend that really fails still goes down.
func TestOwnFaultsDoNotMarkDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lw := newLinkWatch("eth1")
		lw.observe(true, 2, true, time.Now())
		r := newRigWith(t, func(_ *config.Config, p *parts) { p.link = lw })
		inter := r.d.cfg.HealthParams().Inter
		fall := r.d.cfg.HealthParams().Fall
		ids := map[netip.AddrPort]uint32{}
		for i, s := range []netip.AddrPort{s1, s2, s3} {
			ids[s] = r.backend(t, s).ID
			client := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), uint16(40000+i))
			r.dp.AddConn(client, s, ids[s], uint16(20000+i), r.d.parts.now(), bpf.FlowEstablished)
		}
		synctest.Wait()
		dial := func(errno syscall.Errno) error {
			return &health.CheckError{Step: "tls handshake", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}}
		}
		steady := func(what string) {
			t.Helper()
			for _, s := range []netip.AddrPort{s1, s2, s3} {
				if b := r.backend(t, s); !b.Up || r.conns(ids[s]) != 1 {
					t.Fatalf("%s: %s up=%v with %d connections; want up with its connection", what, s, b.Up, r.conns(ids[s]))
				}
			}
			if r.nudges.count() != 0 {
				t.Fatalf("%s: %d clients reset", what, r.nudges.count())
			}
		}
		for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENETUNREACH, syscall.ENOBUFS, syscall.EADDRNOTAVAIL} {
			for _, s := range []netip.AddrPort{s1, s2, s3} {
				r.checker.set(s, dial(errno))
			}
			time.Sleep(time.Duration(2*fall) * inter)
			synctest.Wait()
			steady(errno.Error())
		}
		// The link goes down: the checks time out (a NoAnswer by itself).
		lw.observe(true, 2, false, time.Now())
		for _, s := range []netip.AddrPort{s1, s2, s3} {
			r.checker.set(s, refused)
		}
		time.Sleep(time.Duration(2*fall) * inter)
		synctest.Wait()
		steady("link down")
		if st := r.d.status(); st.LinkUp || st.LocalFaults == 0 {
			t.Fatalf("status with the link down: link_up=%v, %d checks not counted", st.LinkUp, st.LocalFaults)
		}
		// The node still forwards its flows; it reaches no backend, so
		// `check --backends` lowers its priority for a peer that does.
		if resp := r.d.handle(Request{Cmd: "check"}); !resp.OK {
			t.Fatalf("check with the link down: %+v", resp)
		}
		if resp := r.d.handle(Request{Cmd: "check", Backends: true}); resp.OK || !strings.Contains(resp.Error, "10.10.10.50:6443 UP but not reachable from this node") {
			t.Fatalf("check --backends with the link down: %+v", resp)
		}
		lw.observe(true, 2, true, time.Now())
		for _, s := range []netip.AddrPort{s1, s2} {
			r.checker.set(s, nil)
		}
		// server-3 still refuses once the link is back: it goes down.
		time.Sleep(time.Duration(fall+2) * inter)
		synctest.Wait()
		if b := r.backend(t, s3); b.Up || r.conns(ids[s3]) != 0 {
			t.Fatalf("a backend really failing after the node recovered: up=%v, %d connections", b.Up, r.conns(ids[s3]))
		}
		if b := r.backend(t, s1); !b.Up || r.conns(ids[s1]) != 1 {
			t.Fatal("a healthy backend lost its state")
		}
	})
}

// TestLinkWatchObserve: the interface's changes as the daemon sees them.
func TestLinkWatchObserve(t *testing.T) {
	w := newLinkWatch("eth1")
	t0 := time.Unix(1000, 0)
	steps := []struct {
		present bool
		index   int
		up      bool
		want    linkChange
		downs   uint64
	}{
		{true, 5, true, linkChange{Index: 5}, 0},                                        // first sight: no change
		{true, 5, false, linkChange{Down: true, Index: 5}, 1},                           // carrier lost / admin down
		{true, 5, true, linkChange{Up: true, Index: 5}, 1},                              // back
		{false, 0, false, linkChange{Down: true, Removed: true}, 2},                     // deleted
		{true, 9, false, linkChange{Index: 9}, 2},                                       // made again, still down
		{true, 9, true, linkChange{Up: true, Index: 9}, 2},                              // up
		{true, 12, true, linkChange{Down: true, Up: true, Removed: true, Index: 12}, 3}, // replaced between two looks
	}
	for i, s := range steps {
		got := w.observe(s.present, s.index, s.up, t0.Add(time.Duration(i)*time.Second))
		up, downs, since := w.LinkState()
		if got != s.want || downs != s.downs || up != (s.present && s.up) {
			t.Fatalf("step %d: %+v, up=%v downs=%d; want %+v, downs=%d", i, got, up, downs, s.want, s.downs)
		}
		if s.want.Up && !since.Equal(t0.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("step %d: up since %v", i, since)
		}
	}
}

// TestTablePressureWiring (issue 10 §4): the GC's decision reaches the
// data path (refuse_new), status and metrics.
func TestTablePressureWiring(t *testing.T) {
	r := newRigWith(t, func(c *config.Config, p *parts) {})
	r.dp.SetCapacity(bpf.TableEstablished, 2*100)
	id := r.backend(t, s1).ID
	for i := range 97 {
		c := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), uint16(30000+i))
		r.dp.AddConn(c, s1, id, uint16(20000+i), r.d.parts.now(), bpf.FlowEstablished)
	}
	r.dp.Count(bpf.StatResetTableFull, 5)
	r.d.gc()
	if !r.dp.RefuseNew() {
		t.Fatal("97 of 100 live: refuse_new not set")
	}
	st := r.d.status()
	if !st.Table.Refusing || st.Table.Live != 97 || st.Table.Capacity != 100 || st.Counters["reset_table_full"] != 5 {
		t.Fatalf("status: %+v, reset_table_full %d", st.Table, st.Counters["reset_table_full"])
	}
	out := gatherText(t, r.d.registry())
	for _, want := range []string{"xdplb_refusing_new_connections 1", "xdplb_connections_live 97", "xdplb_connections_capacity 100",
		`xdplb_packets_total{reason="reset_table_full",verdict="reset"} 5`} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
