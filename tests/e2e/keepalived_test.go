package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/testnet"
)

// keepalivedConf renders the repo's sample packaging/keepalived.conf (or
// the one $XDPLB_E2E_KEEPALIVED_CONF names: the VM matrix gives the one
// the .deb installed) for one LB of this test: its state, and track
// scripts that check this LB's own xdplb instance (never a process name:
// every namespace shares one PID namespace).
func keepalivedConf(t *testing.T, c *cluster, lb *testnet.Host, master bool) string {
	t.Helper()
	file := "../../packaging/keepalived.conf"
	if f := os.Getenv("XDPLB_E2E_KEEPALIVED_CONF"); f != "" {
		file = f
	}
	sample, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(sample)
	in := c.lbs[lb]
	for _, script := range []struct{ sample, args string }{
		{`script "/usr/bin/xdplb check --quiet"`, "check --quiet"},
		{`script "/usr/bin/xdplb check --backends --quiet"`, "check --backends --quiet"},
	} {
		line := fmt.Sprintf("script %q", fmt.Sprintf("%s %s --instance %s --bpffs %s", in.Bin, script.args, in.Name, in.BPFFS))
		if !strings.Contains(conf, script.sample) {
			t.Fatalf("sample keepalived.conf no longer has the track script line this test rewrites: %s", script.sample)
		}
		conf = strings.Replace(conf, script.sample, line, 1)
	}
	if !master {
		conf = strings.Replace(conf, "state MASTER", "state BACKUP", 1)
	}
	if !strings.Contains(conf, "priority 100") || !strings.Contains(conf, "weight -50") {
		t.Fatal("sample keepalived.conf: want priority 100 on both nodes and the backends check weighted -50")
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func startKeepalived(t *testing.T, c *cluster, lb *testnet.Host, master bool) *testnet.Process {
	t.Helper()
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatal("keepalived is not installed (make test installs it: apt-get install keepalived)")
	}
	conf := keepalivedConf(t, c, lb, master)
	dir := filepath.Dir(conf)
	p, err := lb.Start("keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
		"--use-file", conf, "--pid", filepath.Join(dir, "keepalived.pid"),
		"--vrrp_pid", filepath.Join(dir, "vrrp.pid"), "--checkers_pid", filepath.Join(dir, "checkers.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func hasVIP(t *testing.T, h *testnet.Host) bool {
	addrs, err := h.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Addr() == testnet.VIPAddr() {
			return true
		}
	}
	return false
}

// waitVIP waits until the VIP is on want and on no other LB.
func waitVIP(t *testing.T, c *cluster, want *testnet.Host, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok := hasVIP(t, want)
		for _, lb := range c.LBs {
			if lb != want && hasVIP(t, lb) {
				ok = false
			}
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("VIP not on %s alone within %s", want.Name, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prober makes a new connection through the VIP every 50 ms and counts
// failures, until stopped.
type prober struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startProber(c *cluster) *prober {
	p := &prober{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := c.clients[i%len(c.clients)].Whoami(ctx, c.url())
			cancel()
			if err != nil {
				p.failed.Add(1)
			} else {
				p.ok.Add(1)
			}
		}
	}()
	return p
}

func (p *prober) Stop() (ok, failed int64) {
	close(p.stop)
	p.wg.Wait()
	return p.ok.Load(), p.failed.Load()
}

// stays asserts the VIP stays on lb, alone, for d.
func stays(t *testing.T, c *cluster, lb *testnet.Host, d time.Duration, why string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if !hasVIP(t, lb) {
			t.Fatalf("%s: the VIP left %s", why, lb.Name)
		}
		for _, other := range c.LBs {
			if other != lb && hasVIP(t, other) {
				t.Fatalf("%s: the VIP is on %s too", why, other.Name)
			}
		}
	}
}

// Scenario 8: the sample keepalived.conf on lb-1 (MASTER) and lb-2
// (BACKUP), both priority 100, with `xdplb check` unweighted and `xdplb
// check --backends` weighted -50 as track scripts. Killing the master's
// daemon moves the VIP within 4 s (FAULT); when it comes back, the tie
// keeps the VIP where it is. The master losing every backend lowers its
// priority: the VIP moves to the LB that reaches them; when every LB has
// lost them, the VIP stays where it is (never dropped because of the
// backends).
func TestKeepalivedFailover(t *testing.T) {
	for _, h := range hookCases {
		t.Run(h.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{hook: h, noVIP: true})
			lb1, lb2 := c.LB(1), c.LB(2)
			c.startLB(lb1)
			c.startLB(lb2)
			// lb-1 first: with equal priorities, a tie at the first
			// election would go to the higher address (lb-2).
			startKeepalived(t, c, lb1, true)
			waitVIP(t, c, lb1, 15*time.Second)
			startKeepalived(t, c, lb2, false)
			time.Sleep(3 * time.Second)
			waitVIP(t, c, lb1, time.Second)
			// Wait until the agents' and servers' ARP caches follow lb-1
			// (five answers in a row) before measuring anything.
			settled := 0
			for deadline := time.Now().Add(15 * time.Second); settled < 5; {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := c.clients[settled%len(c.clients)].Whoami(ctx, c.url())
				cancel()
				if err != nil {
					settled = 0
					if time.Now().After(deadline) {
						t.Fatalf("connections through the VIP do not settle after the election: %v", err)
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
				settled++
			}
			if r := c.balance(30); r.Failures > 0 {
				t.Fatalf("through lb-1: %v", r)
			}

			// fail moves the VIP from one LB to the other within limit;
			// recover brings the failed LB back, and the VIP stays.
			move := func(what string, from, to *testnet.Host, limit time.Duration, fail, recover func()) {
				sets := c.watch(9)
				probe := startProber(c)
				time.Sleep(300 * time.Millisecond)
				fail()
				took := waitVIP(t, c, to, limit+slack) // slack: the VM matrix (TCG)
				time.Sleep(time.Second)
				if r := c.balance(30); r.Failures > 0 {
					t.Fatalf("%s: new connections through %s failed: %v", what, to.Name, r)
				}
				okN, failedN := probe.Stop()
				broken := 0
				for _, s := range report(sets) {
					if s.Broken {
						broken++
					}
				}
				for _, ws := range sets {
					ws.Stop()
				}
				t.Logf("REPORT: keepalived %s: VIP on %s after %s; probe connections during the move: %d ok, %d failed; streams broken: %d/9 (no flow sync yet)",
					what, to.Name, took.Round(time.Millisecond), okN, failedN, broken)
				recover()
				// A tie: the VIP stays where it is (rise 2 x interval 1s,
				// then several adverts).
				stays(t, c, to, 5*time.Second, what+", recovered")
				if r := c.balance(30); r.Failures > 0 {
					t.Fatalf("%s: after %s recovered: %v", what, from.Name, r)
				}
			}
			blackholes := func(lb *testnet.Host, op string) {
				for i := 1; i <= 3; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					out, err := lb.Exec(ctx, "ip", "route", op, "blackhole", testnet.ServerAddr(i).String()+"/32")
					cancel()
					if err != nil {
						t.Fatalf("ip route %s on %s: %v %s", op, lb.Name, err, out)
					}
				}
			}

			move("lb-1's daemon killed", lb1, lb2, 4*time.Second,
				func() { c.lbs[lb1].Kill() },
				func() { c.startLB(lb1) })
			// Backends down (fall x inter), the script failing twice (2 s),
			// then the backup's master-down interval (3 adverts and skew).
			move("every backend unreachable from lb-2", lb2, lb1, fall*inter+8*time.Second,
				func() {
					blackholes(lb2, "add")
					// lb-2 still forwards: it loses priority, not the VIP
					// by a fault.
					if out, err := c.xdplb(lb2, "check"); err != nil {
						t.Errorf("check on lb-2 without backends: %v %s", err, out)
					}
				},
				func() { blackholes(lb2, "del") })

			// Every LB loses every backend: the VIP stays where it is.
			blackholes(lb1, "add")
			blackholes(lb2, "add")
			deadline := time.Now().Add(fall*inter + 4*time.Second)
			for {
				_, err1 := c.xdplb(lb1, "check", "--backends")
				_, err2 := c.xdplb(lb2, "check", "--backends")
				if err1 != nil && err2 != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("check --backends still passes with every backend unreachable")
				}
				time.Sleep(100 * time.Millisecond)
			}
			stays(t, c, lb1, 5*time.Second, "every backend unreachable from both LBs")
			blackholes(lb1, "del")
			blackholes(lb2, "del")
			t.Log("REPORT: keepalived: every backend unreachable from both LBs: the VIP stayed on lb-1")
		})
	}
}
