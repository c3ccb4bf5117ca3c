package daemon

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/xdplb/xdplb/bpf"
)

// startMetrics serves Prometheus text exposition on cfg.MetricsAddr.
func (d *Daemon) startMetrics() (*http.Server, error) {
	ln, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w (set metrics-addr, or leave it empty for no metrics)", d.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		d.writeMetrics(w)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
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
	attached := 0
	if st.Attached {
		attached = 1
	}
	family("xdplb_attached", "gauge", "1 if the program is attached.")
	fmt.Fprintf(w, "xdplb_attached{iface=%q,hook=%q,mode=%q} %d\n", st.Iface, st.Attachment.Hook, strings.ToLower(st.Attachment.Mode), attached)
}
