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

// keepalivedConf renders the repo's sample packaging/keepalived.conf for
// one LB of this test: its state and priority, and a track script that
// checks this LB's own xdplb instance (never a process name: every
// namespace shares one PID namespace).
func keepalivedConf(t *testing.T, c *cluster, lb *testnet.Host, master bool) string {
	t.Helper()
	sample, err := os.ReadFile("../../packaging/keepalived.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(sample)
	in := c.lbs[lb]
	check := fmt.Sprintf("%s check --quiet --instance %s --bpffs %s", in.Bin, in.Name, in.BPFFS)
	conf = strings.Replace(conf, `script "/usr/local/bin/xdplb check --quiet"`, fmt.Sprintf("script %q", check), 1)
	if !master {
		conf = strings.Replace(conf, "state MASTER", "state BACKUP", 1)
		conf = strings.Replace(conf, "priority 200", "priority 100", 1)
	}
	if !strings.Contains(conf, check) {
		t.Fatal("sample keepalived.conf no longer has the track script line this test rewrites")
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

// Scenario 8: the guide's keepalived on lb-1 (MASTER, 200) and lb-2
// (BACKUP, 100) with `xdplb check` as the track script. Killing lb-1's
// daemon, or taking all its backends away, moves the VIP to lb-2 within
// 4 s and new connections work through it; when lb-1 recovers, preemption
// brings the VIP back and that works too.
func TestKeepalivedFailover(t *testing.T) {
	for _, h := range hookCases {
		t.Run(h.name, func(t *testing.T) {
			c := newCluster(t, clusterOpts{hook: h, noVIP: true})
			lb1, lb2 := c.LB(1), c.LB(2)
			c.startLB(lb1)
			c.startLB(lb2)
			startKeepalived(t, c, lb1, true)
			startKeepalived(t, c, lb2, false)
			waitVIP(t, c, lb1, 15*time.Second)
			// The first election may hand the VIP to lb-2 for a moment;
			// wait until the agents' and servers' ARP caches follow lb-1
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

			failover := func(what string, fail func(), recover func()) {
				sets := c.watch(9)
				probe := startProber(c)
				time.Sleep(300 * time.Millisecond)
				fail()
				took := waitVIP(t, c, lb2, 4*time.Second)
				time.Sleep(time.Second)
				if r := c.balance(30); r.Failures > 0 {
					t.Fatalf("%s: new connections through lb-2 failed: %v", what, r)
				}
				okN, failedN := probe.Stop()
				broken := 0
				for _, s := range report(sets) {
					if s.Broken {
						broken++
					}
				}
				t.Logf("REPORT: keepalived %s: VIP on lb-2 after %s; probe connections during the move: %d ok, %d failed; streams broken: %d/9 (no flow sync yet)",
					what, took.Round(time.Millisecond), okN, failedN, broken)
				for _, ws := range sets {
					ws.Stop()
				}

				probe = startProber(c)
				recover()
				back := waitVIP(t, c, lb1, 10*time.Second)
				time.Sleep(time.Second)
				if r := c.balance(30); r.Failures > 0 {
					t.Fatalf("%s: after preemption back to lb-1: %v", what, r)
				}
				okN, failedN = probe.Stop()
				t.Logf("REPORT: keepalived %s: recovered, VIP back on lb-1 after %s; probes %d ok, %d failed",
					what, back.Round(time.Millisecond), okN, failedN)
			}

			failover("daemon killed",
				func() { c.lbs[lb1].Kill() },
				func() { c.startLB(lb1) })

			blackholes := func(op string) {
				for i := 1; i <= 3; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					out, err := lb1.Exec(ctx, "ip", "route", op, "blackhole", testnet.ServerAddr(i).String()+"/32")
					cancel()
					if err != nil {
						t.Fatalf("ip route %s: %v %s", op, err, out)
					}
				}
			}
			failover("all backends unreachable from lb-1",
				func() { blackholes("add") },
				func() { blackholes("del") })
		})
	}
}
