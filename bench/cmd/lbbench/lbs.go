package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// balancer is one way of getting the agents' connections to the servers.
type balancer interface {
	Name() string
	// Frontend is the address the agents (and the flood) target.
	Frontend() netip.AddrPort
	Start(e *env) error
	Stop(e *env) error
	// PIDs are the userspace processes of the balancer (and their
	// children count too), for per-process CPU; none for kernel data paths.
	PIDs() []int
	// Status is a snapshot of the balancer's own counters, if it has any.
	Status(e *env) json.RawMessage
}

// allBalancers in the order of the first repetition.
var allBalancers = []string{"direct", "router", "xdp-native", "xdp-generic", "tc", "nftables", "haproxy", "nginx"}

func newBalancer(name string) (balancer, error) {
	switch name {
	case "direct":
		return direct{}, nil
	case "router":
		return routerLB{}, nil
	case "xdp-native":
		return &xdplbLB{name: name, args: []string{"--hook", "xdp", "--xdp-mode", "native"}}, nil
	case "xdp-generic":
		return &xdplbLB{name: name, args: []string{"--hook", "xdp", "--xdp-mode", "generic"}}, nil
	case "tc":
		return &xdplbLB{name: name, args: []string{"--hook", "tc"}}, nil
	case "nftables":
		return &nftLB{}, nil
	case "haproxy":
		return &haproxyLB{}, nil
	case "nginx":
		return &nginxLB{}, nil
	}
	return nil, fmt.Errorf("unknown load balancer %q (have %s)", name, strings.Join(allBalancers, ", "))
}

var vipFrontend = lab.Frontend()

// direct: the agents connect straight to server-1, the ceiling.
type direct struct{}

func (direct) Name() string { return "direct" }
func (direct) Frontend() netip.AddrPort {
	return netip.AddrPortFrom(testnet.ServerAddr(1), testnet.APIPort)
}
func (direct) Start(*env) error            { return nil }
func (direct) Stop(*env) error             { return nil }
func (direct) PIDs() []int                 { return nil }
func (direct) Status(*env) json.RawMessage { return nil }

// routerLB: agents reach server-1 through lb-1 as a plain IP router, both
// ways (host routes on the agents and server-1, forwarding on lb-1): the
// cost of the extra hop through lb-1 on this network, without any
// balancing or NAT, i.e. the floor of any balancer in the path.
type routerLB struct{}

func (routerLB) Name() string { return "router" }
func (routerLB) Frontend() netip.AddrPort {
	return netip.AddrPortFrom(testnet.ServerAddr(1), testnet.APIPort)
}
func (routerLB) PIDs() []int                 { return nil }
func (routerLB) Status(*env) json.RawMessage { return nil }

func (r routerLB) routes(e *env, add bool) error {
	gw := net.IP(testnet.LBAddr(1).AsSlice())
	route := func(h *testnet.Host, dst netip.Addr) error {
		rt := &netlink.Route{Dst: &net.IPNet{IP: net.IP(dst.AsSlice()), Mask: net.CIDRMask(32, 32)}, Gw: gw}
		return h.Do(func() error {
			if add {
				return netlink.RouteAdd(rt)
			}
			return netlink.RouteDel(rt)
		})
	}
	var errs []error
	for i, a := range e.topo.Agents {
		errs = append(errs, route(a, testnet.ServerAddr(1)), route(e.topo.Server(1), testnet.AgentAddr(i+1)))
	}
	return errors.Join(errs...)
}

func (r routerLB) Start(e *env) error {
	set := map[*testnet.Host]map[string]string{
		e.lb1: {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.send_redirects": "0",
			"net.ipv4.conf.eth1.send_redirects": "0", "net.ipv4.conf.default.send_redirects": "0"},
	}
	for _, h := range append(append([]*testnet.Host{}, e.topo.Agents...), e.topo.Server(1)) {
		set[h] = map[string]string{"net.ipv4.conf.all.accept_redirects": "0", "net.ipv4.conf.eth1.accept_redirects": "0"}
	}
	for h, kv := range set {
		for k, v := range kv {
			if err := h.Sysctl(k, v); err != nil {
				return err
			}
		}
	}
	if err := r.routes(e, true); err != nil {
		return err
	}
	return e.waitDial(r.Frontend().String(), 5*time.Second)
}

func (r routerLB) Stop(e *env) error {
	return errors.Join(r.routes(e, false), e.lb1.Sysctl("net.ipv4.ip_forward", "0"))
}

// xdplbLB runs `xdplb run` on lb-1 as a lab instance (a private bpffs,
// ready once `xdplb check` passes).
type xdplbLB struct {
	name string
	args []string
	inst *lab.Instance
}

func (x *xdplbLB) Name() string             { return x.name }
func (x *xdplbLB) Frontend() netip.AddrPort { return vipFrontend }
func (x *xdplbLB) PIDs() []int {
	if x.inst == nil {
		return nil
	}
	return procPIDs(x.inst.Process())
}

func (x *xdplbLB) Start(e *env) error {
	inst, err := e.lab.NewInstance(e.lb1, lab.InstanceConfig{
		Tag:          strings.ReplaceAll(x.name, "-", ""),
		Args:         append([]string{"--port", fmt.Sprint(testnet.APIPort), "--check", "tcp"}, x.args...),
		ReadyTimeout: 20 * time.Second,
	})
	if err != nil {
		return err
	}
	x.inst = inst
	if err := inst.Start(); err != nil {
		return fmt.Errorf("xdplb %s: %w", x.name, err)
	}
	return nil
}

func (x *xdplbLB) Stop(e *env) error {
	if x.inst == nil {
		return nil
	}
	var errs []error
	if err := x.inst.Stop(5 * time.Second); err != nil {
		errs = append(errs, fmt.Errorf("stop xdplb: %w", err))
	}
	errs = append(errs, x.inst.Detach(), x.inst.Close())
	x.inst = nil
	return errors.Join(errs...)
}

func (x *xdplbLB) Status(e *env) json.RawMessage {
	if x.inst == nil {
		return nil
	}
	out, err := x.inst.StatusJSON()
	if err != nil || !json.Valid(out) {
		b, _ := json.Marshal(map[string]string{"error": fmt.Sprintf("%v: %s", err, tail(string(out), 500))})
		return b
	}
	return json.RawMessage(out)
}

// nftLB is the kernel's own NAT on lb-1: DNAT to the servers round robin
// (numgen), SNAT to the VIP, forwarding on.
type nftLB struct{}

const nftTable = "xdplbbench"

func (nftLB) Name() string             { return "nftables" }
func (nftLB) Frontend() netip.AddrPort { return vipFrontend }
func (nftLB) PIDs() []int              { return nil }
func (nftLB) Status(e *env) json.RawMessage {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := e.lb1.Exec(ctx, "nft", "-j", "list", "table", "ip", nftTable)
	count := -1
	_ = e.lb1.Do(func() error {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err == nil {
			count = len(flows)
		}
		return nil
	})
	b, _ := json.Marshal(map[string]any{"conntrack_entries": count, "ruleset": json.RawMessage(validJSON(out))})
	return b
}

func (nftLB) ruleset(e *env) string {
	servers := serverAddrs(len(e.topo.Servers))
	var m []string
	for i, a := range servers {
		m = append(m, fmt.Sprintf("%d : %s", i, a))
	}
	return fmt.Sprintf(`table ip %[1]s {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[2]s tcp dport %[3]d dnat to numgen inc mod %[4]d map { %[5]s }
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr { %[6]s } tcp dport %[3]d snat to %[2]s
	}
}
`, nftTable, testnet.VIP, testnet.APIPort, len(servers), strings.Join(m, ", "), joinAddrs(servers, ", "))
}

func (n nftLB) Start(e *env) error {
	dir, err := e.tempDir("nft")
	if err != nil {
		return err
	}
	path, err := writeFile(dir, "lb.nft", n.ruleset(e))
	if err != nil {
		return err
	}
	// A one-armed router: forward, and do not tell the clients about the
	// servers with ICMP redirects.
	for k, v := range map[string]string{
		"net.ipv4.ip_forward":                  "1",
		"net.ipv4.conf.all.send_redirects":     "0",
		"net.ipv4.conf.eth1.send_redirects":    "0",
		"net.ipv4.conf.default.send_redirects": "0",
	} {
		if err := e.lb1.Sysctl(k, v); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := e.lb1.Exec(ctx, "nft", "-f", path); err != nil {
		return fmt.Errorf("nft -f: %w: %s", err, out)
	}
	return e.waitDial(vipFrontend.String(), 5*time.Second)
}

func (nftLB) Stop(e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if out, err := e.lb1.Exec(ctx, "nft", "delete", "table", "ip", nftTable); err != nil {
		errs = append(errs, fmt.Errorf("nft delete table: %w: %s", err, out))
	}
	if err := e.lb1.Sysctl("net.ipv4.ip_forward", "0"); err != nil {
		errs = append(errs, err)
	}
	// Leave no NAT state (e.g. the flood's half-open entries) to the next run.
	if err := e.lb1.Do(func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) }); err != nil {
		errs = append(errs, fmt.Errorf("flush conntrack: %w", err))
	}
	return errors.Join(errs...)
}

// haproxyLB runs HAProxy with the guide's configuration on lb-1.
type haproxyLB struct{ proc *testnet.Process }

func (*haproxyLB) Name() string                { return "haproxy" }
func (*haproxyLB) Frontend() netip.AddrPort    { return vipFrontend }
func (*haproxyLB) Status(*env) json.RawMessage { return nil }
func (h *haproxyLB) PIDs() []int               { return procPIDs(h.proc) }

func (h *haproxyLB) config(e *env, dir string) string {
	var servers strings.Builder
	for i, a := range serverAddrs(len(e.topo.Servers)) {
		fmt.Fprintf(&servers, "    server server-%d %s:%d check\n", i+1, a, testnet.APIPort)
	}
	// The guide's frontend/backend; global and defaults only add what a
	// foreground run in a temp dir needs (no log target: nothing logged).
	return fmt.Sprintf(`global
    maxconn 8000
    pidfile %s/haproxy.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend k3s-frontend
    bind %s:%d
    mode tcp
    default_backend k3s-backend

backend k3s-backend
    mode tcp
    option tcp-check
    balance roundrobin
    default-server inter 10s downinter 5s
%s`, dir, testnet.VIP, testnet.APIPort, servers.String())
}

func (h *haproxyLB) Start(e *env) error {
	dir, err := e.tempDir("haproxy")
	if err != nil {
		return err
	}
	cfg, err := writeFile(dir, "haproxy.cfg", h.config(e, dir))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := e.lb1.Exec(ctx, "haproxy", "-c", "-f", cfg); err != nil {
		return fmt.Errorf("haproxy config check: %w: %s", err, out)
	}
	if h.proc, err = e.lb1.Start("haproxy", "-db", "-f", cfg); err != nil {
		return err
	}
	if err := e.waitDial(vipFrontend.String(), 5*time.Second); err != nil {
		return fmt.Errorf("%w; haproxy stderr: %s", err, tail(h.proc.Stderr(), 1000))
	}
	return nil
}

func (h *haproxyLB) Stop(*env) error {
	if h.proc == nil {
		return nil
	}
	err := h.proc.Stop(3 * time.Second)
	h.proc = nil
	return err
}

// nginxLB runs Nginx's stream proxy with the guide's configuration on lb-1,
// with its own pid file, error log and prefix.
type nginxLB struct{ proc *testnet.Process }

func (*nginxLB) Name() string                { return "nginx" }
func (*nginxLB) Frontend() netip.AddrPort    { return vipFrontend }
func (*nginxLB) Status(*env) json.RawMessage { return nil }
func (n *nginxLB) PIDs() []int               { return procPIDs(n.proc) }

const nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

func (n *nginxLB) config(e *env, dir string) string {
	var servers strings.Builder
	for _, a := range serverAddrs(len(e.topo.Servers)) {
		fmt.Fprintf(&servers, "        server %s:%d;\n", a, testnet.APIPort)
	}
	return fmt.Sprintf(`load_module %s;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log warn;

events {}

stream {
    upstream k3s_servers {
%s    }

    server {
        listen %d;
        proxy_pass k3s_servers;
    }
}
`, nginxStreamModule, dir, dir, servers.String(), testnet.APIPort)
}

func (n *nginxLB) Start(e *env) error {
	if _, err := os.Stat(nginxStreamModule); err != nil {
		return fmt.Errorf("nginx stream module missing (%w): apt-get install libnginx-mod-stream", err)
	}
	dir, err := e.tempDir("nginx")
	if err != nil {
		return err
	}
	cfg, err := writeFile(dir, "nginx.conf", n.config(e, dir))
	if err != nil {
		return err
	}
	args := []string{"-p", dir + "/", "-e", dir + "/error.log", "-c", cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := e.lb1.Exec(ctx, "nginx", append(args, "-t")...); err != nil {
		return fmt.Errorf("nginx -t: %w: %s", err, out)
	}
	if n.proc, err = e.lb1.Start("nginx", args...); err != nil {
		return err
	}
	if err := e.waitDial(vipFrontend.String(), 5*time.Second); err != nil {
		log, _ := os.ReadFile(dir + "/error.log")
		return fmt.Errorf("%w; nginx error log: %s", err, tail(string(log), 1000))
	}
	return nil
}

func (n *nginxLB) Stop(*env) error {
	if n.proc == nil {
		return nil
	}
	err := n.proc.Stop(3 * time.Second)
	n.proc = nil
	return err
}

func procPIDs(p *testnet.Process) []int {
	if p == nil {
		return nil
	}
	return []int{p.PID()}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func validJSON(b []byte) []byte {
	if json.Valid(b) {
		return b
	}
	return []byte("null")
}
