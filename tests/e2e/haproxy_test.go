package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/testnet"
)

// TestHAProxyFailoverBaseline measures what issue 11 compares against:
// the K3s guide's HAProxy + keepalived (its haproxy.cfg, its
// keepalived.conf: priorities 200/100, a process check every 2 s) on the
// same network, events, streams and new connections as
// TestKeepalivedFailover. Nothing is asserted but that the VIP moves as
// the guide's configuration moves it. It runs with XDPLB_E2E_BASELINE=1
// (haproxy installed: apt-get install haproxy).
func TestHAProxyFailoverBaseline(t *testing.T) {
	if os.Getenv("XDPLB_E2E_BASELINE") == "" {
		t.Skip("a measurement for the closing note: XDPLB_E2E_BASELINE=1 runs it")
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy)")
	}
	c := newCluster(t, clusterOpts{hook: hookCases[0], noVIP: true})
	lb1, lb2 := c.LB(1), c.LB(2)
	dir := t.TempDir()
	var servers strings.Builder
	for i := 1; i <= 3; i++ {
		fmt.Fprintf(&servers, "    server server-%d %s:6443 check\n", i, testnet.ServerAddr(i))
	}
	// The guide's haproxy.cfg (global and defaults: what a foreground run
	// in a temp dir needs).
	cfg := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(cfg, []byte(`global
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend k3s-frontend
    bind *:6443
    mode tcp
    option tcplog
    default_backend k3s-backend

backend k3s-backend
    mode tcp
    option tcp-check
    balance roundrobin
    default-server inter 10s downinter 5s
`+servers.String()), 0o644)
	procs := map[*testnet.Host]*testnet.Process{}
	start := func(lb *testnet.Host) {
		p, err := lb.Start("haproxy", "-db", "-f", cfg)
		if err != nil {
			t.Fatal(err)
		}
		procs[lb] = p
		// The guide checks `killall -0 haproxy`; every namespace here
		// shares one PID namespace, so each LB checks its own process.
		os.WriteFile(filepath.Join(dir, lb.Name+".pid"), []byte(strconv.Itoa(p.PID())), 0o644)
		t.Cleanup(func() { p.Stop(3 * time.Second) })
	}
	start(lb1)
	start(lb2)
	for _, lb := range []*testnet.Host{lb1, lb2} {
		script := filepath.Join(dir, "chk-"+lb.Name)
		os.WriteFile(script, []byte("#!/bin/sh\nexec kill -0 \"$(cat "+filepath.Join(dir, lb.Name+".pid")+")\"\n"), 0o755)
		state, prio := "MASTER", 200
		if lb == lb2 {
			state, prio = "BACKUP", 100
		}
		conf := filepath.Join(dir, "keepalived-"+lb.Name+".conf")
		os.WriteFile(conf, []byte(fmt.Sprintf(`global_defs {
  enable_script_security
  script_user root
}
vrrp_script chk_haproxy {
    script "%s"
    interval 2
}
vrrp_instance haproxy-vip {
    interface eth1
    state %s
    priority %d
    virtual_router_id 51
    virtual_ipaddress {
        10.10.10.100/24
    }
    track_script {
        chk_haproxy
    }
}
`, script, state, prio)), 0o644)
		kdir := filepath.Join(dir, lb.Name)
		os.Mkdir(kdir, 0o755)
		if _, err := lb.Start("keepalived", "--dont-fork", "--log-console", "--vrrp", "--use-file", conf,
			"--pid", filepath.Join(kdir, "keepalived.pid"), "--vrrp_pid", filepath.Join(kdir, "vrrp.pid"),
			"--checkers_pid", filepath.Join(kdir, "checkers.pid")); err != nil {
			t.Fatal(err)
		}
		if lb == lb1 {
			waitVIP(t, c, lb1, 20*time.Second)
		}
	}
	stays(t, c, lb1, 3*time.Second, "lb-2's keepalived started")
	settle(t, c)

	events := []haEvent{
		{name: "lb-1's haproxy killed (SIGKILL)", to: lb2, limit: 15 * time.Second, act: func() { procs[lb1].Kill() }},
		{name: "failback: lb-1's haproxy back", to: lb1, limit: 15 * time.Second, act: func() { start(lb1) }},
		{name: "lb-1's eth1 down", to: lb2, limit: 15 * time.Second, act: func() { lbExec(t, lb1, "ip", "link", "set", "eth1", "down") }},
		{name: "lb-1's eth1 back", to: lb1, limit: 15 * time.Second, act: func() { lbExec(t, lb1, "ip", "link", "set", "eth1", "up") }},
		{name: "planned stop of lb-1's haproxy (SIGTERM)", to: lb2, limit: 15 * time.Second, act: func() { procs[lb1].Stop(5 * time.Second) }},
		{name: "lb-1's haproxy started again", to: lb1, limit: 15 * time.Second, act: func() { start(lb1) }},
		// The guide's keepalived does not look at the backends: the VIP
		// stays on lb-1 whatever it reaches.
		{name: "every backend unreachable from lb-1 only", to: lb1, stays: true, act: func() { blackholes(t, lb1, "add") }},
		{name: "every backend reachable from lb-1 again", to: lb1, stays: true, act: func() { blackholes(t, lb1, "del") }},
		{name: "every backend unreachable from both LBs", to: lb1, stays: true, act: func() {
			blackholes(t, lb1, "add")
			blackholes(t, lb2, "add")
		}},
	}
	var results []haResult
	for _, ev := range events {
		ev.baseline = true
		results = append(results, runEvent(t, c, "haproxy", ev))
	}
	blackholes(t, lb1, "del")
	blackholes(t, lb2, "del")
	for _, r := range results {
		t.Logf("REPORT: HA summary haproxy %s", r)
	}
}
