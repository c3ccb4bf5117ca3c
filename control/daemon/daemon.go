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
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
	"github.com/xdplb/xdplb/control/preflight"
	"github.com/xdplb/xdplb/loader"
)

// Version is set at build time (-ldflags -X).
var Version = "dev"

// Options beyond the configuration.
type Options struct {
	Logger *slog.Logger
	// Level is the logger's level: the daemon sets it from the
	// configuration's verbose (at start and at every reload). nil: none.
	Level *slog.LevelVar
	// Ready is closed once the program is attached and the socket serves.
	Ready chan<- struct{}
	// Reload reads the configuration again, validated (its file and the
	// command line the daemon was started with). nil: reloads are refused.
	Reload func() (config.Config, []string, error)
	// Hup delivers SIGHUP, which reloads.
	Hup <-chan os.Signal
	// ConfigPath is the configuration file, for the log.
	ConfigPath string
}

var _ balancer.Datapath = loader.Datapath{}

// parts are the daemon's connections to the kernel and the network. Run
// makes the real ones (loader, netlink, raw socket, the configured
// checker); the tests give fakes.
type parts struct {
	dp balancer.Datapath
	// attached says whether, and how, the program is attached now.
	attached func() (loader.Attachment, error)
	// nextHop resolves where packets to a backend leave: nil and no error
	// when the kernel has no neighbour entry (the data path then asks
	// bpf_fib_lookup); an error when the lookup itself failed (the last
	// next hop is kept).
	nextHop func(netip.Addr) (*balancer.NextHop, error)
	nudger  balancer.Nudger
	checker health.Checker
	// link is the frontend interface's state; nil: always up.
	link *linkWatch
	// reattach loads and attaches the program again against the pinned
	// maps (an interface recreated); repin pins the maps again from the
	// daemon's handles first (the pins are gone). nil: not possible.
	reattach func() (loader.Attachment, error)
	repin    func() (loader.Attachment, error)
	// now is the data path's clock (bpf.Now).
	now func() uint64
	// newChecker makes the health checker of a configuration (a reload
	// that changes check settings); nil: health.NewChecker.
	newChecker func(health.CheckKind, health.CheckOptions) (health.Checker, error)
	// notify sends a state to the service manager (sd_notify); nil: none.
	notify func(state string)
	// kick makes the kernel resolve backends' next hops (kickNeighbours);
	// nil: not done.
	kick func(backends []config.BackendSpec, source netip.Addr)
	// sync is flow sync's parts; nil: no flow sync.
	sync *syncParts
}

// linkSettle is how long after its interface comes back a failed check
// is still the node's fault (neighbours and routes being rebuilt).
const linkSettle = 2 * time.Second

// Daemon is a running instance.
type Daemon struct {
	cfgMu   sync.Mutex
	cfg     config.Config // under cfgMu: a reload changes it
	opts    Options
	node    nodeFacts
	log     *slog.Logger
	parts   parts
	bal     *balancer.Balancer
	mon     *health.Monitor
	started time.Time
	// monoBase pairs a time.Time with the data path's clock read at the
	// same moment, to turn check times into data-path timestamps.
	monoBase   time.Time
	monoBaseNs uint64
	latency    sync.Map // backend addr string -> time.Duration

	attMu sync.Mutex
	att   loader.Attachment // as last attached

	reattachMu      sync.Mutex
	reattachAt      time.Time // no attempt before
	reattachBackoff time.Duration

	gcMu      sync.Mutex
	lastGC    balancer.GCResult
	reclaimed int // connections reclaimed, total

	localFaults atomic.Uint64
	faultLog    rateLimit
	refuseLog   rateLimit

	shutdown     chan struct{}
	shutdownOnce sync.Once

	// reloadMu makes reloads one at a time; lastReload is the last one.
	reloadMu   sync.Mutex
	lastReload *ReloadResult
	reloads    [2]atomic.Uint64 // applied, failed

	// stats are the health checks' counters, for metrics.
	stats checkStats

	// sync is flow sync with the peer LB; nil when not configured.
	sync *syncer
	// failOpen is what the daemon last said of failing open.
	failOpen atomic.Bool
}

// Run starts the instance and serves until ctx ends or a shutdown command
// arrives. The program stays attached and pinned when Run returns, so
// tracked connections keep flowing until a new daemon takes over or
// `xdplb detach` removes it.
//
// Everything that can be refused is refused before the kernel is touched:
// the settings, the node's addresses, the check's files, the instance's
// lock, the control socket and the metrics port. A failure after the
// program is attached detaches a fresh instance again.
func Run(ctx context.Context, cfg config.Config, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if opts.Level != nil {
		opts.Level.Set(levelOf(cfg))
	}
	if os.Geteuid() != 0 {
		return errors.New("xdplb run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it with sudo")
	}
	if err := loader.CheckKernel(cfg.Hook, log); err != nil {
		return err
	}
	fdLimit := raiseFileLimit(log)
	node, err := examineNode(cfg)
	if err != nil {
		return err
	}
	checker, err := health.NewChecker(cfg.Check, cfg.CheckOptions(node.source))
	if err != nil {
		return err
	}
	// Own the instance before touching the socket or the kernel: a second
	// daemon of the same instance must not replace the first one's program.
	lock, err := lockInstance(cfg.Instance)
	if err != nil {
		return err
	}
	defer lock.release()
	ctl, err := listenControl(cfg.Instance)
	if err != nil {
		return err
	}
	defer ctl.close()
	var metrics net.Listener
	if cfg.MetricsAddr != "" {
		if metrics, err = listenMetrics(cfg.MetricsAddr); err != nil {
			return err
		}
		defer metrics.Close()
	}
	if node.local {
		if err := reservePorts(node.snat); err != nil {
			return err
		}
	}
	link := newLinkWatch(cfg.Iface)
	if err := link.resync(); err != nil {
		return err
	}
	sp, err := prepareSync(cfg, node, log)
	if err != nil {
		return err
	}
	defer sp.close()
	if sp != nil {
		node.data.Sync = true
	}

	// Preflight: what on this node makes the data path fail or crawl is
	// said now, and auto takes a mode that forwards.
	facts := Facts(cfg)
	for _, c := range preflight.Checks(facts) {
		if c.Result == preflight.Warn || c.Result == preflight.Fail {
			log.Warn("preflight: "+c.Name+": "+c.Detail, "fix", c.Fix)
		}
	}
	mode, modeWhy := preflight.XDPMode(cfg.XDPMode, facts.Iface)
	if cfg.Hook != bpf.HookXDP {
		mode, modeWhy = cfg.XDPMode, ""
	}

	lopts := loader.Options{
		BPFFS: cfg.BPFFS, Instance: cfg.Instance, Iface: cfg.Iface,
		Hook: cfg.Hook, XDPMode: mode,
		Data: node.data, Verbose: cfg.Verbose, NoLink: cfg.NoBPFLink, Logger: log,
	}
	inst, err := loader.Start(lopts)
	if err != nil {
		return err
	}
	defer inst.Close()
	if modeWhy != "" && !inst.Replaced {
		if inst.Attachment.Reason != "" {
			modeWhy += "; " + inst.Attachment.Reason
		}
		inst.Attachment.Reason = modeWhy
	}
	verb := "attached"
	if inst.Replaced {
		verb = "replaced program in place (flow table kept)"
	}
	log.Info(verb, "attachment", inst.Attachment.String(), "clock", inst.Attachment.Clock,
		"frontend", node.data.Frontend.String(), "snat_ports", node.snat.String(), "health_source", node.source.String(),
		"max_conns", cfg.TableConns(), "fd_limit", fdLimit)

	nudger := &RawNudger{}
	defer nudger.Close()
	reattach := func() (loader.Attachment, error) {
		again, err := loader.Start(lopts)
		if err != nil {
			return loader.Attachment{}, err
		}
		again.Close()
		return again.Attachment, nil
	}
	p := parts{
		dp:       loader.Datapath{M: inst.Maps},
		attached: func() (loader.Attachment, error) { return loader.Attached(cfg.BPFFS, cfg.Instance) },
		nextHop:  nextHop,
		nudger:   nudger,
		checker:  checker,
		link:     link,
		reattach: reattach,
		repin: func() (loader.Attachment, error) {
			if err := loader.RepinMaps(cfg.BPFFS, cfg.Instance, inst.Maps); err != nil {
				return loader.Attachment{}, err
			}
			return reattach()
		},
		now:    bpf.Now,
		sync:   sp,
		notify: sdNotifier(),
		kick:   kickNeighbours,
	}
	kickNeighbours(cfg.ResolvedBackends(), node.source)
	if sp != nil {
		err = sp.attach(inst, cfg)
	}
	var d *Daemon
	if err == nil {
		d, err = start(cfg, node, p, inst.Attachment, log)
	}
	if d != nil {
		d.opts = opts
	}
	if err != nil {
		if !inst.Replaced {
			if derr := loader.Detach(cfg.BPFFS, cfg.Instance); derr != nil {
				return fmt.Errorf("%w (and detaching it again failed: %v: run `xdplb detach --instance %s`)", err, derr, cfg.Instance)
			}
			return fmt.Errorf("%w (nothing left attached)", err)
		}
		return fmt.Errorf("%w (the program stays attached; run `xdplb detach --instance %s` to remove it)", err, cfg.Instance)
	}
	defer d.mon.Stop()
	return d.serve(ctx, ctl, metrics, opts.Ready)
}

// levelOf is the log level a configuration asks for.
func levelOf(cfg config.Config) slog.Level {
	if cfg.Verbose {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// start builds the daemon over its parts: the balancer (reading back the
// backends a previous daemon left), the table, the health monitor.
func start(cfg config.Config, node nodeFacts, p parts, att loader.Attachment, log *slog.Logger) (*Daemon, error) {
	d := &Daemon{cfg: cfg, node: node, log: log, parts: p, att: att, started: time.Now(), shutdown: make(chan struct{}),
		faultLog: rateLimit{every: 10 * time.Second}, refuseLog: rateLimit{every: time.Minute}}
	if d.parts.newChecker == nil {
		d.parts.newChecker = health.NewChecker
	}
	d.monoBase, d.monoBaseNs = time.Now(), p.now()
	bal, err := balancer.New(p.dp, balancer.Options{
		Frontend: node.data.Frontend, Backends: cfg.ResolvedBackends(), Timeouts: node.data,
		Logger: log, Nudger: p.nudger, Now: p.now, FailOpen: cfg.AllDown != config.AllDownDrop,
		Forgot: d.forgot,
	})
	if err != nil {
		return nil, err
	}
	d.bal = bal
	if p.sync != nil {
		if d.sync, err = newSyncer(d, *p.sync); err != nil {
			return nil, err
		}
	}
	d.resolveOnce()
	if err := bal.Sync(); err != nil {
		return nil, err
	}
	mon, err := health.NewMonitor(d.guard(p.checker), cfg.HealthParams(), d.onCheck)
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

// guard wraps a checker so that a check that failed while this node's
// own link was down is not counted against the backend.
func (d *Daemon) guard(c health.Checker) health.Checker {
	if d.parts.link == nil {
		return c
	}
	return &health.LocalGuard{Checker: c, Link: d.parts.link, Iface: d.config().Iface, Settle: linkSettle}
}

// config returns the configuration in force.
func (d *Daemon) config() config.Config {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

// stopGrace bounds how long the daemon waits for its goroutines when it
// stops: a stuck one must not keep it from exiting.
const stopGrace = 5 * time.Second

// serve runs the daemon's loops, the control socket and the metrics
// listener until ctx ends (SIGTERM), a shutdown command arrives, or one of
// them fails: then it returns that failure, and the daemon exits non-zero.
func (d *Daemon) serve(parent context.Context, ctl *controlSocket, metrics net.Listener, ready chan<- struct{}) error {
	// The loops run until serve ends them: on SIGTERM (parent done) with
	// flow sync, the daemon first hands the VIP over, its loops still
	// running.
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	failed := make(chan error, 8)
	var wg sync.WaitGroup
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					failed <- fmt.Errorf("%s: panic: %v\n%s", name, r, debug.Stack())
				}
			}()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				failed <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	loop := func(f func(context.Context)) func(context.Context) error {
		return func(ctx context.Context) error { f(ctx); return nil }
	}
	run("next hops", loop(d.resolveLoop))
	run("refusal flags", loop(d.refusedLoop))
	run("flow gc", loop(d.gcLoop))
	run("attachment", loop(d.watchAttachment))
	if d.parts.link != nil {
		run("link watch", func(ctx context.Context) error { return d.parts.link.run(ctx, d.log, d.onLink) })
	}
	run("control socket", loop(func(ctx context.Context) { d.serveControl(ctx, ctl) }))
	run("reload", loop(d.reloadLoop))
	run("all down", loop(d.allDownLoop))
	if d.sync != nil {
		d.sync.run(run)
	}
	var srv *http.Server
	if metrics != nil {
		srv = d.metricsServer()
		run("metrics", func(context.Context) error {
			if err := srv.Serve(metrics); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if ready != nil {
		close(ready)
	}
	d.notifyReady()
	var err error
	select {
	case <-parent.Done():
		if d.sync != nil {
			// A planned stop: hand the VIP over first. A second
			// signal ends the process at once (cmd/xdplb).
			d.sync.handoff(ctx)
		}
	case <-d.shutdown:
	case err = <-failed:
		d.log.Error("stopping: a part of the daemon failed", "err", err)
	}
	d.log.Info("stopping; the program stays attached and keeps forwarding tracked flows")
	d.sdNotify("STOPPING=1\nSTATUS=stopping; the program stays attached and keeps forwarding tracked connections")
	cancel()
	ctl.Listener.Close()
	if srv != nil {
		srv.Close()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopGrace):
		d.log.Warn("stopping without waiting longer for the daemon's goroutines", "after", stopGrace)
	}
	return err
}

// onCheck applies what a health check decided: the monitor reports, the
// balancer acts. It is called from the monitor's goroutines, one at a
// time.
func (d *Daemon) onCheck(ev health.Event) {
	addr, err := netip.ParseAddrPort(ev.Key)
	if err != nil {
		return
	}
	b, ok := d.bal.Lookup(addr)
	if !ok {
		return // removed by a reload while it was being checked
	}
	d.latency.Store(ev.Key, ev.Took)
	d.stats.check(ev.Key, ev.Outcome)
	switch ev.Outcome {
	case health.Healthy:
		// A check that started after a refusal and passed clears it.
		d.bal.ClearRefusedBefore(addr, d.monoAt(ev.At))
	case health.LocalFault:
		d.localFaults.Add(1)
		if d.faultLog.allow() {
			d.log.Warn("health check not counted: this node's own fault, not the backend's; backends keep their state",
				"backend", b.Label(), "err", ev.Detail)
		}
	}
	if tr := ev.Transition; tr != nil {
		d.stats.transition(ev.Key, tr.Up)
		named := *tr
		named.Key = b.Label()
		if tr.Up {
			d.log.Info(named.String())
		} else {
			d.log.Warn(named.String())
		}
		if !tr.Up && tr.KeepConnections {
			d.log.Info("backend answers but is not ready: no new connections, established ones kept", "backend", b.Label())
		}
		if err := d.bal.SetHealth(addr, tr.Up, tr.KeepConnections); err != nil {
			d.log.Error("apply health transition", "backend", b.Label(), "err", err)
		}
		d.notifyStatus()
	}
	if ev.DropConnections {
		if err := d.bal.PurgeFlows(addr); err != nil {
			d.log.Error("remove the connections of a backend that stopped answering", "backend", b.Label(), "err", err)
		}
	}
}

// forgot passes the connections the balancer removes to flow sync.
func (d *Daemon) forgot(why balancer.Forgotten, k bpf.FlowKey, f bpf.Flow) {
	if d.sync != nil {
		d.sync.forgot(why, k, f)
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
			label := addr.String()
			if b, ok := d.bal.Lookup(addr); ok {
				label = b.Label()
			}
			d.log.Info("backend refused a connection (RST to SYN): skipped for new flows, checking now", "backend", label)
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

// gcLoop runs the flow GC every gc-interval, every second while the
// connection table is under pressure (balancer.NextGC), and at once when
// the data path's counters say the table may be filling
// (balancer.GCDue): they are read every second.
func (d *Daemon) gcLoop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		res := d.gc()
		last := time.Now()
		base := d.counters(bpf.StatNewFlow, bpf.StatResetTableFull)
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := d.counters(bpf.StatNewFlow, bpf.StatResetTableFull)
			interval := d.config().GCInterval // a reload may change it
			if interval <= 0 {
				interval = config.DefaultGCInterval
			}
			if time.Since(last) >= balancer.NextGC(res.Pressure, interval) ||
				balancer.GCDue(res.Pressure, now[0]-base[0], now[1]-base[1]) {
				break
			}
		}
	}
}

// counters reads data path counters (0 where they cannot be read).
func (d *Daemon) counters(which ...bpf.Stat) []uint64 {
	out := make([]uint64, len(which))
	stats, err := d.parts.dp.Stats()
	if err != nil {
		return out
	}
	for i, s := range which {
		if int(s) < len(stats) {
			out[i] = stats[s]
		}
	}
	return out
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
	prev := d.lastGC.Pressure.Refusing
	d.lastGC = res
	d.reclaimed += res.Pressure.Reclaimed
	d.gcMu.Unlock()
	p := res.Pressure
	switch {
	case p.Refusing && (!prev || d.refuseLog.allow()):
		d.log.Warn("connection table full: new connections are refused with a RST (established ones are kept); raise max-conns or find the client",
			"live", p.Live, "capacity", p.Capacity, "headroom", balancer.Headroom(p.Capacity), "refused_so_far", d.counter(bpf.StatResetTableFull))
	case !p.Refusing && prev:
		d.log.Info("connection table has room again: new connections accepted", "live", p.Live, "capacity", p.Capacity)
	}
	if p.Reclaimed > 0 {
		d.log.Debug("crowded connection table: ended connections removed before their timeout", "reclaimed", p.Reclaimed)
	}
	for _, b := range res.Freed {
		d.mon.Remove(b.Addr.String())
		d.latency.Delete(b.Addr.String())
		d.stats.forget(b.Addr.String())
		d.log.Info("backend removed by a reload has no connection left: gone", "backend", b.Label())
	}
	if len(res.Freed) > 0 {
		d.notifyStatus()
	}
	return res
}

func (d *Daemon) counter(s bpf.Stat) uint64 { return d.counters(s)[0] }

func (d *Daemon) resolveLoop(ctx context.Context) { every(ctx, time.Second, d.resolveOnce) }

// resolveOnce looks up the next hop of every backend; unresolved backends
// fall back to bpf_fib_lookup in the data path. While the interface is
// down, or when a lookup fails (this node's trouble, not the backend's),
// the last next hop is kept.
func (d *Daemon) resolveOnce() {
	if d.parts.link != nil {
		if up, _, _ := d.parts.link.LinkState(); !up {
			return
		}
	}
	for _, st := range d.bal.Backends() {
		nh, err := d.parts.nextHop(st.Addr.Addr())
		if err != nil {
			d.log.Debug("resolve next hop", "backend", st.Addr.String(), "err", err)
			continue
		}
		if err := d.bal.SetNextHop(st.Addr, nh); err != nil {
			d.log.Warn("write backend next hop", "backend", st.Label(), "err", err)
		}
	}
}

func (d *Daemon) attachment() loader.Attachment {
	d.attMu.Lock()
	defer d.attMu.Unlock()
	return d.att
}

func (d *Daemon) setAttachment(att loader.Attachment) {
	d.attMu.Lock()
	defer d.attMu.Unlock()
	d.att = att
}

func (d *Daemon) stop() { d.shutdownOnce.Do(func() { close(d.shutdown) }) }

// rateLimit lets one event through per interval.
type rateLimit struct {
	mu    sync.Mutex
	every time.Duration
	last  time.Time
}

func (r *rateLimit) allow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && time.Since(r.last) < r.every {
		return false
	}
	r.last = time.Now()
	return true
}

// raiseFileLimit raises the soft limit of open files to the hard one
// (the unit sets LimitNOFILE), and returns the limit in force.
func raiseFileLimit(log *slog.Logger) uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
			log.Warn("raise the open files limit", "soft", lim.Cur, "hard", lim.Max, "err", err)
			return lim.Cur
		}
		lim = want
	}
	return lim.Cur
}
