// Package daemon runs one xdplb instance: it loads and attaches the data
// path through the loader, drives it with the control package's balancer
// and health monitor, and serves the control socket and metrics. The CLI
// in cmd/xdplb is a thin layer over it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control"
	"github.com/xdplb/xdplb/loader"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// RunDir holds the control sockets.
var RunDir = "/run/xdplb"

// SocketPath is the control socket of an instance.
func SocketPath(instance string) string { return filepath.Join(RunDir, instance+".sock") }

// Options beyond the configuration file.
type Options struct {
	Verbose bool
	NoLink  bool // attach through netlink/clsact even where bpf_link exists
	Logger  *slog.Logger
	// Ready is closed once the program is attached and the socket serves.
	Ready chan<- struct{}
}

// Daemon is a running instance.
type Daemon struct {
	cfg     control.Config
	log     *slog.Logger
	inst    *loader.Instance
	dp      loader.Datapath
	bal     *control.Balancer
	mon     *control.Monitor
	data    bpf.Config
	snat    control.PortRange
	local   bool // the frontend is the node's own address
	source  netip.Addr
	started time.Time
	nudger  *control.RawNudger
	latency sync.Map // backend addr string -> time.Duration
	// hardStreak counts, per backend, checks in a row that got no answer
	// (not counting "not ready" answers): backend addr string -> int.
	hardStreak sync.Map
	gcMu       sync.Mutex
	lastGC     control.GCResult
	shutdown   chan struct{}
	stopOnce   sync.Once
}

// Run starts the instance and serves until ctx ends or a shutdown command
// arrives. The program stays attached and pinned when Run returns, so
// tracked connections keep flowing until a new daemon takes over or
// `xdplb detach` removes it.
func Run(ctx context.Context, cfg control.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	d := &Daemon{cfg: cfg, log: log, started: time.Now(), shutdown: make(chan struct{})}
	if err := d.prepare(); err != nil {
		return err
	}
	// Claim the socket before touching the kernel: a second daemon of the
	// same instance must not replace the first one's program.
	ln, err := listenControl(cfg.Instance)
	if err != nil {
		return err
	}
	defer ln.Close()
	defer os.Remove(SocketPath(cfg.Instance))

	inst, err := loader.Start(loader.Options{
		BPFFS: cfg.BPFFS, Instance: cfg.Instance, Iface: cfg.Iface,
		Hook: loader.Hook(cfg.Hook), XDPMode: loader.XDPMode(cfg.XDPMode),
		Data: d.data, Verbose: opts.Verbose, NoLink: opts.NoLink, Logger: log,
	})
	if err != nil {
		return err
	}
	defer inst.Close()
	d.inst = inst
	d.dp = loader.Datapath{M: &inst.Maps}
	verb := "attached"
	if inst.Replaced {
		verb = "replaced program in place (flow table kept)"
	}
	log.Info(verb, "attachment", inst.Attachment.String(), "clock", inst.Attachment.Clock,
		"frontend", netip.AddrPortFrom(cfg.VIP, cfg.Port).String(), "snat_ports", d.snat.String(), "health_source", d.source.String())
	if err := d.startBalancer(); err != nil {
		return fmt.Errorf("%w (the program stays attached; run `xdplb detach --instance %s` to remove it)", err, cfg.Instance)
	}
	defer d.mon.Stop()
	d.nudger = &control.RawNudger{}
	defer d.nudger.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	run(d.resolveLoop)
	run(d.refusedLoop)
	run(d.gcLoop)
	run(func(ctx context.Context) { d.serveControl(ctx, ln) })
	if cfg.MetricsAddr != "" {
		srv, err := d.startMetrics()
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		defer srv.Close()
	}
	if opts.Ready != nil {
		close(opts.Ready)
	}
	select {
	case <-ctx.Done():
	case <-d.shutdown:
	}
	log.Info("stopping; the program stays attached and keeps forwarding tracked flows")
	cancel()
	ln.Close()
	wg.Wait()
	return nil
}

// prepare works out what the configuration means on this node: whether the
// frontend is the node's own address, the SNAT range, the check source.
func (d *Daemon) prepare() error {
	cfg := d.cfg
	if os.Geteuid() != 0 {
		return errors.New("xdplb run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it with sudo")
	}
	iface, err := netlink.LinkByName(cfg.Iface)
	if err != nil {
		return fmt.Errorf("interface %q not found: %w", cfg.Iface, err)
	}
	addrs, err := netlink.AddrList(iface, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", cfg.Iface, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		if ip == cfg.VIP && a.Flags&unix.IFA_F_SECONDARY == 0 {
			d.local = true
		}
		if ip != cfg.VIP && !d.source.IsValid() && a.Flags&unix.IFA_F_SECONDARY == 0 {
			d.source = ip
		}
	}
	if d.local {
		d.source = cfg.VIP
	}
	if cfg.CheckSource.IsValid() {
		d.source = cfg.CheckSource
	}
	if !d.source.IsValid() {
		return fmt.Errorf("%s has no IPv4 address of its own to run health checks from (the VIP is never used): add one or set check-source", cfg.Iface)
	}
	eph, err := control.ReadEphemeralRange(control.EphemeralRangePath)
	if err != nil {
		return err
	}
	d.snat = cfg.SNATPorts
	if d.snat.IsZero() {
		d.snat = control.DefaultSNATPorts(cfg.Port, d.local, eph)
		if d.snat.IsZero() {
			return errors.New("no free SNAT port range: set snat-ports")
		}
	}
	if err := control.ValidateSNATAgainstKernel(d.local, d.snat, eph); err != nil {
		return err
	}
	if d.local {
		if err := reservePorts(d.snat); err != nil {
			return err
		}
	}
	idle := cfg.EstablishedTimeout
	d.data = bpf.Config{
		Frontend: netip.AddrPortFrom(cfg.VIP, cfg.Port), SNATLo: d.snat.Lo, SNATHi: d.snat.Hi,
		IdleTimeout: idle,
	}
	return d.data.Validate()
}

const reservedPortsPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"

// reservePorts keeps the kernel from handing out SNAT ports as ephemeral
// ports of the node's own connections (frontend = node's own address).
func reservePorts(r control.PortRange) error {
	cur, err := os.ReadFile(reservedPortsPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", reservedPortsPath, err)
	}
	want := r.String()
	if r.Lo == r.Hi {
		want = fmt.Sprint(r.Lo)
	}
	for _, part := range strings.Split(strings.TrimSpace(string(cur)), ",") {
		if part == want {
			return nil
		}
	}
	val := want
	if s := strings.TrimSpace(string(cur)); s != "" {
		val = s + "," + want
	}
	if err := os.WriteFile(reservedPortsPath, []byte(val), 0o644); err != nil {
		return fmt.Errorf("reserve SNAT ports %s in %s: %w", want, reservedPortsPath, err)
	}
	return nil
}

func (d *Daemon) startBalancer() error {
	cfg := d.cfg
	bal, err := control.NewBalancer(d.dp, control.BalancerOptions{
		Frontend: d.data.Frontend, Backends: cfg.ResolvedBackends(), Timeouts: d.data,
		Logger: d.log, Nudger: nudgeFunc(d.nudge), Now: MonotonicNow,
	})
	if err != nil {
		return err
	}
	d.bal = bal
	d.kickNeighbours()
	d.resolveOnce()
	if err := bal.Sync(); err != nil {
		return err
	}
	checker, err := control.NewChecker(cfg.Check, cfg.CheckOptions(d.source))
	if err != nil {
		return err
	}
	mon, err := control.NewMonitor(control.RealClock{}, &observedChecker{inner: checker, d: d}, cfg.HealthParams(), d.onTransition)
	if err != nil {
		return err
	}
	d.mon = mon
	for _, st := range bal.Backends() {
		if err := mon.Add(st.Addr.String(), st.Up); err != nil {
			return err
		}
	}
	return nil
}

type nudgeFunc func(frontend, client netip.AddrPort) error

func (f nudgeFunc) Nudge(frontend, client netip.AddrPort) error { return f(frontend, client) }

func (d *Daemon) nudge(frontend, client netip.AddrPort) error {
	if d.nudger == nil {
		return nil
	}
	return d.nudger.Nudge(frontend, client)
}

func (d *Daemon) onTransition(t control.Transition) {
	d.log.Info(t.String())
	addr, err := netip.ParseAddrPort(t.Key)
	if err != nil {
		return
	}
	// Keep the connections of a backend that answered "not ready" in at
	// least one of the failures that took it down: only fall checks in a
	// row that got no answer at all mean its connections are dead.
	keep := !t.Up && d.hardFailures(t.Key) < d.cfg.HealthParams().Fall
	if keep {
		d.log.Info("backend answers but is not ready: no new connections, established ones kept", "backend", t.Key)
	}
	if err := d.bal.SetHealth(addr, t.Up, keep); err != nil {
		d.log.Error("apply health transition", "backend", t.Key, "err", err)
	}
}

// observedChecker times checks (for metrics) and, on success, clears a
// data-path refusal flag raised before the check started.
type observedChecker struct {
	inner control.Checker
	d     *Daemon
}

func (c *observedChecker) String() string { return fmt.Sprint(c.inner) }

func (c *observedChecker) Check(ctx context.Context, addr string) error {
	start := time.Now()
	mono := MonotonicNow()
	err := c.inner.Check(ctx, addr)
	c.d.latency.Store(addr, time.Since(start))
	ap, perr := netip.ParseAddrPort(addr)
	if perr != nil {
		return err
	}
	if err == nil {
		c.d.hardStreak.Store(addr, 0)
		c.d.bal.ClearRefusedBefore(ap, mono)
		return nil
	}
	if control.IsNotReady(err) {
		c.d.hardStreak.Store(addr, 0)
		return err
	}
	// A timeout counts (the check's own deadline); a cancel is the
	// monitor stopping, which says nothing of the backend.
	if !errors.Is(ctx.Err(), context.Canceled) {
		n := c.d.hardFailures(addr) + 1
		c.d.hardStreak.Store(addr, n)
		if n >= c.d.cfg.HealthParams().Fall {
			// A not-ready backend kept its connections; now it has
			// not answered at all fall times in a row, so they go.
			c.d.bal.PurgeFlows(ap)
		}
	}
	return err
}

// MonotonicNow is the data path's clock: CLOCK_MONOTONIC in ns, which
// both bpf_ktime_get_ns and bpf_ktime_get_coarse_ns read.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// refusedLoop turns the data path's refusal flags into immediate checks.
func (d *Daemon) refusedLoop(ctx context.Context) {
	seen := map[netip.AddrPort]uint64{}
	every(ctx, 100*time.Millisecond, func() {
		refused, err := d.bal.Refused()
		if err != nil {
			return
		}
		for addr, ts := range refused {
			if seen[addr] == ts {
				continue
			}
			seen[addr] = ts
			d.log.Info("backend refused a connection (RST to SYN): skipped for new flows, checking now", "backend", addr.String())
			d.mon.Hint(addr.String())
		}
	})
}

// every runs fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fn()
		}
	}
}

func (d *Daemon) gcLoop(ctx context.Context) {
	interval := d.cfg.GCInterval
	if interval <= 0 {
		interval = control.DefaultGCInterval
	}
	d.gc()
	every(ctx, interval, func() { d.gc() })
}

func (d *Daemon) gc() control.GCResult {
	res, err := d.bal.GC()
	if err != nil {
		d.log.Warn("flow gc", "err", err)
	}
	if res.Expired+res.Orphaned > 0 {
		d.log.Debug("flow gc", "expired", res.Expired, "orphaned", res.Orphaned)
	}
	d.gcMu.Lock()
	d.lastGC = res
	d.gcMu.Unlock()
	return res
}

func (d *Daemon) resolveLoop(ctx context.Context) { every(ctx, time.Second, d.resolveOnce) }

// resolveOnce looks up, through netlink, the next hop of every backend:
// the route's gateway or the backend itself, its MAC in the neighbour
// table, our MAC and the interface. Unresolved backends fall back to
// bpf_fib_lookup in the data path.
func (d *Daemon) resolveOnce() {
	for _, st := range d.bal.Backends() {
		nh, err := nextHop(st.Addr.Addr())
		if err != nil {
			d.log.Debug("resolve next hop", "backend", st.Addr.String(), "err", err)
		}
		if err := d.bal.SetNextHop(st.Addr, nh); err != nil {
			d.log.Warn("write backend next hop", "backend", st.Addr.String(), "err", err)
		}
	}
}

func nextHop(addr netip.Addr) (*NextHopResult, error) {
	routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("no route: %v", err)
	}
	r := routes[0]
	hop := net.IP(addr.AsSlice())
	if r.Gw != nil {
		hop = r.Gw
	}
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return nil, err
	}
	neighs, err := netlink.NeighList(r.LinkIndex, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, n := range neighs {
		if !n.IP.Equal(hop) || len(n.HardwareAddr) != 6 {
			continue
		}
		if n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT|netlink.NUD_NOARP) == 0 {
			continue
		}
		nh := &control.NextHop{Ifindex: uint32(r.LinkIndex)}
		copy(nh.MAC[:], n.HardwareAddr)
		copy(nh.SrcMAC[:], link.Attrs().HardwareAddr)
		return nh, nil
	}
	return nil, fmt.Errorf("no neighbour entry for %s", hop)
}

// NextHopResult is control.NextHop.
type NextHopResult = control.NextHop

// kickNeighbours makes the kernel resolve backends it has no neighbour
// entry for yet (a datagram to the discard port is enough), so the first
// SYN finds the MAC in place.
func (d *Daemon) kickNeighbours() {
	var pending bool
	for _, st := range d.bal.Backends() {
		if nh, _ := nextHop(st.Addr.Addr()); nh != nil {
			continue
		}
		pending = true
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IP(d.source.AsSlice())}, &net.UDPAddr{IP: net.IP(st.Addr.Addr().AsSlice()), Port: 9})
		if err != nil {
			continue
		}
		c.Write(nil)
		c.Close()
	}
	if !pending {
		return
	}
	for i := 0; i < 10; i++ {
		time.Sleep(50 * time.Millisecond)
		done := true
		for _, st := range d.bal.Backends() {
			if nh, _ := nextHop(st.Addr.Addr()); nh == nil {
				done = false
			}
		}
		if done {
			return
		}
	}
}

func (d *Daemon) hardFailures(addr string) int {
	if v, ok := d.hardStreak.Load(addr); ok {
		return v.(int)
	}
	return 0
}

func (d *Daemon) stop() { d.stopOnce.Do(func() { close(d.shutdown) }) }
