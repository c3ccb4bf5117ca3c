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
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/lab"
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

	say("building xdplb and the mock API server, then the K3s guide's network in namespaces: server-1..3, lb-1, agent-1..3")
	defer lab.RemoveBinaries()
	l, err := lab.Create(lab.Options{Spec: testnet.Spec{Servers: 3, LBs: 1, Agents: 3, TxOffloadOff: true, PassXDPOnLBPeers: true}})
	if err != nil {
		return err
	}
	defer func() {
		say("cleaning up: detaching xdplb, removing namespaces")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: cleanup:", err)
		}
	}()
	if err := l.StartServers(lab.API); err != nil {
		return err
	}
	lb, err := l.NewInstance(l.LB(1), lab.InstanceConfig{Args: []string{"--inter", "1s", "--rise", "2", "--fall", "3"}})
	if err != nil {
		return err
	}
	say("starting: xdplb " + strings.Join(lb.RunArgs(), " "))
	if err := lb.Start(); err != nil {
		return err
	}

	// Agents: a new TLS connection through the VIP every 100 ms each.
	tlsCfg, err := agent.TLSConfig(l.PKI.CAFile, "", "", false)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	counts := map[string]int{}
	failures := 0
	tctx, cancelTraffic := context.WithCancel(ctx)
	defer cancelTraffic()
	var wg sync.WaitGroup
	for _, a := range l.Agents {
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
			out, _ := lb.CLI("status")
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
			return l.ServerProcess(2).Kill()
		}, 8 * time.Second},
		{"server-2 back: marked UP after rise checks, takes connections again", func() error {
			say("starting the API server on server-2 again")
			_, err := l.StartServer(2, lab.API)
			return err
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
	say("done. Inspect a live instance yourself with `xdplb status`, `xdplb flows`, and `bpftool map dump pinned <bpffs>/xdplb/<instance>/xdplb_flows`.")
	return nil
}

func say(s string) { fmt.Printf("\033[36m>> %s\033[0m\n", s) }
