package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testenv"
	"github.com/xdplb/xdplb/tests/testnet"
)

// forEachHook runs a scenario on the XDP hook (native and generic) and on
// the TC hook, each on a cluster of its own.
func forEachHook(t *testing.T, o clusterOpts, fn func(t *testing.T, c *cluster)) {
	for _, h := range hookCases {
		t.Run(h.name, func(t *testing.T) {
			o := o
			o.hook = h
			c := newCluster(t, o)
			c.startLB(c.lb1())
			fn(t, c)
		})
	}
}

// checkBalance: every server gets 20-47% of n new connections.
func checkBalance(t *testing.T, c *cluster, n int) {
	t.Helper()
	r := c.balance(n)
	if r.Failures > 0 {
		t.Fatalf("%d of %d connections failed: %v (first: %s)", r.Failures, n, r.Errors, r.FirstError)
	}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("server-%d", i)
		share := float64(r.Counts[name]) / float64(n)
		if share < 0.20 || share > 0.47 {
			t.Fatalf("%s got %.0f%% of %d connections (%v)", name, 100*share, n, r.Counts)
		}
	}
	t.Logf("REPORT: balance %v", r.Counts)
}

// Scenario 1: 300 new TLS connections from 3 agents spread over 3 servers.
func TestBalance(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		checkBalance(t, c, 300)
		st := c.status(c.lb1())
		if st.Counters["new_flow"] < 300 {
			t.Fatalf("counters say %d new flows", st.Counters["new_flow"])
		}
	})
}

// streamsOn splits stream reports by whether they were on server.
func streamsOn(rs []agent.StreamReport, server string) (on, off []agent.StreamReport) {
	for _, r := range rs {
		if r.Server == server {
			on = append(on, r)
		} else {
			off = append(off, r)
		}
	}
	return
}

// Scenario 2a and 3: server-2's API process dies, the host stays up. No new
// connection fails (one may wait for a SYN retransmission); it is marked
// down within fall x inter + 1 s; streams on other servers never break;
// streams on it end (no hang). Brought back, it gets new connections
// within rise x inter + 1 s.
func TestServerProcessDies(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		sets := c.watch(15)
		time.Sleep(300 * time.Millisecond)
		killed := time.Now()
		c.ServerProcess(2).Kill()

		// New connections right away: refused SYNs are swallowed and
		// retried on a live server.
		r := c.balance(60)
		if r.Failures > 0 {
			t.Fatalf("%d new connections failed after the API process died: %v (first: %s)", r.Failures, r.Errors, r.FirstError)
		}
		took := time.Since(killed)
		if took < 0 {
			took = 0
		}
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateDown, fall*inter+time.Second)
		downAfter := time.Since(killed)
		if downAfter > fall*inter+time.Second+slack {
			t.Fatalf("marked down %s after the kill, want within fall x inter + 1s = %s", downAfter, fall*inter+time.Second)
		}
		t.Logf("REPORT: process death: marked down %s after the kill; 60 new connections, 0 failed, during %s", downAfter.Round(time.Millisecond), took.Round(time.Millisecond))
		if r.Counts["server-2"] > 0 {
			t.Fatalf("new connections went to the dead server: %v", r.Counts)
		}
		time.Sleep(300 * time.Millisecond)
		on, off := streamsOn(report(sets), "server-2")
		for _, s := range off {
			if s.Broken || s.Hung {
				t.Fatalf("stream on %s broke: %+v", s.Server, s)
			}
		}
		for _, s := range on {
			if !s.Broken {
				t.Fatalf("stream on the dead server not ended: %+v", s)
			}
		}

		// Scenario 3: it comes back.
		c.startServer(2)
		back := time.Now()
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateUp, rise*inter+time.Second)
		r = c.balance(60)
		if r.Counts["server-2"] == 0 || r.Failures > 0 {
			t.Fatalf("server-2 back but gets no connections: %v", r)
		}
		t.Logf("REPORT: comeback: up and taking connections %s after restart", time.Since(back).Round(time.Millisecond))
	})
}

// Scenario 2b and 3: server-2's link goes down. Marked down within
// fall x inter + 1 s; new connections after that never go to it; streams on
// it are reset by then (no hang), others never break. Link up: it gets new
// connections within rise x inter + 1 s.
func TestServerLinkDown(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		sets := c.watch(15)
		time.Sleep(300 * time.Millisecond)
		down := time.Now()
		if err := c.Server(2).SetLinkDown(); err != nil {
			t.Fatal(err)
		}
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateDown, fall*inter+time.Second)
		markedAfter := time.Since(down)
		r := c.balance(60)
		if r.Failures > 0 || r.Counts["server-2"] > 0 {
			t.Fatalf("after mark-down: %v", r)
		}
		// The dead server's streams: reset promptly (nudged), not hung.
		deadline := down.Add(fall*inter + time.Second + 500*time.Millisecond + slack)
		for {
			on, _ := streamsOn(report(sets), "server-2")
			open := 0
			for _, s := range on {
				if !s.Broken {
					open++
				}
			}
			if open == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d streams on the unreachable server still not reset %s after link down: %+v", open, time.Since(down), on)
			}
			time.Sleep(50 * time.Millisecond)
		}
		on, off := streamsOn(report(sets), "server-2")
		for _, s := range off {
			if s.Broken || s.Hung {
				t.Fatalf("stream on %s broke: %+v", s.Server, s)
			}
		}
		resets := 0
		for _, s := range on {
			if s.State == agent.StateReset {
				resets++
			}
		}
		t.Logf("REPORT: link down: marked down after %s; %d/%d streams on it reset, all others intact", markedAfter.Round(time.Millisecond), resets, len(on))
		if resets != len(on) {
			t.Fatalf("streams on the unreachable server ended otherwise than by reset: %+v", on)
		}

		if err := c.Server(2).SetLinkUp(); err != nil {
			t.Fatal(err)
		}
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateUp, rise*inter+time.Second)
		if r := c.balance(60); r.Counts["server-2"] == 0 || r.Failures > 0 {
			t.Fatalf("server-2 back but gets no connections: %v", r)
		}
	})
}

// Scenario 4: /readyz turns 503 with --check https: the backend is drained
// (no new flows) while its existing streams go on.
func TestNotReadyDrains(t *testing.T) {
	forEachHook(t, clusterOpts{extra: []string{"--check", "https", "--check-path", "/readyz"}}, func(t *testing.T, c *cluster) {
		sets := c.watch(15)
		time.Sleep(300 * time.Millisecond)
		if err := c.ServerProcess(2).Signal(syscall.SIGUSR1); err != nil { // unready
			t.Fatal(err)
		}
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateDown, fall*inter+time.Second)
		r := c.balance(60)
		if r.Failures > 0 || r.Counts["server-2"] > 0 {
			t.Fatalf("new connections with server-2 not ready: %v", r)
		}
		time.Sleep(time.Second)
		on, _ := streamsOn(report(sets), "server-2")
		if len(on) == 0 {
			t.Fatal("no stream landed on server-2")
		}
		for _, s := range report(sets) {
			if s.Broken || s.Hung || s.MaxGapMS > 1000 {
				t.Fatalf("stream broke while server-2 was only not ready: %+v", s)
			}
		}
		if err := c.ServerProcess(2).Signal(syscall.SIGUSR2); err != nil { // ready
			t.Fatal(err)
		}
		c.waitState(c.lb1(), testnet.ServerAddr(2), daemon.StateUp, rise*inter+time.Second)
		t.Logf("REPORT: not ready: %d streams on server-2 kept while drained", len(on))
	})
}

// Scenario 5: 30 watch streams held while xdplb is stopped and started
// again, and once upgraded to another binary: none breaks, no heartbeat gap
// over 1 s.
func TestRestartKeepsStreams(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, mounts bpffs, attaches XDP programs")
	upgraded := lab.MustBuild(t, lab.XDPLBUpgraded)
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		sets := c.watch(30)
		time.Sleep(300 * time.Millisecond)
		firstVersion := c.status(c.lb1()).Version
		for _, bin := range []string{c.Bin.XDPLB, upgraded} {
			if err := c.lbs[c.lb1()].Stop(5 * time.Second); err != nil {
				t.Fatalf("stop xdplb: %v", err)
			}
			time.Sleep(200 * time.Millisecond) // traffic flows with no daemon at all
			start := time.Now()
			c.startLBBin(bin, c.lb1())
			t.Logf("REPORT: restart with %s: check passes %s after start", bin[strings.LastIndex(bin, "/")+1:], time.Since(start).Round(time.Millisecond))
			time.Sleep(500 * time.Millisecond)
		}
		if v := c.status(c.lb1()).Version; v == firstVersion {
			t.Fatalf("running version %q after the upgrade, the same as before", v)
		}
		worst := 0.0
		for _, s := range report(sets) {
			if s.Broken || s.Hung {
				t.Fatalf("stream broke across restart: %+v", s)
			}
			if s.MaxGapMS > worst {
				worst = s.MaxGapMS
			}
		}
		if limit := float64((time.Second + slack).Milliseconds()); worst > limit {
			t.Fatalf("heartbeat gap of %.0f ms across restart, want at most %.0f", worst, limit)
		}
		t.Logf("REPORT: restart+upgrade: 30 streams, 0 broken, worst heartbeat gap %.0f ms", worst)
		checkBalance(t, c, 150)
	})
}

// Scenario 6: other traffic on lb-1 is unaffected while xdplb runs: ping,
// a TCP service on another port (of the VIP and of the node address), and
// lb-1's own outgoing connections.
func TestOtherTrafficUnaffected(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		lb, ag := c.lb1(), c.Agent(1)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, dst := range []string{testnet.VIP, testnet.LBAddr(1).String()} {
			if _, err := ag.Ping(ctx, mustAddr(dst)); err != nil {
				t.Fatalf("ping %s: %v", dst, err)
			}
		}
		ln, err := lb.Listen("tcp", ":2222")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Write([]byte("ssh-ok\n"))
				conn.Close()
			}
		}()
		for _, dst := range []string{testnet.VIP + ":2222", testnet.LBAddr(1).String() + ":2222"} {
			conn, err := ag.DialContext(ctx, "tcp", dst)
			if err != nil {
				t.Fatalf("service on lb-1 %s: %v", dst, err)
			}
			buf := make([]byte, 7)
			n, _ := conn.Read(buf)
			conn.Close()
			if string(buf[:n]) != "ssh-ok\n" {
				t.Fatalf("service on lb-1 %s answered %q", dst, buf[:n])
			}
		}
		// lb-1's own connections: to a server's API port (the same port
		// the frontend forwards), and to an agent.
		cl := &agent.Client{TLS: c.clients[0].TLS, DialContext: lb.DialContext}
		for i := 1; i <= 3; i++ {
			name, err := cl.Whoami(ctx, fmt.Sprintf("https://%s:6443", testnet.ServerAddr(i)))
			if err != nil || name != fmt.Sprintf("server-%d", i) {
				t.Fatalf("lb-1's own connection to server-%d: %q %v", i, name, err)
			}
		}
		aln, err := ag.Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		defer aln.Close()
		go func() {
			if conn, err := aln.Accept(); err == nil {
				conn.Write([]byte("hi"))
				conn.Close()
			}
		}()
		conn, err := lb.DialContext(ctx, "tcp", net.JoinHostPort(testnet.AgentAddr(1).String(), "7000"))
		if err != nil {
			t.Fatalf("lb-1 to agent: %v", err)
		}
		conn.Close()
		// While all that happened, the balancer still balances.
		checkBalance(t, c, 90)
		st := c.status(lb)
		t.Logf("REPORT: other traffic: counters %v", st.Counters)
	})
}

// Scenario 7: the frontend is lb-1's own address (the guide's Nginx
// variant, no VIP): balance and failover work, and the node's own
// connections do not collide with SNAT ports.
func TestNodeAddressFrontend(t *testing.T) {
	forEachHook(t, clusterOpts{frontend: testnet.LBAddr(1), noVIP: true}, func(t *testing.T, c *cluster) {
		st := c.status(c.lb1())
		if st.FrontendIs != "node address" {
			t.Fatalf("frontend kind %q", st.FrontendIs)
		}
		reserved, _ := c.lb1().GetSysctl("net.ipv4.ip_local_reserved_ports")
		if !strings.Contains(reserved, strings.Split(st.SNATPorts, "-")[0]) {
			t.Fatalf("SNAT ports %s not reserved (ip_local_reserved_ports=%q)", st.SNATPorts, reserved)
		}
		checkBalance(t, c, 150)
		c.ServerProcess(3).Kill()
		r := c.balance(60)
		if r.Failures > 0 || r.Counts["server-3"] > 0 {
			t.Fatalf("after server-3 died: %v", r)
		}
		c.waitState(c.lb1(), testnet.ServerAddr(3), daemon.StateDown, fall*inter+time.Second)
		t.Logf("REPORT: node address frontend %s, snat %s", st.Frontend, st.SNATPorts)
	})
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
