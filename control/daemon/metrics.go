package daemon

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/health"
	flowsync "github.com/xdplb/xdplb/control/sync"
)

// Limits of the metrics listener: a scraper needs one connection and a
// few seconds; anyone who can reach the port (any local user on
// 127.0.0.1) must not be able to hold more than a few descriptors of the
// daemon's (issue 10 §1: 20 000 idle connections took every backend down).
const (
	maxMetricsConns   = 32
	metricsReadHeader = 5 * time.Second
	metricsRead       = 10 * time.Second
	metricsWrite      = 10 * time.Second
	metricsIdle       = 30 * time.Second
)

// listenMetrics opens the metrics listener, before anything touches the
// kernel: a port in use fails the start.
func listenMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w (set metrics-addr to a free port, or leave it empty for no metrics)", addr, err)
	}
	return &capListener{Listener: ln, slots: make(chan struct{}, maxMetricsConns)}, nil
}

// capListener admits at most cap(slots) connections at once; one over is
// closed as soon as it is accepted, so it holds a descriptor for no time.
type capListener struct {
	net.Listener
	slots        chan struct{}
	refused      atomic.Uint64
	accepted     atomic.Uint64
	acceptErrors atomic.Uint64
}

func (l *capListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			// Out of descriptors or buffers: wait and accept again; the
			// listener ends only when it is closed.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.acceptErrors.Add(1)
			time.Sleep(delay)
			continue
		}
		delay = 0
		select {
		case l.slots <- struct{}{}:
			l.accepted.Add(1)
			return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			l.refused.Add(1)
			c.Close()
		}
	}
}

type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// metricsServer is the HTTP server of the metrics listener, with every
// timeout set: a connection that sends no request, or sends it slowly,
// or idles after one, is closed.
func (d *Daemon) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.registry(), promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4, Timeout: metricsWrite - time.Second,
	}))
	return &http.Server{
		Handler: mux, ReadHeaderTimeout: metricsReadHeader, ReadTimeout: metricsRead,
		WriteTimeout: metricsWrite, IdleTimeout: metricsIdle, MaxHeaderBytes: 16 << 10,
		ErrorLog: log.New(io.Discard, "", 0),
	}
}

// registry holds the daemon's collector and the process's and Go
// runtime's (process_open_fds, process_resident_memory_bytes, go_*).
func (d *Daemon) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{d: d},
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return reg
}

// The daemon's metrics. A custom collector builds them at scrape time
// from the daemon's status, which reads the data path's maps then: no
// copy is kept, and a backend removed by a reload disappears from the
// next scrape.
var (
	backendLabels = []string{"backend", "name"}

	mBuildInfo = prometheus.NewDesc("xdplb_build_info",
		"Always 1; the labels say which xdplb runs.", []string{"version", "goversion"}, nil)
	mBackendState = prometheus.NewDesc("xdplb_backend_state",
		"1 for the state the backend is in, 0 for the others: up (takes new connections), down (failed its checks), "+
			"drain (drained or weight 0: established connections stay), retiring (removed by a reload: gone once its connections end).",
		append(backendLabels, "state"), nil)
	mBackendWeight = prometheus.NewDesc("xdplb_backend_weight",
		"Maglev weight of the backend (0: drained).", backendLabels, nil)
	mBackendConns = prometheus.NewDesc("xdplb_backend_connections",
		"Established connections tracked to the backend (at the last flow GC).", backendLabels, nil)
	mBackendHalfOpen = prometheus.NewDesc("xdplb_backend_half_open_connections",
		"Half-open connections tracked to the backend (at the last flow GC).", backendLabels, nil)
	mBackendPackets = prometheus.NewDesc("xdplb_backend_packets_total",
		"Packets forwarded to or from the backend.", backendLabels, nil)
	mBackendBytes = prometheus.NewDesc("xdplb_backend_bytes_total",
		"Bytes forwarded to or from the backend.", backendLabels, nil)
	mBackendNew = prometheus.NewDesc("xdplb_backend_new_connections_total",
		"Connections opened to the backend.", backendLabels, nil)
	mBackendCheckSeconds = prometheus.NewDesc("xdplb_backend_check_duration_seconds",
		"Duration of the backend's last health check.", backendLabels, nil)
	mChecks = prometheus.NewDesc("xdplb_health_checks_total",
		"Health checks by result: healthy, not_ready (answered, e.g. /readyz 503), no_answer, "+
			"local_fault (this node's own fault: not counted against the backend).", append(backendLabels, "result"), nil)
	mTransitions = prometheus.NewDesc("xdplb_backend_transitions_total",
		"Changes of the backend's health state, by the state it went to (up or down).", append(backendLabels, "to"), nil)
	mPackets = prometheus.NewDesc("xdplb_packets_total",
		"Packets by verdict and reason: each packet the program sees is counted once.", []string{"verdict", "reason"}, nil)
	mEvents = prometheus.NewDesc("xdplb_events_total",
		"Events of the data path, counted on top of packets (flow expired, flow reopened, fib lookup, ...).", []string{"event"}, nil)
	mTableEntries = prometheus.NewDesc("xdplb_flow_table_entries",
		"Entries in each flow table (at the last flow GC).", []string{"table"}, nil)
	mTableCapacity = prometheus.NewDesc("xdplb_flow_table_capacity",
		"Entries each flow table holds.", []string{"table"}, nil)
	mConnsLive = prometheus.NewDesc("xdplb_connections_live",
		"Established connections in the connection table (at the last flow GC).", nil, nil)
	mConnsCapacity = prometheus.NewDesc("xdplb_connections_capacity",
		"Connections the connection table holds (max-conns).", nil, nil)
	mRefusing = prometheus.NewDesc("xdplb_refusing_new_connections",
		"1 while the connection table is full and new connections are refused with a RST (see reset_table_full).", nil, nil)
	mReclaimed = prometheus.NewDesc("xdplb_connections_reclaimed_total",
		"Ended connections removed before their timeout to make room in a crowded table.", nil, nil)
	mLinkUp = prometheus.NewDesc("xdplb_link_up",
		"1 while the frontend interface is up; while it is down, health checks are not counted.", []string{"iface"}, nil)
	mAttached = prometheus.NewDesc("xdplb_attached",
		"1 if the program is attached.", []string{"iface", "hook", "mode"}, nil)
	mReloads = prometheus.NewDesc("xdplb_config_reloads_total",
		"Reloads of the configuration (SIGHUP, xdplb reload), by result: applied, or failed (nothing changed).", []string{"result"}, nil)
	mReloadOK = prometheus.NewDesc("xdplb_config_last_reload_successful",
		"1 if the last reload was applied (or none was tried), 0 if it failed and the running configuration is older than the file.", nil, nil)
	mStarted = prometheus.NewDesc("xdplb_start_time_seconds",
		"When the daemon started, in seconds since the epoch.", nil, nil)
	mFailingOpen = prometheus.NewDesc("xdplb_failing_open",
		"1 while no backend can take new connections as far as this node sees and new connections go to every configured backend anyway (all-down: open).", nil, nil)

	// Flow sync (present when sync-peer is set).
	mSyncState = prometheus.NewDesc("xdplb_sync_state",
		"1 for the state of the session with the peer: disconnected, resyncing or in sync; 0 for the others.", []string{"state"}, nil)
	mSyncGate = prometheus.NewDesc("xdplb_sync_gate_open",
		"1 when flow sync lets `xdplb check` pass (resynced, nobody to resync from, or this node forwards).", nil, nil)
	mSyncVIP = prometheus.NewDesc("xdplb_sync_holds_vip",
		"1 while the VIP is on this node.", nil, nil)
	mSyncLag = prometheus.NewDesc("xdplb_sync_lag_seconds",
		"Age of the oldest change not yet sent to the peer.", nil, nil)
	mSyncPending = prometheus.NewDesc("xdplb_sync_pending",
		"Connections whose change waits to be sent.", nil, nil)
	mSyncSentLagP50 = prometheus.NewDesc("xdplb_sync_sent_lag_p50_seconds",
		"Median of how long the recent changes waited before they were sent.", nil, nil)
	mSyncSentLagP99 = prometheus.NewDesc("xdplb_sync_sent_lag_p99_seconds",
		"99th percentile of how long the recent changes waited before they were sent.", nil, nil)
	mSyncDropped = prometheus.NewDesc("xdplb_sync_dropped_total",
		"Frames and connections of the peer refused, by reason; nothing refused is installed.", []string{"reason"}, nil)
	mSyncSessions = prometheus.NewDesc("xdplb_sync_sessions_total",
		"Sync sessions opened with the peer.", nil, nil)
	mSyncTakeovers = prometheus.NewDesc("xdplb_sync_takeovers_total",
		"Times the VIP arrived on this node.", nil, nil)
	mSyncResyncSeconds = prometheus.NewDesc("xdplb_sync_last_resync_seconds",
		"Duration of the last bulk resync received from the peer.", nil, nil)
	mSyncResyncConns = prometheus.NewDesc("xdplb_sync_last_resync_connections",
		"Connections of the last bulk resync received from the peer.", nil, nil)
	mSyncTakeoverReady = prometheus.NewDesc("xdplb_sync_last_takeover_connections_ready",
		"Established connections in this node's table when the VIP last arrived.", nil, nil)
	// mSyncCounters are flow sync's counters (syncCounterHelp), one
	// metric each: xdplb_sync_<name>_total.
	mSyncCounters = func() map[string]*prometheus.Desc {
		m := map[string]*prometheus.Desc{}
		for _, c := range syncCounterHelp {
			m[c.name] = prometheus.NewDesc("xdplb_sync_"+c.name+"_total", c.help, nil, nil)
		}
		return m
	}()
)

// checkResults are the label values of health.Outcome.
var checkResults = [...]string{health.Healthy: "healthy", health.NotReady: "not_ready", health.NoAnswer: "no_answer", health.LocalFault: "local_fault"}

type collector struct{ d *Daemon }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{mBuildInfo, mBackendState, mBackendWeight, mBackendConns, mBackendHalfOpen,
		mBackendPackets, mBackendBytes, mBackendNew, mBackendCheckSeconds, mChecks, mTransitions, mPackets, mEvents,
		mTableEntries, mTableCapacity, mConnsLive, mConnsCapacity, mRefusing, mReclaimed, mLinkUp, mAttached,
		mReloads, mReloadOK, mStarted, mFailingOpen, mSyncState, mSyncGate, mSyncVIP, mSyncLag, mSyncPending,
		mSyncSentLagP50, mSyncSentLagP99, mSyncDropped, mSyncSessions, mSyncTakeovers, mSyncResyncSeconds, mSyncResyncConns, mSyncTakeoverReady} {
		ch <- desc
	}
	for _, c := range syncCounterHelp {
		ch <- mSyncCounters[c.name]
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	st := d.status()
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	b := Build()
	gauge(mBuildInfo, 1, b.Version, b.GoVersion)
	for _, be := range st.Backends {
		l := []string{be.Addr, be.Name}
		for _, s := range States {
			gauge(mBackendState, b2f(be.State == s), be.Addr, be.Name, strings.ToLower(string(s)))
		}
		gauge(mBackendWeight, float64(be.Weight), l...)
		gauge(mBackendConns, float64(be.Connections), l...)
		gauge(mBackendHalfOpen, float64(be.HalfOpen), l...)
		counter(mBackendPackets, float64(be.Packets), l...)
		counter(mBackendBytes, float64(be.Bytes), l...)
		counter(mBackendNew, float64(be.NewFlows), l...)
		gauge(mBackendCheckSeconds, be.CheckMillis/1000, l...)
		checks, moves := d.stats.snapshot(be.Addr)
		for o, name := range checkResults {
			counter(mChecks, float64(checks[o]), be.Addr, be.Name, name)
		}
		counter(mTransitions, float64(moves[0]), be.Addr, be.Name, "down")
		counter(mTransitions, float64(moves[1]), be.Addr, be.Name, "up")
	}
	for _, s := range bpf.Stats() {
		v := float64(st.Counters[s.Name()])
		if s.Verdict() == bpf.VerdictInfo {
			counter(mEvents, v, s.Name())
		} else {
			counter(mPackets, v, s.Verdict(), s.Name())
		}
	}
	for _, t := range []bpf.FlowTable{bpf.TableEstablished, bpf.TableHalfOpen} {
		gauge(mTableEntries, float64(st.Flows[t.String()]), t.String())
		gauge(mTableCapacity, float64(d.parts.dp.TableCapacity(t)), t.String())
	}
	gauge(mConnsLive, float64(st.Table.Live))
	gauge(mConnsCapacity, float64(st.Table.Capacity))
	gauge(mRefusing, b2f(st.Table.Refusing))
	counter(mReclaimed, float64(st.Table.ReclaimedTotal))
	gauge(mLinkUp, b2f(st.LinkUp), st.Iface)
	gauge(mAttached, b2f(st.Attached), st.Iface, string(st.Attachment.Hook), strings.ToLower(st.Attachment.Mode))
	counter(mReloads, float64(d.reloads[0].Load()), "applied")
	counter(mReloads, float64(d.reloads[1].Load()), "failed")
	gauge(mReloadOK, b2f(st.Reload == nil || st.Reload.OK))
	gauge(mStarted, float64(st.Started.UnixNano())/1e9)
	gauge(mFailingOpen, b2f(st.FailingOpen))
	if sy := st.Sync; sy != nil {
		collectSync(ch, sy)
	}
}

// collectSync is flow sync's part of the metrics.
func collectSync(ch chan<- prometheus.Metric, st *SyncStatus) {
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	for _, s := range []string{syncDisconnected, syncResyncing, syncInSync} {
		gauge(mSyncState, b2f(st.State == s), s)
	}
	gauge(mSyncGate, b2f(st.GateOpen))
	gauge(mSyncVIP, b2f(st.HoldsVIP))
	gauge(mSyncLag, st.LagMS/1000)
	gauge(mSyncPending, float64(st.Pending))
	gauge(mSyncSentLagP50, st.LagP50MS/1000)
	gauge(mSyncSentLagP99, st.LagP99MS/1000)
	for _, c := range syncCounterHelp {
		counter(mSyncCounters[c.name], float64(st.Counters[c.name]))
	}
	for _, r := range append(append([]flowsync.Reason{}, flowsync.FrameReasons...), flowsync.RecordReasons...) {
		counter(mSyncDropped, float64(st.Dropped[string(r)]), string(r))
	}
	counter(mSyncSessions, float64(st.Sessions))
	counter(mSyncTakeovers, float64(st.Takeovers))
	if r := st.LastResync; r != nil {
		gauge(mSyncResyncSeconds, r.DurationMS/1000)
		gauge(mSyncResyncConns, float64(r.Connections))
	}
	if t := st.LastTakeover; t != nil {
		gauge(mSyncTakeoverReady, float64(t.ConnectionsReady))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
