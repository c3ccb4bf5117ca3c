// Package daemon is xdplb's composition root: it runs one instance by
// wiring the loader (the data path's maps and attachment), the decision
// packages (config, health, balancer, maglev), the node's network through
// netlink (next hops, addresses), sysctls, the control socket and the
// metrics listener. Every decision it applies is a call into a decision
// package; this package only connects them, in one place.
//
// It is the only package under control/ that touches the node: BPF through
// the loader, netlink, /proc/sys, raw sockets (the client nudge), the
// control socket under /run/xdplb and the metrics port. Its tests run the
// wiring against a fake datapath (balancertest) and a scripted checker,
// without root.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
	"github.com/xdplb/xdplb/loader"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Options beyond the configuration file.
type Options struct {
	Verbose bool
	NoLink  bool // attach through netlink/clsact even where bpf_link exists
	Logger  *slog.Logger
	// Ready is closed once the program is attached and the socket serves.
	Ready chan<- struct{}
}

// datapath is what the daemon needs of the data path: the balancer's view
// of the maps, and the flow tables' capacity for metrics.
type datapath interface {
	balancer.Datapath
	TableCapacity(bpf.FlowTable) uint32
}

var _ datapath = loader.Datapath{}

// parts are the daemon's connections to the kernel and the network. Run
// makes the real ones (loader, netlink, raw socket, the configured
// checker); the tests give fakes.
type parts struct {
	dp datapath
	// attached says whether, and how, the program is attached now.
	attached func() (loader.Attachment, error)
	// nextHop resolves where packets to a backend leave (nil: unresolved,
	// the data path asks bpf_fib_lookup).
	nextHop func(netip.Addr) (*balancer.NextHop, error)
	nudger  balancer.Nudger
	checker health.Checker
	// now is the data path's clock (bpf.Now).
	now func() uint64
}

// Daemon is a running instance.
type Daemon struct {
	cfg     config.Config
	node    nodeFacts
	log     *slog.Logger
	parts   parts
	att     loader.Attachment // as attached at start
	bal     *balancer.Balancer
	mon     *health.Monitor
	started time.Time
	// monoBase pairs a time.Time with the data path's clock read at the
	// same moment, to turn check times into data-path timestamps.
	monoBase     time.Time
	monoBaseNs   uint64
	latency      sync.Map // backend addr string -> time.Duration
	gcMu         sync.Mutex
	lastGC       balancer.GCResult
	shutdown     chan struct{}
	shutdownOnce sync.Once
}

// Run starts the instance and serves until ctx ends or a shutdown command
// arrives. The program stays attached and pinned when Run returns, so
// tracked connections keep flowing until a new daemon takes over or
// `xdplb detach` removes it.
func Run(ctx context.Context, cfg config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("xdplb run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it with sudo")
	}
	node, err := examineNode(cfg)
	if err != nil {
		return err
	}
	checker, err := health.NewChecker(cfg.Check, cfg.CheckOptions(node.source))
	if err != nil {
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
	if node.local {
		if err := reservePorts(node.snat); err != nil {
			return err
		}
	}

	inst, err := loader.Start(loader.Options{
		BPFFS: cfg.BPFFS, Instance: cfg.Instance, Iface: cfg.Iface,
		Hook: cfg.Hook, XDPMode: cfg.XDPMode,
		Data: node.data, Verbose: opts.Verbose, NoLink: opts.NoLink, Logger: log,
	})
	if err != nil {
		return err
	}
	defer inst.Close()
	verb := "attached"
	if inst.Replaced {
		verb = "replaced program in place (flow table kept)"
	}
	log.Info(verb, "attachment", inst.Attachment.String(), "clock", inst.Attachment.Clock,
		"frontend", node.data.Frontend.String(), "snat_ports", node.snat.String(), "health_source", node.source.String())

	nudger := &RawNudger{}
	defer nudger.Close()
	p := parts{
		dp:       loader.Datapath{M: inst.Maps},
		attached: func() (loader.Attachment, error) { return loader.Attached(cfg.BPFFS, cfg.Instance) },
		nextHop:  nextHop,
		nudger:   nudger,
		checker:  checker,
		now:      bpf.Now,
	}
	kickNeighbours(cfg.ResolvedBackends(), node.source)
	d, err := start(cfg, node, p, inst.Attachment, log)
	if err != nil {
		return fmt.Errorf("%w (the program stays attached; run `xdplb detach --instance %s` to remove it)", err, cfg.Instance)
	}
	defer d.mon.Stop()
	return d.serve(ctx, ln, opts.Ready)
}

// start builds the daemon over its parts: the balancer (reading back the
// backends a previous daemon left), the table, the health monitor.
func start(cfg config.Config, node nodeFacts, p parts, att loader.Attachment, log *slog.Logger) (*Daemon, error) {
	d := &Daemon{cfg: cfg, node: node, log: log, parts: p, att: att, started: time.Now(), shutdown: make(chan struct{})}
	d.monoBase, d.monoBaseNs = time.Now(), p.now()
	bal, err := balancer.New(p.dp, balancer.Options{
		Frontend: node.data.Frontend, Backends: cfg.ResolvedBackends(), Timeouts: node.data,
		Logger: log, Nudger: p.nudger, Now: p.now,
	})
	if err != nil {
		return nil, err
	}
	d.bal = bal
	d.resolveOnce()
	if err := bal.Sync(); err != nil {
		return nil, err
	}
	mon, err := health.NewMonitor(p.checker, cfg.HealthParams(), d.onCheck)
	if err != nil {
		return nil, err
	}
	d.mon = mon
	for _, st := range bal.Backends() {
		if err := mon.Add(st.Addr.String(), st.Up); err != nil {
			mon.Stop()
			return nil, err
		}
	}
	return d, nil
}

// serve runs the daemon's loops and the control socket until ctx ends or
// a shutdown command arrives.
func (d *Daemon) serve(ctx context.Context, ln listener, ready chan<- struct{}) error {
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
	if d.cfg.MetricsAddr != "" {
		srv, err := d.startMetrics()
		if err != nil {
			cancel()
			ln.Close()
			wg.Wait()
			return err
		}
		defer srv.Close()
	}
	if ready != nil {
		close(ready)
	}
	select {
	case <-ctx.Done():
	case <-d.shutdown:
	}
	d.log.Info("stopping; the program stays attached and keeps forwarding tracked flows")
	cancel()
	ln.Close()
	wg.Wait()
	return nil
}

// onCheck applies what a health check decided: the monitor reports, the
// balancer acts. It is called from the monitor's goroutines, one at a
// time.
func (d *Daemon) onCheck(ev health.Event) {
	d.latency.Store(ev.Key, ev.Took)
	addr, err := netip.ParseAddrPort(ev.Key)
	if err != nil {
		return
	}
	if ev.Outcome == health.Healthy {
		// A check that started after a refusal and passed clears it.
		d.bal.ClearRefusedBefore(addr, d.monoAt(ev.At))
	}
	if tr := ev.Transition; tr != nil {
		d.log.Info(tr.String())
		if !tr.Up && tr.KeepConnections {
			d.log.Info("backend answers but is not ready: no new connections, established ones kept", "backend", ev.Key)
		}
		if err := d.bal.SetHealth(addr, tr.Up, tr.KeepConnections); err != nil {
			d.log.Error("apply health transition", "backend", ev.Key, "err", err)
		}
	}
	if ev.DropConnections {
		if err := d.bal.PurgeFlows(addr); err != nil {
			d.log.Error("remove the connections of a backend that stopped answering", "backend", ev.Key, "err", err)
		}
	}
}

// monoAt is t on the data path's clock.
func (d *Daemon) monoAt(t time.Time) uint64 {
	return d.monoBaseNs + uint64(t.Sub(d.monoBase))
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
	d.gc()
	interval := d.cfg.GCInterval
	if interval <= 0 {
		interval = config.DefaultGCInterval
	}
	every(ctx, interval, func() { d.gc() })
}

func (d *Daemon) gc() balancer.GCResult {
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

// resolveOnce looks up the next hop of every backend; unresolved backends
// fall back to bpf_fib_lookup in the data path.
func (d *Daemon) resolveOnce() {
	for _, st := range d.bal.Backends() {
		nh, err := d.parts.nextHop(st.Addr.Addr())
		if err != nil {
			d.log.Debug("resolve next hop", "backend", st.Addr.String(), "err", err)
		}
		if err := d.bal.SetNextHop(st.Addr, nh); err != nil {
			d.log.Warn("write backend next hop", "backend", st.Addr.String(), "err", err)
		}
	}
}

func (d *Daemon) stop() { d.shutdownOnce.Do(func() { close(d.shutdown) }) }
