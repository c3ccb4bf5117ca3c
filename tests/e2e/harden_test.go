package e2e

// The userspace defects of issue 10, each reproduced by the attack that
// found it, in the guide's network.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// statusWatch polls an instance's status every 100 ms until stopped and
// records any backend seen in another state than UP.
type statusWatch struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	bad  []string
	n    int
	fds  int
}

func watchStatus(in *lab.Instance) *statusWatch {
	w := &statusWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			st, err := in.Status()
			w.mu.Lock()
			w.n++
			if err != nil {
				w.bad = append(w.bad, "status: "+err.Error())
			} else {
				w.fds = max(w.fds, st.FDs)
				for _, b := range st.Backends {
					if b.State != daemon.StateUp {
						w.bad = append(w.bad, fmt.Sprintf("%s %s (%s)", b.Addr, b.State, b.Health))
					}
				}
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// Stop ends the polling and returns what it saw: the bad states, the
// number of polls, the most file descriptors the daemon had.
func (w *statusWatch) Stop() (bad []string, polls, fds int) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bad, w.n, w.fds
}

// flowCount is the number of tracked connections `xdplb flows` lists.
func flowCount(t *testing.T, in *lab.Instance) int {
	t.Helper()
	out, err := in.CLI("flows", "--json")
	if err != nil {
		t.Fatalf("flows: %v %s", err, out)
	}
	var rows []daemon.FlowRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("flows json: %v: %s", err, out)
	}
	return len(rows)
}

func brokenStreams(sets []*agent.WatchSet) (broken int, detail []string) {
	for _, s := range report(sets) {
		if s.Broken {
			broken++
			detail = append(detail, fmt.Sprintf("%s: %s %s", s.Server, s.State, s.Error))
		}
	}
	return broken, detail
}

func lbExec(t *testing.T, h *testnet.Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, name, args...)
	if err != nil {
		t.Fatalf("%s %v on %s: %v %s", name, args, h.Name, err, out)
	}
	return string(out)
}

// Issue 10 §1: thousands of idle connections to the metrics port, from
// other hosts, against a daemon limited to 1024 file descriptors. They
// used to use up its descriptors: every health check failed with EMFILE,
// every backend went DOWN, every client was reset, and the control socket
// stopped for good. Now the metrics listener holds at most 32 of them,
// and a check that does fail with EMFILE is not counted.
func TestIdleMetricsConnections(t *testing.T) {
	metricsAddr := netip.AddrPortFrom(testnet.LBAddr(1), 9716).String()
	c := newCluster(t, clusterOpts{hook: hookCases[0], extra: []string{"--metrics-addr", metricsAddr}})
	lb := c.lb1()
	in := c.lbs[lb]
	in.Config.Wrap = func(argv []string) []string {
		return append([]string{"prlimit", "--nofile=1024:1024", "--"}, argv...)
	}
	c.startLB(lb)
	sets := c.watch(6)
	time.Sleep(500 * time.Millisecond)
	flows := flowCount(t, in)
	w := watchStatus(in)

	const perAgent = 1000
	var mu sync.Mutex
	var conns []net.Conn
	failed := 0
	var wg sync.WaitGroup
	for _, a := range c.Agents {
		wg.Add(1)
		go func(a *testnet.Host) {
			defer wg.Done()
			for range perAgent {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				conn, err := a.DialContext(ctx, "tcp4", metricsAddr)
				cancel()
				mu.Lock()
				if err != nil {
					failed++
				} else {
					conns = append(conns, conn)
				}
				mu.Unlock()
			}
		}(a)
	}
	wg.Wait()
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	// Hold them past fall checks, then see what the daemon says.
	time.Sleep(time.Duration(fall+2)*inter + time.Second)
	if out, err := in.CLI("check", "--backends"); err != nil {
		t.Fatalf("check --backends while %d idle metrics connections are open: %v %s", len(conns), err, out)
	}
	if r := c.balance(30); r.Failures > 0 {
		t.Fatalf("new connections through the VIP failed during the attack: %v", r)
	}
	for _, conn := range conns {
		conn.Close()
	}
	conns = nil
	time.Sleep(500 * time.Millisecond)
	bad, polls, fds := w.Stop()
	if len(bad) > 0 {
		t.Fatalf("backends left UP during the attack (%d polls): %v", polls, bad[:min(len(bad), 5)])
	}
	if fds > 200 {
		t.Fatalf("the daemon held %d file descriptors: the metrics listener is not capped", fds)
	}
	if broken, detail := brokenStreams(sets); broken > 0 {
		t.Fatalf("%d watch streams broke during the attack: %v", broken, detail)
	}
	if out, err := in.CLI("check"); err != nil {
		t.Fatalf("check after the attack: %v %s", err, out)
	}
	if got := flowCount(t, in); got < flows {
		t.Fatalf("flows went from %d to %d", flows, got)
	}
	// The metrics answer again.
	scrape, err := c.Agent(1).DialContext(context.Background(), "tcp4", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer scrape.Close()
	scrape.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(scrape, "GET /metrics HTTP/1.0\r\n\r\n")
	body, _ := io.ReadAll(scrape)
	if !strings.Contains(string(body), "xdplb_backend_state") {
		t.Fatalf("metrics after the attack: %.200s", body)
	}
	t.Logf("REPORT: idle metrics connections: %d opened from 3 hosts (%d failed) against a daemon with 1024 fds; "+
		"its fds peaked at %d; every backend UP in %d polls, 0/6 streams broken, check ok after", 3*perAgent-failed, failed, fds, polls)
}

// Issue 10 §6: a metrics port already in use made the daemon hang for
// ever, attached, with GC stopped and SIGTERM ignored. Now the start fails
// at once with the reason, before anything is attached; and a running
// daemon stops on SIGTERM.
func TestMetricsPortInUse(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	addr := netip.AddrPortFrom(testnet.LBAddr(1), 9716).String()
	busy, err := lb.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runExpectingError(t, c, lb, with(in.RunArgs(), "--metrics-addr", addr), "metrics listener on "+addr)
	took := time.Since(start)
	clean(t, c, lb, "metrics port in use")
	busy.Close()
	if took > 5*time.Second {
		t.Fatalf("the refused start took %v", took)
	}

	in.Config.Args = append(in.Config.Args, "--metrics-addr", addr)
	p := c.startLB(lb)
	start = time.Now()
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, p.Stderr())
	}
	t.Logf("REPORT: metrics port in use: start refused in %v, nothing attached; SIGTERM stopped the daemon in %v",
		took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// Issue 10 §7: the LB's own interface down for 3 s, checks every second.
// It used to read as every backend dead ("network is unreachable", or
// timeouts when the carrier is lost): all DOWN, all flows purged, every
// client reset when the link came back. Now health freezes while the node
// cannot reach anything, and the flows stay.
func TestOwnLinkDown(t *testing.T) {
	ways := []struct {
		name     string
		down, up func(lb *testnet.Host) error
	}{
		{"admin down", func(lb *testnet.Host) error {
			_, err := lb.Exec(context.Background(), "ip", "link", "set", "dev", "eth1", "down")
			return err
		}, func(lb *testnet.Host) error {
			_, err := lb.Exec(context.Background(), "ip", "link", "set", "dev", "eth1", "up")
			return err
		}},
		{"carrier lost", (*testnet.Host).SetLinkDown, (*testnet.Host).SetLinkUp},
	}
	for _, way := range ways {
		t.Run(way.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{hook: hookCases[0], extra: []string{"--inter", "1s"}})
			lb := c.lb1()
			in := c.lbs[lb]
			p := c.startLB(lb)
			sets := c.watch(9)
			time.Sleep(time.Second)
			flows := flowCount(t, in)
			w := watchStatus(in)
			if err := way.down(lb); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			st, err := in.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.LinkUp {
				t.Errorf("status says eth1 is up while it is down")
			}
			if err := way.up(lb); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			bad, polls, _ := w.Stop()
			if len(bad) > 0 {
				t.Fatalf("backends not UP around the outage (%d polls): %v\n%s", polls, bad[:min(len(bad), 5)], tail(p.Stderr()))
			}
			if got := flowCount(t, in); got < flows {
				t.Fatalf("flows went from %d to %d", flows, got)
			}
			if broken, detail := brokenStreams(sets); broken > 0 {
				t.Fatalf("%d/9 watch streams broke: %v", broken, detail)
			}
			if r := c.balance(30); r.Failures > 0 {
				t.Fatalf("new connections after the outage: %v", r)
			}
			st, _ = in.Status()
			if out, err := in.CLI("check", "--backends"); err != nil {
				t.Fatalf("check --backends after the outage: %v %s", err, out)
			}
			t.Logf("REPORT: own link %s for 3s (inter 1s): every backend UP in %d polls, %d flows kept of %d, 0/9 streams broken, %d checks not counted",
				way.name, polls, flows, flows, st.LocalFaults)
		})
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

// Issue 10 §8: eth1 deleted and made again under its name (driver reload,
// hot-plug). The daemon sees it and attaches the program to the new
// interface; and a daemon started after the interface came back replaces
// the severed pinned link (before: "update link: link has been severed"
// until someone ran detach).
func TestInterfaceRecreated(t *testing.T) {
	cases := []hookCase{hookCases[0], hookCases[2],
		{"xdp-native-netlink", []string{"--hook", "xdp", "--xdp-mode", "native", "--no-bpf-link"}}}
	for _, h := range cases {
		t.Run(h.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{hook: h})
			lb := c.lb1()
			in := c.lbs[lb]
			p := c.startLB(lb)
			sets := c.watch(6)
			time.Sleep(500 * time.Millisecond)
			oldIndex := lb.IfIndex
			if err := lb.RecreateLink(true, 300*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			back := time.Now()
			for {
				st, err := in.Status()
				if err == nil && st.Attached && st.Attachment.Ifindex == lb.IfIndex {
					break
				}
				if time.Since(back) > 10*time.Second {
					t.Fatalf("not attached to the new eth1 (ifindex %d, was %d) 10s after it came back: %+v %v\n%s",
						lb.IfIndex, oldIndex, st.Attachment, err, tail(p.Stderr()))
				}
				time.Sleep(50 * time.Millisecond)
			}
			took := time.Since(back)
			if r := c.balance(30); r.Failures > 0 {
				t.Fatalf("new connections through the new eth1: %v", r)
			}
			broken, _ := brokenStreams(sets)
			for _, ws := range sets {
				ws.Stop()
			}

			// No daemon while it happens again: the next start replaces
			// what the deletion severed.
			if err := in.Stop(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := lb.RecreateLink(true, 0); err != nil {
				t.Fatal(err)
			}
			c.startLB(lb)
			if r := c.balance(30); r.Failures > 0 {
				t.Fatalf("after a restart on a recreated eth1: %v", r)
			}
			t.Logf("REPORT: eth1 recreated (%s): attached to the new interface %v after it came back; %d/6 streams broken; a restart on a recreated eth1 starts",
				h.name, took.Round(time.Millisecond), broken)
		})
	}
}

// Issue 10 §9: a daemon stopped with SIGSTOP is not a dead one (detach
// used to remove its socket and program), no second daemon starts beside
// it, and of two starts racing, exactly one runs; the loser's exit leaves
// the winner's socket.
func TestStoppedAndRacingDaemons(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	p := c.startLB(lb)
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := c.xdplb(lb, "detach")
	if err == nil || !strings.Contains(out, "holds its lock but does not answer") || !strings.Contains(out, fmt.Sprintf("pid %d", p.PID())) {
		t.Fatalf("detach of a stopped daemon: %v %s", err, out)
	}
	detachTook := time.Since(start)
	if _, err := os.Stat(in.SocketPath()); err != nil {
		t.Fatalf("detach removed the stopped daemon's socket: %v", err)
	}
	if link := lbExec(t, lb, "ip", "link", "show", "dev", "eth1"); !strings.Contains(link, "xdp") {
		t.Fatalf("detach removed the stopped daemon's program:\n%s", link)
	}
	runExpectingError(t, c, lb, in.RunArgs(), "already has a running daemon")
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if out, err := c.xdplb(lb, "check"); err != nil {
		t.Fatalf("check after SIGCONT: %v %s", err, out)
	}
	if err := in.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	const rounds = 5
	for round := range rounds {
		var procs [2]*testnet.Process
		var wg sync.WaitGroup
		for i := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pr, err := lb.Start(in.Bin, in.RunArgs()...)
				if err != nil {
					t.Error(err)
					return
				}
				procs[i] = pr
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		var loser, winner *testnet.Process
		deadline := time.Now().Add(15 * time.Second)
		for loser == nil {
			for i, pr := range procs {
				if pr.Exited() {
					loser, winner = pr, procs[1-i]
				}
			}
			if time.Now().After(deadline) {
				for _, pr := range procs {
					pr.Stop(2 * time.Second)
				}
				t.Fatalf("round %d: both racing starts still run after 15s", round)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(loser.Stderr(), "already has a running daemon") || loser.Wait() == nil {
			t.Fatalf("round %d: the loser of the race: %v\n%s", round, loser.Wait(), loser.Stderr())
		}
		if err := in.WaitReady(10 * time.Second); err != nil {
			t.Fatalf("round %d: the winner: %v\n%s", round, err, winner.Stderr())
		}
		if winner.Exited() {
			t.Fatalf("round %d: both starts exited", round)
		}
		if err := winner.Stop(5 * time.Second); err != nil {
			t.Fatalf("round %d: stop the winner: %v", round, err)
		}
	}
	t.Logf("REPORT: stopped daemon: detach refused in %v, nothing removed, a second start refused, check ok after SIGCONT; "+
		"%d races of two starts: one ran, one was refused, each time", detachTook.Round(time.Millisecond), rounds)
}

// Issue 10 §10: the check's credential files are read before anything is
// attached, as regular files only, capped, with a deadline. A token that
// is a FIFO used to hang the daemon after attaching, one linked to
// /dev/zero grew it to 2.5 GB, a missing CA left the program attached. And
// a token that turns unreadable while the daemon runs is this node's
// fault: the backends keep their state.
func TestCredentialFiles(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	dir := t.TempDir()
	fifo := filepath.Join(dir, "token-fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "token-zero")
	os.Symlink("/dev/zero", zero)
	https := append(append([]string{}, in.RunArgs()...), "--check", "https")
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"token is a FIFO", append(append([]string{}, https...), "--check-token-file", fifo), "not a regular file (a FIFO)"},
		{"token is /dev/zero", append(append([]string{}, https...), "--check-token-file", zero), "not a regular file (a character device)"},
		{"CA missing", append(append([]string{}, https...), "--check-ca", filepath.Join(dir, "none.pem")), "read CA file"},
		{"CA is /dev/zero", append(append([]string{}, https...), "--check-ca", zero), "not a regular file"},
		{"client key is a FIFO", append(append([]string{}, https...), "--check-cert", c.PKI.ClientCert, "--check-key", fifo), "not a regular file (a FIFO)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			runExpectingError(t, c, lb, tc.args, tc.msg)
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("refused after %v", took)
			}
			clean(t, c, lb, tc.name)
		})
	}

	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(c.PKI.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	in.Config.Args = append(in.Config.Args, "--check", "https", "--check-token-file", token, "--check-ca", c.PKI.CAFile)
	c.startLB(lb)
	w := watchStatus(in)
	os.Remove(token)
	if err := syscall.Mkfifo(token, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(fall+2) * inter)
	start := time.Now()
	if out, err := in.CLI("check"); err != nil {
		t.Fatalf("check with the token turned into a FIFO: %v %s", err, out)
	}
	checkTook := time.Since(start)
	out, err := in.CLI("check", "--backends")
	if err == nil || !strings.Contains(out, "not reachable from this node") || !strings.Contains(out, "not a regular file (a FIFO)") {
		t.Fatalf("check --backends with an unreadable token: %v %s", err, out)
	}
	os.Remove(token)
	os.WriteFile(token, []byte(c.PKI.Token), 0o600)
	time.Sleep(2 * inter)
	bad, polls, _ := w.Stop()
	if len(bad) > 0 {
		t.Fatalf("backends not UP while the token was a FIFO (%d polls): %v", polls, bad[:min(len(bad), 5)])
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := in.CLI("check", "--backends")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("check --backends with the token back: %v %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("REPORT: credential files: %d bad files refused before attaching, each at once; a token turned FIFO at run time: "+
		"backends UP in %d polls, check answered in %v, check --backends said why", len(cases), polls, checkTook.Round(time.Millisecond))
}

// dialFrom opens a TCP connection from host h, from source address src
// (invalid: the host's own), to the frontend.
func dialFrom(h *testnet.Host, src netip.Addr) (net.Conn, error) {
	var conn net.Conn
	err := h.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: net.IP(src.AsSlice())}
		}
		var err error
		conn, err = d.Dial("tcp4", lab.Frontend().String())
		return err
	})
	return conn, err
}

// echoes says whether a connection to an echo server still carries data.
func echoes(conn net.Conn) error {
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	_, err := io.ReadFull(conn, buf)
	return err
}

// Issue 10 §4: a table of 64 connections, at most 20 per client. A client
// is refused (RST) past its 20th; the table refuses new connections once
// the live ones reach it less its headroom, never evicting the idle ones
// that came first; status and counters say so; once connections close,
// new ones are accepted again.
func TestTableFull(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0], echo: true,
		extra: []string{"--check", "tcp", "--max-conns", "64", "--max-conns-per-client", "20"}})
	lb := c.lb1()
	in := c.lbs[lb]
	c.startLB(lb)
	var all []net.Conn
	defer func() {
		for _, conn := range all {
			conn.Close()
		}
	}()
	open := func(h *testnet.Host, src netip.Addr, n int) (ok []net.Conn, refused int) {
		for range n {
			conn, err := dialFrom(h, src)
			if err != nil {
				refused++
				continue
			}
			if err := echoes(conn); err != nil {
				conn.Close()
				refused++
				continue
			}
			ok = append(ok, conn)
			all = append(all, conn)
		}
		return ok, refused
	}
	victims, refused := open(c.Agent(3), netip.Addr{}, 5)
	if refused > 0 {
		t.Fatalf("%d of the first 5 connections refused", refused)
	}
	one, refusedOne := open(c.Agent(1), netip.Addr{}, 25)
	if len(one) != 20 || refusedOne != 5 {
		t.Fatalf("one client, 25 connections: %d accepted, %d refused; want 20 and 5 (max-conns-per-client 20)", len(one), refusedOne)
	}
	// agent-2 from three addresses, 20 each: the table fills.
	var filler []net.Conn
	refusedFill := 0
	for i, src := range []string{"", "10.10.10.151", "10.10.10.152"} {
		a := netip.Addr{}
		if src != "" {
			if err := c.Agent(2).AddAddr(src + "/24"); err != nil {
				t.Fatal(err)
			}
			a = netip.MustParseAddr(src)
		}
		ok, r := open(c.Agent(2), a, 20)
		filler = append(filler, ok...)
		refusedFill += r
		if i == 1 {
			time.Sleep(1500 * time.Millisecond) // half full: the GC runs every second now
		}
	}
	time.Sleep(1500 * time.Millisecond)
	st, err := in.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Table.Refusing || st.Table.Capacity != 64 || st.Table.Live < 60 || st.Table.Live > 64 {
		t.Fatalf("status with the table full: %+v", st.Table)
	}
	if st.Counters["reset_client_limit"] < 5 || st.Counters["reset_table_full"] == 0 {
		t.Fatalf("refusals not counted: client limit %d, table full %d", st.Counters["reset_client_limit"], st.Counters["reset_table_full"])
	}
	for i, v := range victims {
		if err := echoes(v); err != nil {
			t.Fatalf("victim connection %d broke while the table filled: %v", i, err)
		}
	}
	if _, r := open(c.Agent(3), netip.Addr{}, 1); r != 1 {
		t.Fatal("a new connection was accepted while the table is full")
	}
	out, _ := in.CLI("status")
	if !strings.Contains(out, "TABLE FULL") {
		t.Fatalf("status does not say the table is full:\n%s", out)
	}
	// The filler closes: room again within a couple of GCs.
	for _, conn := range filler {
		conn.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, r := open(c.Agent(3), netip.Addr{}, 1); r == 0 {
			break
		}
		if time.Now().After(deadline) {
			st, _ := in.Status()
			t.Fatalf("no room 5s after %d connections closed: %+v", len(filler), st.Table)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("REPORT: table of 64: one client refused past 20 (%d refused); table refused new connections at %d live (%d refused while filling, reset_table_full=%d), "+
		"the 5 first idle connections all kept; room again after the filler closed",
		refusedOne, st.Table.Live, refusedFill, st.Counters["reset_table_full"])
}

// Issue 10 §14 (with issue 11 §3's split): every backend drained or down
// while new connections find none. `xdplb check` (this node forwards)
// passes; `xdplb check --backends` fails and says why. A user without the
// root's rights on the control socket is told so, not "no daemon" (§15).
func TestCheckSplit(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	c.startLB(lb)
	for i := 1; i <= 3; i++ {
		if out, err := c.xdplb(lb, "backend", "drain", testnet.ServerAddr(i).String()); err != nil {
			t.Fatalf("drain: %v %s", err, out)
		}
	}
	if out, err := c.xdplb(lb, "check"); err != nil {
		t.Fatalf("check with every backend drained: %v %s", err, out)
	}
	out, err := c.xdplb(lb, "check", "--backends")
	if err == nil || !strings.Contains(out, "no backend can take new connections: 10.10.10.50:6443 DRAIN (drained by the operator)") {
		t.Fatalf("check --backends with every backend drained: %v %s", err, out)
	}
	drained := strings.TrimSpace(out)
	for i := 1; i <= 3; i++ {
		c.xdplb(lb, "backend", "enable", testnet.ServerAddr(i).String())
		c.ServerProcess(i).Kill()
	}
	deadline := time.Now().Add(fall*inter + 3*time.Second)
	for {
		out, err = c.xdplb(lb, "check", "--backends")
		if err != nil && strings.Contains(out, "DOWN") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("check --backends with every server dead: %v %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := c.xdplb(lb, "check"); err != nil {
		t.Fatalf("check with every backend down: %v %s", err, out)
	}
	if _, err := c.xdplb(lb, "check", "--backends", "--quiet"); err == nil {
		t.Fatal("check --backends --quiet passed with every backend down")
	}

	// Not root: the socket refuses, and says why.
	bin := filepath.Join(t.TempDir(), "xdplb")
	data, err := os.ReadFile(in.Bin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, data, 0o755)
	os.Chmod(filepath.Dir(bin), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	denied, err := lb.Exec(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "check", "--instance", in.Name)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(denied), "permission denied on the control socket") {
		t.Fatalf("check as nobody: %v %s", err, denied)
	}
	t.Logf("REPORT: check split: all drained: check ok, check --backends: %q; all dead: %q; as nobody: %q",
		drained, strings.TrimSpace(out), strings.TrimSpace(string(denied)))
}

// Issue 10 §15: bpffs unmounted under a running daemon. The pins went,
// and with them (bpf_link) the program, silently. Now the daemon says so
// and pins its maps again from its own handles and attaches again, the
// flow table kept.
func TestBPFFSUnmounted(t *testing.T) {
	for _, h := range []hookCase{hookCases[0], {"xdp-native-netlink", []string{"--hook", "xdp", "--xdp-mode", "native", "--no-bpf-link"}}} {
		t.Run(h.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{hook: h})
			lb := c.lb1()
			in := c.lbs[lb]
			p := c.startLB(lb)
			sets := c.watch(6)
			time.Sleep(500 * time.Millisecond)
			flows := flowCount(t, in)
			if err := unix.Unmount(in.BPFFS, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			gone := time.Now()
			for !strings.Contains(p.Stderr(), "pinned its maps again") {
				if time.Since(gone) > 10*time.Second {
					t.Fatalf("the daemon did not restore its pins 10s after bpffs was unmounted:\n%s", tail(p.Stderr()))
				}
				time.Sleep(50 * time.Millisecond)
			}
			took := time.Since(gone)
			if !strings.Contains(p.Stderr(), "no bpffs is mounted at "+in.BPFFS) {
				t.Fatalf("the daemon did not say bpffs was unmounted:\n%s", tail(p.Stderr()))
			}
			if out, err := in.CLI("check"); err != nil {
				t.Fatalf("check after the pins came back: %v %s", err, out)
			}
			if got := flowCount(t, in); got < flows {
				t.Fatalf("flows: %d before, %d after", flows, got)
			}
			if r := c.balance(30); r.Failures > 0 {
				t.Fatalf("new connections after the pins came back: %v", r)
			}
			broken, _ := brokenStreams(sets)
			t.Logf("REPORT: bpffs unmounted (%s): said so, pins and attachment back after %v, %d flows kept, %d/6 streams broken",
				h.name, took.Round(time.Millisecond), flows, broken)
		})
	}
}
