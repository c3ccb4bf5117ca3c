package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// The flood host plays the spoofed clients and, for the replies to them, the
// router toward 10.20.0.0/16 that black-holes them.
const (
	floodHostName = "flood"
	floodAddr     = "10.10.10.200"
	spoofedNet    = "10.20.0.0/16"
)

// bins are the binaries the benchmark runs inside the namespaces.
type bins struct {
	xdplb, mockapi, agent string
}

// env is the lab (network, sinks on the servers, xdplb instances) plus the
// flood host, and what the other balancers need.
type env struct {
	lab   *lab.Lab
	topo  *testnet.Topology
	bins  bins
	tmp   string
	flood *testnet.Host
	lb1   *testnet.Host
	mode  string // sink mode the servers run: "echo" or "discard"
	// pin runs the agents on CPU 0 and the sinks on the last CPU
	// (taskset), so client and server never share a core by chance.
	pin    bool
	logf   func(string, ...any)
	closed bool
}

// buildBins builds the binaries once for the whole run, through the lab
// (which puts them in a directory of its own, removed by env.Close, and
// honours $XDPLB_E2E_BIN); the directory argument is no longer used.
func buildBins(ctx context.Context, _ string) (b bins, err error) {
	defer func() {
		if err != nil {
			lab.RemoveBinaries()
		}
	}()
	if b.xdplb, err = lab.Build(ctx, lab.XDPLB); err != nil {
		return b, err
	}
	if b.mockapi, err = lab.Build(ctx, lab.MockAPI); err != nil {
		return b, err
	}
	if b.agent, err = lab.Build(ctx, lab.Agent); err != nil {
		return b, err
	}
	return b, nil
}

// newEnv builds the guide's network plus the flood host, and prepares the
// hosts: the VIP on lb-1, TIME_WAIT reuse on the clients and lb-1, routes
// toward the spoofed network through the flood host.
func newEnv(b bins, tmp string, logf func(string, ...any)) (_ *env, err error) {
	e := &env{bins: b, tmp: tmp, logf: logf}
	// The lab runs the sinks pinned when e.pin is set (it is set after
	// newEnv returns).
	l, err := lab.Create(lab.Options{WrapServer: func(argv []string) []string { return e.pinned(false, argv[0], argv[1:]...) }})
	if err != nil {
		return nil, err
	}
	topo := l.Topology
	e.lab, e.topo, e.lb1 = l, topo, l.LB(1)
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	logf("network %s: %d namespaces", topo.Prefix, len(topo.Namespaces()))
	if e.flood, err = topo.AddHost(floodHostName, floodAddr+"/24"); err != nil {
		return nil, err
	}
	if err := e.flood.DisableTxOffload(); err != nil {
		return nil, err
	}
	// The bridge stands for a switch: keep netfilter (br_netfilter, on by
	// default in every namespace when built in) off the bridged packets.
	if err := topo.SwitchDo(func() error {
		for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
			err := os.WriteFile("/proc/sys/net/bridge/"+k, []byte("0"), 0o644)
			if err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("%s=0 in the switch namespace: %w", k, err)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	// Clients close with FIN (as real clients do) and so keep TIME_WAIT
	// sockets; let connect() reuse them, and give them a wide port range.
	// lb-1 too: HAProxy and Nginx open a new backend connection per client.
	for _, h := range append(append([]*testnet.Host{}, topo.Agents...), e.lb1) {
		if err := h.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
			return nil, err
		}
	}
	for _, h := range topo.Agents {
		if err := h.Sysctl("net.ipv4.ip_local_port_range", "10000 65000"); err != nil {
			return nil, err
		}
	}
	// Replies to the spoofed sources go to the flood host as to a router,
	// which drops them silently (forwarding on, blackhole route): on a real
	// network they would leave toward the default gateway.
	_, spoofed, _ := net.ParseCIDR(spoofedNet)
	gw := net.ParseIP(floodAddr)
	for _, h := range append(append([]*testnet.Host{}, topo.Servers...), topo.LBs...) {
		if err := h.Do(func() error {
			return netlink.RouteAdd(&netlink.Route{Dst: spoofed, Gw: gw})
		}); err != nil {
			return nil, fmt.Errorf("route %s via %s on %s: %w", spoofedNet, floodAddr, h.Name, err)
		}
	}
	if err := e.flood.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	if err := e.flood.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: spoofed, Type: unix.RTN_BLACKHOLE})
	}); err != nil {
		return nil, fmt.Errorf("blackhole route on flood host: %w", err)
	}
	return e, nil
}

// setSinks makes every server run the sink mode ("echo" or "discard") on
// :6443; every server serves the same thing, since a balancer may pick any.
// Sinks of that mode already running are kept.
func (e *env) setSinks(mode string) error {
	kind := lab.Echo
	if mode == "discard" {
		kind = lab.Discard
	}
	if e.mode == mode {
		alive := true
		for i := range e.topo.Servers {
			p := e.lab.ServerProcess(i + 1)
			alive = alive && p != nil && !p.Exited()
		}
		if alive {
			return nil
		}
	}
	if err := e.lab.StartServers(kind); err != nil {
		return err
	}
	e.mode = mode
	return nil
}

// sinkPIDs are the PIDs of the sinks, for per-process CPU.
func (e *env) sinkPIDs() []int {
	var pids []int
	for i := range e.topo.Servers {
		if p := e.lab.ServerProcess(i + 1); p != nil {
			pids = append(pids, p.PID())
		}
	}
	return pids
}

// waitDial waits until agent-1 can connect to addr.
func (e *env) waitDial(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if e.topo.Agent(1).CanDial(addr, 500*time.Millisecond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not reachable from agent-1 within %v", addr, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops everything, removes the namespaces and the binaries.
func (e *env) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	return errors.Join(e.lab.Close(), lab.RemoveBinaries())
}

// tempDir makes a directory under e.tmp.
func (e *env) tempDir(name string) (string, error) {
	return os.MkdirTemp(e.tmp, name+"-")
}

func serverAddrs(n int) []netip.Addr {
	var out []netip.Addr
	for i := 1; i <= n; i++ {
		out = append(out, testnet.ServerAddr(i))
	}
	return out
}

func joinAddrs(as []netip.Addr, sep string) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, sep)
}

func writeFile(dir, name, content string) (string, error) {
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(content), 0o644)
}

// setGRO turns GRO on lb-1's eth1 on or off. A veth aggregates (GRO) only
// when asked and only packets whose sender cannot do TSO, unlike a NIC, which
// aggregates whatever arrives: so TSO also goes off on lb-1's switch port
// (the sender toward lb-1) while GRO is on. Native XDP on eth1 does that by
// itself ("XDP turns off GSO on its peer").
func (e *env) setGRO(on bool) error {
	gro, tso := "off", "on"
	if on {
		gro, tso = "on", "off"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sw := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+e.topo.SwitchNS, "--", "ethtool", "-K", e.lb1.PeerName, "tso", tso)
	// With native XDP on eth1 the kernel keeps TSO off on the peer and
	// ethtool says it could not change it: that is the state wanted.
	if out, err := sw.CombinedOutput(); err != nil && !(tso == "on" && strings.Contains(string(out), "Could not change any device features")) {
		return fmt.Errorf("ethtool -K %s tso %s in %s: %w: %s", e.lb1.PeerName, tso, e.topo.SwitchNS, err, out)
	}
	if out, err := e.lb1.Exec(ctx, "ethtool", "-K", testnet.HostIface, "gro", gro); err != nil {
		return fmt.Errorf("ethtool -K eth1 gro %s on lb-1: %w: %s", gro, err, out)
	}
	return nil
}

// pinned returns the argv that runs name with args, pinned to the agents'
// CPU (client) or the sinks' CPU when e.pin is set.
func (e *env) pinned(client bool, name string, args ...string) []string {
	if !e.pin || runtime.NumCPU() < 2 {
		return append([]string{name}, args...)
	}
	cpu := "0"
	if !client {
		cpu = fmt.Sprint(runtime.NumCPU() - 1)
	}
	return append([]string{"taskset", "-c", cpu, name}, args...)
}
