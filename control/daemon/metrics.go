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

	"github.com/xdplb/xdplb/bpf"
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
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		d.writeMetrics(w)
	})
	return &http.Server{
		Handler: mux, ReadHeaderTimeout: metricsReadHeader, ReadTimeout: metricsRead,
		WriteTimeout: metricsWrite, IdleTimeout: metricsIdle, MaxHeaderBytes: 16 << 10,
		ErrorLog: log.New(io.Discard, "", 0),
	}
}

func (d *Daemon) writeMetrics(w io.Writer) {
	st := d.status()
	family := func(name, typ, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	family("xdplb_backend_up", "gauge", "1 if the backend is up (health checks pass).")
	for _, b := range st.Backends {
		up := 0
		if b.State != StateDown {
			up = 1
		}
		fmt.Fprintf(w, "xdplb_backend_up{backend=%q,state=%q} %d\n", b.Addr, b.State, up)
	}
	per := []struct {
		name, typ, help string
		value           func(BackendStatus) any
	}{
		{"xdplb_backend_weight", "gauge", "Configured weight (0 = drained).", func(b BackendStatus) any { return b.Weight }},
		{"xdplb_backend_connections", "gauge", "Tracked established connections (at the last flow GC).", func(b BackendStatus) any { return b.Connections }},
		{"xdplb_backend_half_open", "gauge", "Tracked half-open connections (at the last flow GC).", func(b BackendStatus) any { return b.HalfOpen }},
		{"xdplb_backend_packets_total", "counter", "Packets forwarded to or from the backend.", func(b BackendStatus) any { return b.Packets }},
		{"xdplb_backend_bytes_total", "counter", "Bytes forwarded to or from the backend.", func(b BackendStatus) any { return b.Bytes }},
		{"xdplb_backend_new_connections_total", "counter", "Connections opened to the backend.", func(b BackendStatus) any { return b.NewFlows }},
		{"xdplb_backend_check_seconds", "gauge", "Duration of the last health check.", func(b BackendStatus) any { return b.CheckMillis / 1000 }},
	}
	for _, p := range per {
		family(p.name, p.typ, p.help)
		for _, b := range st.Backends {
			fmt.Fprintf(w, "%s{backend=%q} %v\n", p.name, b.Addr, p.value(b))
		}
	}
	family("xdplb_packets_total", "counter", "Packets by verdict and reason (info: events counted on top).")
	for _, s := range bpf.Stats() {
		fmt.Fprintf(w, "xdplb_packets_total{verdict=%q,reason=%q} %d\n", s.Verdict(), s.Name(), st.Counters[s.Name()])
	}
	family("xdplb_flow_table_entries", "gauge", "Entries in each flow table (at the last flow GC).")
	family("xdplb_flow_table_capacity", "gauge", "Capacity of each flow table.")
	for _, t := range []struct {
		name string
		cap  uint32
	}{{bpf.TableEstablished.String(), d.parts.dp.TableCapacity(bpf.TableEstablished)}, {bpf.TableHalfOpen.String(), d.parts.dp.TableCapacity(bpf.TableHalfOpen)}} {
		fmt.Fprintf(w, "xdplb_flow_table_entries{table=%q} %d\n", t.name, st.Flows[t.name])
		fmt.Fprintf(w, "xdplb_flow_table_capacity{table=%q} %d\n", t.name, t.cap)
	}
	family("xdplb_connections_live", "gauge", "Established connections in the connection table (at the last flow GC).")
	fmt.Fprintf(w, "xdplb_connections_live %d\n", st.Table.Live)
	family("xdplb_connections_capacity", "gauge", "Connections the connection table holds (max-conns).")
	fmt.Fprintf(w, "xdplb_connections_capacity %d\n", st.Table.Capacity)
	family("xdplb_refusing_new_connections", "gauge", "1 while the connection table is full and new connections are refused with a RST (see reset_table_full).")
	fmt.Fprintf(w, "xdplb_refusing_new_connections %d\n", b2i(st.Table.Refusing))
	family("xdplb_connections_reclaimed_total", "counter", "Ended connections removed before their timeout to make room in a crowded table.")
	fmt.Fprintf(w, "xdplb_connections_reclaimed_total %d\n", st.Table.ReclaimedTotal)
	family("xdplb_link_up", "gauge", "1 while the frontend interface is up; while it is down, health checks are not counted.")
	fmt.Fprintf(w, "xdplb_link_up{iface=%q} %d\n", st.Iface, b2i(st.LinkUp))
	family("xdplb_health_checks_not_counted_total", "counter", "Checks that failed because of this node (out of descriptors, no route, its link down), not counted against the backend.")
	fmt.Fprintf(w, "xdplb_health_checks_not_counted_total %d\n", st.LocalFaults)
	family("process_open_fds", "gauge", "Open file descriptors of the daemon.")
	fmt.Fprintf(w, "process_open_fds %d\n", st.FDs)
	family("process_max_fds", "gauge", "The daemon's limit of open file descriptors.")
	fmt.Fprintf(w, "process_max_fds %d\n", st.FDLimit)
	family("xdplb_failing_open", "gauge", "1 while no backend can take new connections as far as this node sees and new connections go to every configured backend anyway (all-down: open).")
	fmt.Fprintf(w, "xdplb_failing_open %d\n", b2i(st.FailingOpen))
	if st.Sync != nil {
		writeSyncMetrics(w, st.Sync)
	}
	attached := b2i(st.Attached)
	family("xdplb_attached", "gauge", "1 if the program is attached.")
	fmt.Fprintf(w, "xdplb_attached{iface=%q,hook=%q,mode=%q} %d\n", st.Iface, st.Attachment.Hook, strings.ToLower(st.Attachment.Mode), attached)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
