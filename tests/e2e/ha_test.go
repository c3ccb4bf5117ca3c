package e2e

// Issue 11: the LB pair keeps every connection across failover and
// failback (flow sync, the resync gate, the planned handoff), and the VIP
// never disappears because of the backends (the all-down policy).

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	flowsync "github.com/xdplb/xdplb/control/sync"
	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// haWatch is how long each event's streams are watched after the VIP
// moved: breaks arrive late (the old holder's program forwards until the
// clients' neighbour entries move). XDPLB_E2E_HA_WATCH shortens it for a
// quick run.
var haWatch = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("XDPLB_E2E_HA_WATCH")); err == nil && d > 0 {
		return d
	}
	return 30 * time.Second
}()

const (
	haStreams   = 30
	haProbeRate = 20 // new connections a second
	// A new connection fails when it gets an error, or no answer within
	// haProbeTimeout (a K3s agent retries for longer).
	haProbeTimeout = 10 * time.Second
	// haInFlight bounds the new connections an event may fail: those
	// whose handshake was in flight when the VIP moved (see runEvent).
	haInFlight = 2
)

// newHACluster is the guide's pair: xdplb on lb-1 and lb-2 with flow sync
// to each other (the same key), the VIP left to keepalived.
func newHACluster(t *testing.T, h hookCase, extra ...string) *cluster {
	t.Helper()
	c := newCluster(t, clusterOpts{hook: h, noVIP: true, extra: extra})
	key := filepath.Join(t.TempDir(), "sync.key")
	syncKeys.Store(c, key)
	secret := make([]byte, 32)
	for i := range secret {
		secret[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(key, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lb1, lb2 := c.LB(1), c.LB(2)
	for _, p := range [][2]*testnet.Host{{lb1, lb2}, {lb2, lb1}} {
		in := c.lbs[p[0]]
		in.Config.Args = append(slices.Clone(in.Config.Args), "--sync-peer", p[1].IP().String(), "--sync-key-file", key)
		in.Config.ReadyTimeout = 30 * time.Second
	}
	return c
}

// syncKeys holds each HA cluster's key file.
var syncKeys sync.Map

func syncKeyPath(c *cluster) string {
	p, _ := syncKeys.Load(c)
	s, _ := p.(string)
	return s
}

// rateProber opens a new TLS connection through the VIP every 1/rate s,
// each in its own goroutine (one that hangs does not slow the others).
type rateProber struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       map[string]int
	maxLat     time.Duration
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startRateProber(c *cluster, rate int) *rateProber {
	p := &rateProber{stop: make(chan struct{}), errs: map[string]int{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			cl := c.clients[i%len(c.clients)]
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), haProbeTimeout)
				defer cancel()
				start := time.Now()
				_, err := cl.Whoami(ctx, c.url())
				lat := time.Since(start)
				p.mu.Lock()
				defer p.mu.Unlock()
				p.maxLat = max(p.maxLat, lat)
				if err != nil {
					p.failed.Add(1)
					p.errs[agent.Classify(err)+": "+shorten(err.Error(), 120)]++
				} else {
					p.ok.Add(1)
				}
			}()
		}
	}()
	return p
}

type probeResult struct {
	OK, Failed int64
	MaxLatency time.Duration
	Errors     map[string]int
}

func (p *rateProber) Stop() probeResult {
	close(p.stop)
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return probeResult{OK: p.ok.Load(), Failed: p.failed.Load(), MaxLatency: p.maxLat, Errors: p.errs}
}

func shorten(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// waitNeighbours waits until the neighbour entry for the VIP of every
// host (the agents and the servers) holds lb's MAC, and returns how long that took (a failure
// names the hosts that still point elsewhere).
func waitNeighbours(t *testing.T, c *cluster, lb *testnet.Host, limit time.Duration, hosts []*testnet.Host) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		var wrong []string
		for _, h := range hosts {
			mac, ok, err := h.Neighbor(testnet.VIPAddr())
			if err != nil {
				t.Fatal(err)
			}
			if !ok || mac.String() != lb.MAC.String() {
				wrong = append(wrong, fmt.Sprintf("%s: %v (ok %v)", h.Name, mac, ok))
			}
		}
		if len(wrong) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Errorf("neighbour entries for the VIP do not point at %s (%s) within %v: %s", lb.Name, lb.MAC, limit, strings.Join(wrong, "; "))
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// haEvent is one event of the sequence: act, then the VIP moves to to
// (or stays there when stays).
type haEvent struct {
	name  string
	to    *testnet.Host
	stays bool
	limit time.Duration // for the VIP to arrive
	act   func()
	// check, if set, runs once the VIP is where it should be.
	check func()
	// baseline: measured only (HAProxy + keepalived), no goal asserted.
	baseline bool
}

// haResult is what one event cost.
type haResult struct {
	Hook, Event      string
	Takeover         time.Duration
	Neighbours       time.Duration
	Streams, Broken  int
	MaxGap           time.Duration
	Probes           probeResult
	GoalGap, GoalMet bool
}

func (r haResult) String() string {
	move := fmt.Sprintf("VIP moved in %v", r.Takeover.Round(time.Millisecond))
	if r.Takeover == 0 {
		move = "VIP stayed"
	}
	return fmt.Sprintf("%s: %s, neighbour entries followed %v later; streams broken %d/%d, worst heartbeat gap %v (goal <= takeover + 1s: %v); "+
		"new connections %d ok, %d failed (slowest %v)%s",
		r.Event, move, r.Neighbours.Round(time.Millisecond), r.Broken, r.Streams, r.MaxGap.Round(time.Millisecond), r.GoalGap,
		r.Probes.OK, r.Probes.Failed, r.Probes.MaxLatency.Round(time.Millisecond), errSummary(r.Probes.Errors))
}

func errSummary(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%dx %s", v, k))
	}
	sort.Strings(parts)
	return " [" + strings.Join(parts, "; ") + "]"
}

// runEvent opens haStreams streams and starts the new connections, acts,
// waits for the VIP and the neighbour entries, watches for haWatch after
// the VIP moved, and reports.
func runEvent(t *testing.T, c *cluster, hook string, ev haEvent) haResult {
	t.Helper()
	sets := c.watch(haStreams)
	time.Sleep(time.Second)
	probe := startRateProber(c, haProbeRate)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	ev.act()
	var took time.Duration
	if ev.stays {
		stays(t, c, ev.to, 5*time.Second, ev.name)
	} else {
		took = waitVIP(t, c, ev.to, ev.limit+slack)
	}
	moved := start.Add(took)
	// The servers talk to the VIP only through xdplb (full NAT from the
	// VIP); HAProxy connects to them from the LB's own address.
	hosts := append(append([]*testnet.Host{}, c.Agents...), c.Servers...)
	if ev.baseline {
		hosts = c.Agents
	}
	neigh := waitNeighbours(t, c, ev.to, 15*time.Second, hosts)
	if ev.check != nil {
		ev.check()
	}
	time.Sleep(time.Until(moved.Add(haWatch)))
	res := haResult{Hook: hook, Event: ev.name, Takeover: took, Neighbours: neigh}
	for _, ws := range sets {
		rep := ws.Stop()
		res.Streams += rep.Streams
		res.Broken += rep.Broken
		res.MaxGap = max(res.MaxGap, rep.MaxGap)
	}
	res.Probes = probe.Stop()
	res.GoalGap = res.MaxGap <= took+time.Second
	t.Logf("REPORT: HA %s %s", hook, res)
	if ev.baseline {
		return res
	}
	if res.Broken > 0 {
		_, detail := brokenStreams(sets)
		t.Errorf("%s: %d/%d streams broke: %v", ev.name, res.Broken, res.Streams, detail[:min(len(detail), 5)])
	}
	// The goal is 0. A connection whose handshake is in flight when the
	// neighbour entries switch can fail: the data path reports a
	// connection once established (half-open ones are never synced), so
	// the new holder answers the handshake's last packets with a RST. At
	// 20 connections a second and a handshake plus sync lag of a few ms,
	// that is one connection in several events; more than haInFlight is
	// a defect.
	if res.Probes.Failed > haInFlight {
		t.Errorf("%s: %d new connections failed: %v", ev.name, res.Probes.Failed, res.Probes.Errors)
	}
	return res
}

// settle waits until connections through the VIP work five times in a
// row (the agents' and servers' neighbour entries follow the holder).
func settle(t *testing.T, c *cluster) {
	t.Helper()
	ok := 0
	for deadline := time.Now().Add(20 * time.Second); ok < 5; {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.clients[ok%len(c.clients)].Whoami(ctx, c.url())
		cancel()
		if err != nil {
			ok = 0
			if time.Now().After(deadline) {
				t.Fatalf("connections through the VIP do not settle: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		ok++
	}
}

// waitSync waits until lb's flow sync is in sync and its gate open.
func waitSync(t *testing.T, c *cluster, lb *testnet.Host, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := c.status(lb)
		if st.Sync != nil && st.Sync.State == "in sync" && st.Sync.GateOpen {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not in sync within %v: %+v", lb.Name, limit, st.Sync)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func blackholes(t *testing.T, lb *testnet.Host, op string) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		lbExec(t, lb, "ip", "route", op, "blackhole", testnet.ServerAddr(i).String()+"/32")
	}
}

// TestKeepalivedFailover (issue 11 §4): the packaged keepalived.conf on
// lb-1 (MASTER, 200) and lb-2 (BACKUP, 100), xdplb with flow sync on both.
// Each event runs with 30 watch streams and 20 new connections a second
// through the VIP, and is watched for 30 s after the VIP moved: lb-1's
// daemon killed, lb-1 back (it preempts after its resync), lb-1's eth1
// down and back, a planned stop of lb-1's daemon and its start, every
// backend unreachable from lb-1 and reachable again, every backend
// unreachable from both (the VIP stays; connections fail open). Goal for
// each: no stream broken, no new connection failed, a heartbeat gap of at
// most the takeover time + 1 s. Then churn through lb-1 (sync lag, and
// the share of lb-1's connections on lb-2 a second later) and, on the
// first hook, bad peers.
func TestKeepalivedFailover(t *testing.T) {
	var all []haResult
	for i, h := range hookCases {
		t.Run(h.name, func(t *testing.T) {
			all = append(all, runHA(t, h, i == 0)...)
		})
	}
	for _, r := range all {
		t.Logf("REPORT: HA summary %s %s", r.Hook, r)
	}
}

func runHA(t *testing.T, h hookCase, badPeers bool) []haResult {
	c := newHACluster(t, h)
	lb1, lb2 := c.LB(1), c.LB(2)
	in1 := c.lbs[lb1]
	start := time.Now()
	c.startLB(lb1)
	lone := time.Since(start)
	c.startLB(lb2)
	startKeepalived(t, c, lb1, true)
	waitVIP(t, c, lb1, 20*time.Second)
	startKeepalived(t, c, lb2, false)
	stays(t, c, lb1, 3*time.Second, "lb-2's keepalived started")
	settle(t, c)
	waitSync(t, c, lb2, 10*time.Second)
	t.Logf("REPORT: HA %s: a lone lb-1 passed its check %v after its start (no peer answered)", h.name, lone.Round(time.Millisecond))

	// Starting lb-1's daemon again: the check fails until its resync from
	// lb-2 is done; then keepalived (rise 2) makes it MASTER again.
	startLB1 := func() {
		go func() {
			if err := in1.Start(); err != nil {
				t.Errorf("start lb-1 again: %v", err)
			}
		}()
	}
	var stopErr error
	var stopped sync.WaitGroup
	events := []haEvent{
		{name: "lb-1's daemon killed (SIGKILL)", to: lb2, limit: 15 * time.Second, act: func() { in1.Kill() }},
		{name: "failback: lb-1's daemon back, preempts after its resync", to: lb1, limit: 25 * time.Second, act: startLB1,
			check: func() {
				st := c.status(lb1)
				if st.Sync == nil || st.Sync.LastResync == nil || !st.Sync.LastResync.FullTable {
					t.Errorf("lb-1 took the VIP back without a full resync from lb-2: %+v", st.Sync)
				} else if tk := st.Sync.LastTakeover; tk != nil {
					t.Logf("REPORT: HA %s: lb-1's resync carried %d connections in %.1fms; %d established connections were ready at its takeover",
						h.name, st.Sync.LastResync.Connections, st.Sync.LastResync.DurationMS, tk.ConnectionsReady)
				}
			}},
		{name: "lb-1's eth1 down", to: lb2, limit: 15 * time.Second, act: func() { lbExec(t, lb1, "ip", "link", "set", "eth1", "down") }},
		{name: "lb-1's eth1 back, preempts after its resync", to: lb1, limit: 25 * time.Second,
			act: func() { lbExec(t, lb1, "ip", "link", "set", "eth1", "up") }},
		{name: "planned stop of lb-1's daemon (SIGTERM)", to: lb2, limit: 15 * time.Second, act: func() {
			stopped.Add(1)
			go func() { defer stopped.Done(); stopErr = in1.Stop(20 * time.Second) }()
		}, check: func() {
			stopped.Wait()
			p := in1.Process()
			if stopErr != nil || !strings.Contains(p.Stderr(), "stopping: handed over") {
				t.Errorf("planned stop: %v\n%s", stopErr, tail(p.Stderr()))
			}
		}},
		{name: "lb-1's daemon started again, preempts after its resync", to: lb1, limit: 25 * time.Second, act: startLB1},
		{name: "every backend unreachable from lb-1 only", to: lb2, limit: 15 * time.Second,
			act: func() { blackholes(t, lb1, "add") },
			check: func() {
				if out, err := c.xdplb(lb1, "check"); err != nil {
					t.Errorf("check on lb-1 without backends: %v %s (it still forwards)", err, out)
				}
			}},
		{name: "every backend reachable from lb-1 again", to: lb1, limit: 15 * time.Second, act: func() { blackholes(t, lb1, "del") }},
		{name: "every backend unreachable from both LBs (the VIP stays, connections fail open)", to: lb1, stays: true,
			act: func() {
				blackholes(t, lb1, "add")
				blackholes(t, lb2, "add")
			},
			check: func() {
				deadline := time.Now().Add(fall*inter + 5*time.Second)
				for _, lb := range []*testnet.Host{lb1, lb2} {
					for !c.status(lb).FailingOpen {
						if time.Now().After(deadline) {
							t.Errorf("%s does not say it fails open: %+v", lb.Name, c.status(lb).Backends)
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
					if _, err := c.xdplb(lb, "check", "--backends"); err == nil {
						t.Errorf("check --backends passes on %s with every backend unreachable", lb.Name)
					}
					if out, err := c.xdplb(lb, "check"); err != nil {
						t.Errorf("check fails on %s with every backend unreachable: %s", lb.Name, out)
					}
				}
				if out, _ := c.xdplb(lb1, "status"); !strings.Contains(out, "FAILING OPEN") {
					t.Errorf("status does not say failing open:\n%s", out)
				}
			}},
	}
	var results []haResult
	for _, ev := range events {
		results = append(results, runEvent(t, c, h.name, ev))
		if t.Failed() && os.Getenv("XDPLB_E2E_HA_GO_ON") == "" {
			t.Logf("stopping the sequence after a failure (XDPLB_E2E_HA_GO_ON=1 goes on)")
			return results
		}
	}
	blackholes(t, lb1, "del")
	blackholes(t, lb2, "del")
	if !strings.Contains(in1.Process().Stderr(), "takeover: the VIP arrived on this node") {
		t.Errorf("lb-1 did not log its takeovers")
	}
	churn(t, c, h.name)
	if badPeers {
		resyncAtScale(t, c)
		badPeersTest(t, c)
	}
	return results
}

// resyncAtScale: 6000 connections through lb-1, then lb-2's daemon
// restarted: how long its resync from lb-1 takes, and its size. (The mock
// servers close a connection that does not start TLS within 10 s: it is
// all done within that.)
func resyncAtScale(t *testing.T, c *cluster) {
	t.Helper()
	lb2 := c.LB(2)
	in2 := c.lbs[lb2]
	const perAgent, workers = 2000, 16
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	start := time.Now()
	for _, a := range c.Agents {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perAgent; i += workers {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					conn, err := a.DialContext(ctx, "tcp4", c.front.String()+":6443")
					cancel()
					if err == nil {
						mu.Lock()
						conns = append(conns, conn)
						mu.Unlock()
					}
				}
			}()
		}
	}
	wg.Wait()
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	opened := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	if err := in2.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop lb-2: %v", err)
	}
	restart := time.Now()
	if err := in2.Start(); err != nil {
		t.Fatalf("start lb-2: %v", err)
	}
	ready := time.Since(restart)
	st := c.status(lb2).Sync
	if st == nil || st.LastResync == nil {
		t.Fatalf("lb-2 has no resync after its restart: %+v", st)
	}
	t.Logf("REPORT: HA resync at scale: %d connections opened through lb-1 in %v; lb-2's daemon restarted: its check passed %v after its start, "+
		"its resync carried %d connections in %.0fms (whole table: %v)",
		len(conns), opened.Round(time.Millisecond), ready.Round(time.Millisecond), st.LastResync.Connections, st.LastResync.DurationMS, st.LastResync.FullTable)
	if st.LastResync.Connections < uint64(len(conns)) {
		t.Errorf("lb-2's resync carried %d connections, fewer than the %d open", st.LastResync.Connections, len(conns))
	}
}

// procCPU is a process's user + system CPU time.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}

// churn: 3 agents open and close connections through lb-1 as fast as they
// can for 10 s (each worker holds up to 16 open) while 30 streams stay;
// then the sync lag, and the share of lb-1's established connections that
// lb-2 has 1 s after the churn stopped.
func churn(t *testing.T, c *cluster, hook string) {
	t.Helper()
	lb1, lb2 := c.LB(1), c.LB(2)
	sets := c.watch(haStreams)
	time.Sleep(time.Second)
	st1 := c.status(lb1).Sync
	p1, p2 := c.lbs[lb1].Process().PID(), c.lbs[lb2].Process().PID()
	time.Sleep(3 * time.Second)
	idle1, idle2 := procCPU(t, p1), procCPU(t, p2)
	time.Sleep(5 * time.Second)
	idle1, idle2 = procCPU(t, p1)-idle1, procCPU(t, p2)-idle2
	cpu1, cpu2 := procCPU(t, p1), procCPU(t, p2)

	const workers, pool, d = 8, 16, 10 * time.Second
	var opened, failed atomic.Int64
	var mu sync.Mutex
	var left []net.Conn
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for _, a := range c.Agents {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var held []net.Conn
				for time.Now().Before(end) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					conn, err := a.DialContext(ctx, "tcp4", c.front.String()+":6443")
					cancel()
					if err != nil {
						failed.Add(1)
						continue
					}
					opened.Add(1)
					held = append(held, conn)
					if len(held) > pool {
						held[0].Close()
						held = held[1:]
					}
				}
				mu.Lock()
				left = append(left, held...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	defer func() {
		for _, conn := range left {
			conn.Close()
		}
	}()
	cpu1, cpu2 = procCPU(t, p1)-cpu1, procCPU(t, p2)-cpu2
	time.Sleep(time.Second)
	rows1, rows2 := flows(t, c, lb1), flows(t, c, lb2)
	on2 := map[string]bool{}
	for _, r := range rows2 {
		on2[r.Client+" "+r.Backend+" "+r.SNAT] = true
	}
	est, present := 0, 0
	for _, r := range rows1 {
		if r.State != "established" || r.HalfOpen {
			continue
		}
		est++
		if on2[r.Client+" "+r.Backend+" "+r.SNAT] {
			present++
		}
	}
	s1 := c.status(lb1).Sync
	broken, _ := brokenStreams(sets)
	for _, ws := range sets {
		ws.Stop()
	}
	sent := s1.Counters["flows_sent"] - st1.Counters["flows_sent"]
	rate := float64(sent) / d.Seconds()
	share := 100 * float64(present) / float64(max(est, 1))
	per1k := func(cpu, idle time.Duration) float64 {
		busy := cpu - idle*d/(5*time.Second)
		return float64(busy.Milliseconds()) / d.Seconds() / 1000 / max(rate/1000, 1e-9) * 100
	}
	t.Logf("REPORT: HA %s churn: %d connections opened through lb-1 in %v (%d failed; %.0f/s), %d changes sent (%.0f/s), events lost %d; "+
		"sync lag p50 %.2fms p99 %.2fms (over the last %d changes); %d of lb-1's %d established connections on lb-2 1s after the churn (%.2f%%, goal >= 99.9%%); "+
		"streams broken %d/%d; daemon CPU during the churn: lb-1 (sends) %v, lb-2 (installs) %v, i.e. %.1f%% and %.1f%% of a core per 1000 changes/s",
		hook, opened.Load(), d, failed.Load(), float64(opened.Load())/d.Seconds(), sent, rate, s1.Counters["events_lost"]-st1.Counters["events_lost"],
		s1.LagP50MS, s1.LagP99MS, s1.LagSamples, present, est, share, broken, haStreams, cpu1, cpu2, per1k(cpu1, idle1), per1k(cpu2, idle2))
	if share < 99.9 {
		t.Errorf("only %.2f%% of lb-1's established connections are on lb-2 1s after the churn", share)
	}
	if broken > 0 {
		t.Errorf("%d streams broke during the churn", broken)
	}
}

// badPeersTest (issue 11 §4): forged, replayed, truncated, oversized and
// garbage frames, and well-signed connections of another frontend or of a
// backend lb-1 does not have, from the peer's address (lb-2) and from a
// third host (agent-1), sent to lb-1's sync port: nothing installed,
// each counted by reason.
func badPeersTest(t *testing.T, c *cluster) {
	t.Helper()
	lb1, lb2 := c.LB(1), c.LB(2)
	target := lb1.IP().String() + ":6450"
	before := c.status(lb1).Sync
	tries := 0
	for _, from := range []*testnet.Host{lb2, c.Agent(1)} {
		for _, attack := range syncAttacks(c) {
			tries++
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := from.DialContext(ctx, "tcp4", target)
			cancel()
			if err != nil {
				t.Fatalf("dial lb-1's sync port from %s: %v", from.Name, err)
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			attack.run(t, conn)
			conn.Close()
		}
	}
	time.Sleep(time.Second)
	after := c.status(lb1).Sync
	diff := map[string]uint64{}
	for r, n := range after.Dropped {
		if d := n - before.Dropped[r]; d > 0 {
			diff[r] = d
		}
	}
	installed := after.Counters["flows_installed"] - before.Counters["flows_installed"]
	for _, r := range flows(t, c, lb1) {
		if strings.HasPrefix(r.Client, "10.10.10.150:") || strings.HasPrefix(r.Backend, "10.10.10.77") {
			t.Errorf("a bad peer's connection is in lb-1's table: %+v", r)
		}
	}
	t.Logf("REPORT: HA bad peers: %d attempts (7 kinds from lb-2's address, 7 from agent-1): installed %d; refused by reason %v", tries, installed, diff)
	want := map[string]uint64{"not_peer": 7, "bad_mac": 2, "replayed": 1, "truncated": 1, "oversized": 1, "garbage": 1, "foreign_frontend": 1, "unknown_backend": 1}
	for r, n := range want {
		if diff[r] < n {
			t.Errorf("refusals %s: %d, want at least %d (all: %v)", r, diff[r], n, diff)
		}
	}
	if installed != 0 {
		t.Errorf("%d connections of bad peers installed", installed)
	}
	js, _ := json.Marshal(after.Dropped)
	t.Logf("REPORT: HA bad peers: lb-1's refusals since start %s", js)
}

// syncAttack is one bad peer's attempt on a sync port.
type syncAttack struct {
	name string
	run  func(t *testing.T, conn net.Conn)
}

// recorder keeps every byte written to a connection, and the last write.
type recorder struct {
	net.Conn
	mu       sync.Mutex
	all      []byte
	lastSent []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	r.all = append(r.all, b...)
	r.lastSent = slices.Clone(b)
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func syncAttacks(c *cluster) []syncAttack {
	key, _ := os.ReadFile(syncKeyPath(c))
	key = []byte(strings.TrimSpace(string(key)))
	front := lab.Frontend()
	state := flowsync.EncodeState(flowsync.NodeState{Frontend: front, SNATLo: 6444, SNATHi: 65535})
	var recorded []byte
	legit := func(conn net.Conn) (*flowsync.Conn, *recorder, error) {
		rec := &recorder{Conn: conn}
		sc, err := flowsync.Handshake(rec, key, flowsync.Dialer)
		if err != nil {
			return nil, nil, err
		}
		return sc, rec, sc.Send(flowsync.MsgState, state)
	}
	record := func(mutate func(*flowsync.Record)) flowsync.Record {
		r := flowsync.Record{Kind: flowsync.Upsert, State: flowsync.StateEstablished, Frontend: front,
			Client: netip.MustParseAddrPort("10.10.10.150:41000"), Backend: netip.AddrPortFrom(testnet.ServerAddr(1), 6443),
			SNATPort: 30000, CreatedNs: 1, LastSeenNs: 1}
		mutate(&r)
		return r
	}
	return []syncAttack{
		{"forged (wrong key)", func(t *testing.T, conn net.Conn) {
			flowsync.Handshake(conn, []byte("not the pair's key but long enough to be one"), flowsync.Dialer)
		}},
		{"replayed frame", func(t *testing.T, conn net.Conn) {
			_, rec, err := legit(conn)
			if err != nil {
				return // from the third host: refused at once
			}
			recorded = slices.Clone(rec.all)
			conn.Write(rec.lastSent)
			time.Sleep(200 * time.Millisecond)
		}},
		{"replayed session", func(t *testing.T, conn net.Conn) {
			if recorded != nil {
				conn.Write(recorded)
			}
			time.Sleep(200 * time.Millisecond)
		}},
		{"truncated", func(t *testing.T, conn net.Conn) {
			conn.Write([]byte("XS\x01\x01\x00\x00\x00\x24\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01"))
			conn.(interface{ CloseWrite() error }).CloseWrite()
			time.Sleep(200 * time.Millisecond)
		}},
		{"oversized", func(t *testing.T, conn net.Conn) {
			conn.Write([]byte("XS\x01\x01\x7f\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"))
			time.Sleep(200 * time.Millisecond)
		}},
		{"garbage", func(t *testing.T, conn net.Conn) {
			conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: lb-1\r\n\r\n"))
			time.Sleep(200 * time.Millisecond)
		}},
		{"well-signed foreign connections", func(t *testing.T, conn net.Conn) {
			sc, _, err := legit(conn)
			if err != nil {
				return
			}
			sc.Send(flowsync.MsgFlows, flowsync.EncodeFlows([]flowsync.Record{
				record(func(r *flowsync.Record) { r.Frontend = netip.MustParseAddrPort("10.10.10.200:6443") }),
				record(func(r *flowsync.Record) { r.Backend = netip.MustParseAddrPort("10.10.10.77:6443") }),
			}, 10))
			time.Sleep(300 * time.Millisecond)
		}},
	}
}

// TestAllServersDown (issue 11 §3): with the packaged keepalived.conf on
// both LBs, every server's API process dies for 12 s. The VIP stays up
// throughout (both nodes fail `check --backends` and keep their
// priorities' order); new connections fail open: they are refused at
// once with a RST rather than hanging; when the servers return,
// connections succeed again. Measured: the VIP in every 100 ms sample, how
// long a failing connection took to fail, how long after the servers came
// back connections succeeded.
func TestAllServersDown(t *testing.T) {
	c := newHACluster(t, hookCases[0])
	lb1, lb2 := c.LB(1), c.LB(2)
	c.startLB(lb1)
	c.startLB(lb2)
	startKeepalived(t, c, lb1, true)
	waitVIP(t, c, lb1, 20*time.Second)
	startKeepalived(t, c, lb2, false)
	stays(t, c, lb1, 3*time.Second, "lb-2's keepalived started")
	settle(t, c)

	type sample struct {
		at, took time.Duration
		err      error
	}
	var (
		mu      sync.Mutex
		samples []sample
		noVIP   int
		polls   int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t0 := time.Now()
	wg.Add(2)
	go func() { // the VIP, every 100 ms
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			held := hasVIP(t, lb1) || hasVIP(t, lb2)
			mu.Lock()
			polls++
			if !held {
				noVIP++
			}
			mu.Unlock()
		}
	}()
	go func() { // a new connection every 100 ms
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				at := time.Since(t0)
				start := time.Now()
				_, err := c.clients[i%len(c.clients)].Whoami(ctx, c.url())
				mu.Lock()
				samples = append(samples, sample{at, time.Since(start), err})
				mu.Unlock()
			}()
		}
	}()
	time.Sleep(2 * time.Second)
	down := time.Since(t0)
	for i := 1; i <= 3; i++ {
		c.ServerProcess(i).Kill()
	}
	time.Sleep(8 * time.Second)
	st1, st2 := c.status(lb1), c.status(lb2) // mid-outage
	time.Sleep(4 * time.Second)
	up := time.Since(t0)
	for i := 1; i <= 3; i++ {
		c.startServer(i)
	}
	time.Sleep(5 * time.Second)
	close(stop)
	wg.Wait()

	var failLat []time.Duration
	timeouts, resets, okAfter, failAfter := 0, 0, 0, 0
	var firstOK time.Duration = -1
	for _, s := range samples {
		switch {
		case s.at >= down+fall*inter+time.Second && s.at < up:
			if s.err == nil {
				continue
			}
			failLat = append(failLat, s.took)
			if agent.Classify(s.err) == agent.ClassTimeout {
				timeouts++
			} else {
				resets++
			}
		case s.at >= up:
			if s.err == nil {
				okAfter++
				if firstOK < 0 || s.at-up < firstOK {
					firstOK = s.at - up
				}
			} else if s.at >= up+time.Second {
				failAfter++
			}
		}
	}
	sort.Slice(failLat, func(i, j int) bool { return failLat[i] < failLat[j] })
	q := func(p float64) time.Duration {
		if len(failLat) == 0 {
			return 0
		}
		return failLat[min(int(p*float64(len(failLat))), len(failLat)-1)]
	}
	t.Logf("REPORT: every server down for 12s: the VIP on an LB in %d of %d samples; lb-1 failing open %v, lb-2 %v; "+
		"new connections while down: %d failed (%d refused at once or reset, %d timed out after 5s), time to fail p50 %v p90 %v max %v; "+
		"servers back: first connection through %v later, %d ok and %d failed from 1s later",
		polls-noVIP, polls, st1.FailingOpen, st2.FailingOpen, len(failLat), resets, timeouts,
		q(0.5).Round(time.Millisecond), q(0.9).Round(time.Millisecond), q(1).Round(time.Millisecond), firstOK.Round(time.Millisecond), okAfter, failAfter)
	if noVIP > 0 {
		t.Errorf("the VIP was on no LB in %d of %d samples", noVIP, polls)
	}
	if !st1.FailingOpen || !st2.FailingOpen {
		t.Errorf("with every server down: lb-1 failing open %v, lb-2 %v", st1.FailingOpen, st2.FailingOpen)
	}
	if failAfter > 0 {
		t.Errorf("%d new connections failed more than 1s after the servers came back", failAfter)
	}
}

// TestSyncSettingsRefused (issue 11 §1): flow sync without a usable key,
// with the VIP or this node as the peer, or with the node's own address as
// the frontend, refuses to start, says why, and leaves nothing attached.
func TestSyncSettingsRefused(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	dir := t.TempDir()
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("0123456789abcdef\n"), 0o600)
	good := filepath.Join(dir, "good.key")
	os.WriteFile(good, []byte(strings.Repeat("ab", 32)), 0o600)
	fifo := filepath.Join(dir, "fifo.key")
	if err := exec.Command("mkfifo", fifo).Run(); err != nil {
		t.Fatal(err)
	}
	base := in.RunArgs()
	plus := func(args ...string) []string { return append(slices.Clone(base), args...) }
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no key", plus("--sync-peer", "10.10.10.99"), "sync-peer: needs sync-key-file"},
		{"a key without a peer", plus("--sync-key-file", good), "sync-key-file: used only with sync-peer"},
		{"a short key", plus("--sync-peer", "10.10.10.99", "--sync-key-file", short), "the key is 16 characters; want at least 32"},
		{"a missing key", plus("--sync-peer", "10.10.10.99", "--sync-key-file", filepath.Join(dir, "none")), "sync-key-file"},
		{"a key that is a FIFO", plus("--sync-peer", "10.10.10.99", "--sync-key-file", fifo), "not a regular file (a FIFO)"},
		{"the VIP as the peer", plus("--sync-peer", testnet.VIP, "--sync-key-file", good), "is the vip"},
		{"this node as the peer", plus("--sync-peer", lb.IP().String(), "--sync-key-file", good), "is this node's own address"},
		{"the node's own address as the frontend",
			append(with(base, "--vip", lb.IP().String()), "--sync-peer", "10.10.10.99", "--sync-key-file", good),
			"flow sync moves connections with a floating VIP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runExpectingError(t, c, lb, tc.args, tc.msg)
			clean(t, c, lb, tc.name)
		})
	}
}
