// Command demo shows xdplb at work on one machine: the K3s guide's network
// in network namespaces, three mock API servers, xdplb on lb-1 in front of
// them, agents making connections through the VIP. It prints xdplb's status
// while traffic flows, stops a server's API process and brings it back, and
// removes everything on exit or Ctrl-C. Run it with `sudo make demo`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/testnet"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bin, _ := filepath.Abs("bin")
	xdplb, mockapi := filepath.Join(bin, "xdplb"), filepath.Join(bin, "mockapi")
	for _, b := range []string{xdplb, mockapi} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run `make build` first (make demo does)", b)
		}
	}
	tmp, err := os.MkdirTemp("", "xdplb-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	say("building the K3s guide's network in namespaces: server-1..3, lb-1, agent-1..3")
	n, err := testnet.Create(testnet.Options{})
	if err != nil {
		return err
	}
	defer func() {
		say("cleaning up: detaching xdplb, removing namespaces")
		n.Close()
	}()
	topo, err := n.Build(testnet.Spec{Servers: 3, LBs: 1, Agents: 3, TxOffloadOff: true, PassXDPOnLBPeers: true})
	if err != nil {
		return err
	}
	lb := topo.LBs[0]
	if err := lb.AddAddr(testnet.VIP + "/24"); err != nil {
		return err
	}
	pki := filepath.Join(tmp, "pki")
	if out, err := exec.Command(mockapi, "--gen-pki", pki, "--san", testnet.VIP).CombinedOutput(); err != nil {
		return fmt.Errorf("gen pki: %v: %s", err, out)
	}
	servers := make([]*testnet.Process, 3)
	startServer := func(i int) error {
		h := topo.Servers[i]
		p, err := h.Start(mockapi, "--name", h.Name, "--cert", filepath.Join(pki, "server.crt"), "--key", filepath.Join(pki, "server.key"), "--public-readyz")
		if err != nil {
			return err
		}
		servers[i] = p
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return p.WaitOutput(wctx, "listening")
	}
	for i := range servers {
		if err := startServer(i); err != nil {
			return err
		}
	}

	bpffs := filepath.Join(tmp, "bpffs")
	os.MkdirAll(bpffs, 0o700)
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	defer unix.Unmount(bpffs, unix.MNT_DETACH)
	instance := "demo-" + n.Prefix
	cli := func(args ...string) (string, error) {
		c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		args = append(args[:1:1], append([]string{"--instance", instance, "--bpffs", bpffs}, args[1:]...)...)
		out, err := lb.Command(c, xdplb, args...).CombinedOutput()
		return string(out), err
	}
	defer cli("detach")
	args := []string{"run", "--instance", instance, "--bpffs", bpffs, "--iface", "eth1", "--vip", testnet.VIP,
		"--backend", "10.10.10.50", "--backend", "10.10.10.51", "--backend", "10.10.10.52",
		"--inter", "1s", "--rise", "2", "--fall", "3", "--metrics-addr", ""}
	say("starting: xdplb " + strings.Join(args, " "))
	daemon, err := lb.Start(xdplb, args...)
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		if _, err := cli("check"); err == nil {
			break
		}
		if daemon.Exited() || i > 100 {
			return fmt.Errorf("xdplb did not start: %s", daemon.Stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Agents: a new TLS connection through the VIP every 100 ms each.
	tlsCfg, err := agent.TLSConfig(filepath.Join(pki, "ca.crt"), "", "", false)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	counts := map[string]int{}
	failures := 0
	tctx, cancelTraffic := context.WithCancel(ctx)
	defer cancelTraffic()
	var wg sync.WaitGroup
	for _, a := range topo.Agents {
		cl := &agent.Client{TLS: tlsCfg, DialContext: a.DialContext, Timeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				name, err := cl.Whoami(tctx, "https://"+testnet.VIP+":6443")
				mu.Lock()
				if err != nil && tctx.Err() == nil {
					failures++
				} else if err == nil {
					counts[name]++
				}
				mu.Unlock()
				select {
				case <-tctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	show := func(title string, d time.Duration) bool {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(2 * time.Second):
			}
			out, _ := cli("status")
			mu.Lock()
			var names []string
			for k := range counts {
				names = append(names, k)
			}
			sort.Strings(names)
			var parts []string
			for _, k := range names {
				parts = append(parts, fmt.Sprintf("%s=%d", k, counts[k]))
			}
			line := fmt.Sprintf("agents' answers so far: %s, failed: %d", strings.Join(parts, " "), failures)
			mu.Unlock()
			fmt.Printf("\n\033[1m== %s ==\033[0m\n%s%s\n", title, out, line)
		}
		return true
	}
	phases := []struct {
		title  string
		before func() error
		d      time.Duration
	}{
		{"traffic through the VIP, balanced over three servers", nil, 8 * time.Second},
		{"server-2's API process stopped: refused SYNs retried elsewhere, marked DOWN", func() error {
			say("stopping the API server on server-2")
			return servers[1].Kill()
		}, 8 * time.Second},
		{"server-2 back: marked UP after rise checks, takes connections again", func() error {
			say("starting the API server on server-2 again")
			return startServer(1)
		}, 8 * time.Second},
	}
	for _, p := range phases {
		if p.before != nil {
			if err := p.before(); err != nil {
				return err
			}
		}
		if !show(p.title, p.d) {
			break
		}
	}
	cancelTraffic()
	wg.Wait()
	say("done. Inspect a live instance yourself with `xdplb status`, `xdplb flows`, and `bpftool map dump pinned <bpffs>/xdplb/<instance>/flows`.")
	return nil
}

func say(s string) { fmt.Printf("\033[36m>> %s\033[0m\n", s) }
