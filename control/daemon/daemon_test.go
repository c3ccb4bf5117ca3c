package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer"
	"github.com/xdplb/xdplb/control/balancer/balancertest"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
	"github.com/xdplb/xdplb/loader"
)

var (
	s1 = netip.MustParseAddrPort("10.10.10.50:6443")
	s2 = netip.MustParseAddrPort("10.10.10.51:6443")
	s3 = netip.MustParseAddrPort("10.10.10.52:6443")
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// scripted answers each backend's checks with the outcome it is set to.
type scripted struct {
	mu  sync.Mutex
	now map[string]error
}

func (s *scripted) set(addr netip.AddrPort, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now[addr.String()] = err
}

func (s *scripted) Check(_ context.Context, addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now[addr]
}

type nudges struct {
	mu  sync.Mutex
	got []netip.AddrPort
}

func (n *nudges) Nudge(_, client netip.AddrPort) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, client)
	return nil
}

func (n *nudges) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.got)
}

var (
	notReady = &health.CheckError{Step: "https GET /readyz", Err: &health.StatusError{Code: 503}}
	refused  = &health.CheckError{Step: "tls handshake", Err: errors.New("connection refused")}
)

type rig struct {
	d       *Daemon
	dp      *balancertest.Datapath
	checker *scripted
	nudges  *nudges
	// detached makes the fake attachment report the program gone.
	detached bool
}

func testConfig() config.Config {
	cfg := config.DefaultConfig()
	cfg.Iface, cfg.VIP = "eth1", netip.MustParseAddr("10.10.10.100")
	cfg.Inter = time.Second
	cfg.MetricsAddr = ""
	for i, s := range []netip.AddrPort{s1, s2, s3} {
		cfg.Backends = append(cfg.Backends, config.BackendSpec{Name: fmt.Sprintf("server-%d", i+1), Addr: s, Weight: 1})
	}
	return cfg
}

// newRig wires a daemon over a fake datapath, a scripted checker and
// recorded nudges, as Run wires the real parts.
func newRig(t *testing.T) *rig { return newRigWith(t, nil) }

// newRigWith is newRig with the configuration and the parts changed by
// change before the daemon starts.
func newRigWith(t *testing.T, change func(*config.Config, *parts)) *rig {
	t.Helper()
	cfg := testConfig()
	node, err := decideNode(cfg, []netip.Addr{netip.MustParseAddr("10.10.10.98")}, config.PortRange{Lo: 32768, Hi: 60999})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dp: balancertest.New(), checker: &scripted{now: map[string]error{}}, nudges: &nudges{}}
	var clock uint64 = 1e12
	p := parts{
		dp: r.dp,
		attached: func() (loader.Attachment, error) {
			if r.detached {
				return loader.Attachment{}, errors.New("program 7 is pinned but not attached to any interface")
			}
			return loader.Attachment{Iface: "eth1", Hook: bpf.HookXDP, Mode: "native", ProgID: 7}, nil
		},
		nextHop: func(netip.Addr) (*balancer.NextHop, error) {
			return &balancer.NextHop{MAC: [6]byte{2}, Ifindex: 2}, nil
		},
		nudger:  r.nudges,
		checker: r.checker,
		now:     func() uint64 { clock += 1e6; return clock },
	}
	if change != nil {
		change(&cfg, &p)
	}
	r.d, err = start(cfg, node, p, loader.Attachment{Iface: "eth1", Hook: bpf.HookXDP, Mode: "native", Via: "bpf_link", ProgID: 7}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.d.mon.Stop)
	return r
}

func (r *rig) backend(t *testing.T, addr netip.AddrPort) balancer.Backend {
	t.Helper()
	b, ok := r.d.bal.Lookup(addr)
	if !ok {
		t.Fatalf("backend %s not configured", addr)
	}
	return b
}

func (r *rig) conns(id uint32) int {
	n := 0
	for _, f := range r.dp.Flows(bpf.TableEstablished) {
		if f.Backend == id && f.Dir == uint8(bpf.FlowToBackend) {
			n++
		}
	}
	return n
}

// TestHealthDecisionsReachTheDataPath: what the health policy decides is
// what happens to the data path's table and connections. A backend that
// stops answering loses its connections when it goes down; one that
// answers "not ready" keeps them until it stops answering too; a passing
// check clears a refusal flag raised before it.
func TestHealthDecisionsReachTheDataPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t)
		inter := r.d.cfg.HealthParams().Inter
		fall := r.d.cfg.HealthParams().Fall
		ids := map[netip.AddrPort]uint32{}
		for i, s := range []netip.AddrPort{s1, s2, s3} {
			ids[s] = r.backend(t, s).ID
			for c := range 2 {
				client := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), uint16(40000+10*i+c))
				r.dp.AddConn(client, s, ids[s], uint16(20000+10*i+c), r.d.parts.now(), bpf.FlowEstablished)
			}
		}
		// A refusal flagged after the first checks started: they do not
		// clear it, the next passing one does.
		r.dp.SetRefused(ids[s1], r.d.parts.now())
		synctest.Wait()
		if ts, _ := r.dp.Refused(ids[s1]); ts == 0 {
			t.Errorf("refusal flag of %s cleared by a check that started before it", s1)
		}
		time.Sleep(inter)
		synctest.Wait()
		if ts, _ := r.dp.Refused(ids[s1]); ts != 0 {
			t.Errorf("refusal flag of %s not cleared by a check that started after it and passed", s1)
		}

		r.checker.set(s2, notReady)
		r.checker.set(s3, refused)
		time.Sleep(time.Duration(fall+1) * inter)
		synctest.Wait()
		if b := r.backend(t, s3); b.Up || r.conns(ids[s3]) != 0 {
			t.Errorf("%s after %d checks without answer: up=%v, %d connections left; want down, none", s3, fall, b.Up, r.conns(ids[s3]))
		}
		if b := r.backend(t, s2); b.Up || !b.FlowsKept || r.conns(ids[s2]) != 2 {
			t.Errorf("%s not ready: up=%v kept=%v, %d connections; want down with its 2 connections kept", s2, b.Up, b.FlowsKept, r.conns(ids[s2]))
		}
		if n := r.nudges.count(); n != 2 {
			t.Errorf("%d clients nudged, want the 2 of %s", n, s3)
		}
		for _, id := range r.dp.Live() {
			if id == ids[s2] || id == ids[s3] {
				t.Fatalf("a down backend still owns slots in the live table")
			}
		}

		r.checker.set(s2, refused)
		time.Sleep(time.Duration(fall+1) * r.d.cfg.HealthParams().DownInter)
		synctest.Wait()
		if n := r.conns(ids[s2]); n != 0 || r.nudges.count() != 4 {
			t.Errorf("%s stopped answering: %d connections left, %d nudges; want 0 and 4", s2, n, r.nudges.count())
		}
		if r.conns(ids[s1]) != 2 {
			t.Errorf("the healthy backend lost connections")
		}
		var ms float64
		for _, b := range r.d.status().Backends {
			if b.Addr == s1.String() {
				ms = b.CheckMillis
			}
		}
		if ms != 0 { // checks take no time in the bubble
			t.Errorf("check latency %vms, want 0 (recorded from the monitor's events)", ms)
		}
	})
}

// TestControlSocket drives the daemon's socket as the CLI does.
func TestControlSocket(t *testing.T) {
	RunDir = t.TempDir()
	r := newRig(t)
	r.d.cfg.Instance = "sock-test"
	lock, err := lockInstance("sock-test")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.release()
	if _, err := lockInstance("sock-test"); err == nil || !strings.Contains(err.Error(), "already has a running daemon (pid ") {
		t.Fatalf("second lock: %v", err)
	}
	ln, err := listenControl("sock-test")
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- r.d.serve(context.Background(), ln, nil, ready) }()
	<-ready

	call := func(req Request) Response {
		t.Helper()
		resp, err := Call("sock-test", req)
		if err != nil {
			t.Fatalf("%s: %v", req.Cmd, err)
		}
		return resp
	}
	if resp := call(Request{Cmd: "status"}); !resp.OK || resp.Status == nil || len(resp.Status.Backends) != 3 || resp.Status.Frontend != "10.10.10.100:6443" {
		t.Fatalf("status: %+v", resp)
	}
	if resp := call(Request{Cmd: "check"}); !resp.OK {
		t.Fatalf("check with backends up: %+v", resp)
	}
	if resp := call(Request{Cmd: "drain", Addr: "10.10.10.51"}); !resp.OK {
		t.Fatalf("drain by ip: %+v", resp)
	}
	if st := state(call(Request{Cmd: "status"}).Status, s2); st != StateDrain {
		t.Fatalf("after drain %s is %s", s2, st)
	}
	if resp := call(Request{Cmd: "enable", Addr: s2.String()}); !resp.OK {
		t.Fatalf("enable: %+v", resp)
	}
	if resp := call(Request{Cmd: "weight", Addr: s3.String(), Weight: 0}); !resp.OK || state(call(Request{Cmd: "status"}).Status, s3) != StateDrain {
		t.Fatalf("weight 0 drains: %+v", resp)
	}
	if resp := call(Request{Cmd: "weight", Addr: s3.String(), Weight: 1000}); resp.OK || !strings.Contains(resp.Error, "at most") {
		t.Fatalf("weight 1000: %+v", resp)
	}
	if resp := call(Request{Cmd: "drain", Addr: "10.10.10.99"}); resp.OK || !strings.Contains(resp.Error, "not configured") {
		t.Fatalf("drain of an unknown backend: %+v", resp)
	}
	if resp := call(Request{Cmd: "frob"}); resp.OK || !strings.Contains(resp.Error, `unknown command "frob"`) {
		t.Fatalf("unknown command: %+v", resp)
	}
	// The split of issue 11 §3: `check` says whether this node can
	// forward; `check --backends` whether it sees a backend that can take
	// new connections, and why not.
	if resp := call(Request{Cmd: "check", Backends: true}); !resp.OK {
		t.Fatalf("check --backends with backends up: %+v", resp)
	}
	r.d.bal.SetHealth(s1, false, false)
	r.d.bal.SetHealth(s2, false, false)
	r.d.bal.SetDrained(s3, true)
	if resp := call(Request{Cmd: "check"}); !resp.OK {
		t.Fatalf("check with no backend taking connections: %+v; want ok, the node still forwards", resp)
	}
	resp := call(Request{Cmd: "check", Backends: true})
	if want := "no backend can take new connections: 10.10.10.50:6443 DOWN (check ok (0/3)); "; resp.OK || !strings.HasPrefix(resp.Error, want) ||
		!strings.HasSuffix(resp.Error, "10.10.10.52:6443 DRAIN (drained by the operator)") {
		t.Fatalf("check --backends with every backend down or drained: %+v", resp)
	}
	r.d.bal.SetDrained(s3, false)
	r.d.bal.SetWeight(s3, 0)
	if resp := call(Request{Cmd: "check", Backends: true}); resp.OK || !strings.HasSuffix(resp.Error, "10.10.10.52:6443 DRAIN (weight 0)") {
		t.Fatalf("check --backends with the last backend at weight 0: %+v", resp)
	}
	r.d.bal.SetHealth(s1, true, false)
	if resp := call(Request{Cmd: "check", Backends: true}); !resp.OK {
		t.Fatalf("check --backends with a backend up again: %+v", resp)
	}
	r.detached = true
	for _, backends := range []bool{false, true} {
		if resp := call(Request{Cmd: "check", Backends: backends}); resp.OK || !strings.Contains(resp.Error, "program not attached") {
			t.Fatalf("check (backends %v) with the program detached: %+v", backends, resp)
		}
	}
	if resp := call(Request{Cmd: "shutdown"}); !resp.OK {
		t.Fatalf("shutdown: %+v", resp)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon still serving 5s after shutdown")
	}
}

func state(st *Status, addr netip.AddrPort) State {
	for _, b := range st.Backends {
		if b.Addr == addr.String() {
			return b.State
		}
	}
	return ""
}

// TestMetrics: the exposition passes client_golang's lint (names, units,
// help, counters' _total), has one series per backend state (one-hot),
// keeps events apart from packets, and counts checks and transitions.
func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t)
		r.dp.Count(bpf.StatToBackend, 41)
		r.dp.Count(bpf.StatFlowExpired, 3)
		r.checker.set(s2, refused)
		time.Sleep(2500 * time.Millisecond) // s2: three failed checks at 0, 1, 2 s: down
		synctest.Wait()
		reg := r.d.registry()
		problems, err := testutil.GatherAndLint(reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
		out := gatherText(t, reg)
		for _, want := range []string{
			`xdplb_backend_state{backend="10.10.10.50:6443",name="server-1",state="up"} 1`,
			`xdplb_backend_state{backend="10.10.10.50:6443",name="server-1",state="down"} 0`,
			`xdplb_backend_state{backend="10.10.10.51:6443",name="server-2",state="down"} 1`,
			`xdplb_backend_state{backend="10.10.10.51:6443",name="server-2",state="up"} 0`,
			`xdplb_health_checks_total{backend="10.10.10.51:6443",name="server-2",result="no_answer"} 3`,
			`xdplb_health_checks_total{backend="10.10.10.50:6443",name="server-1",result="healthy"} 3`,
			`xdplb_backend_transitions_total{backend="10.10.10.51:6443",name="server-2",to="down"} 1`,
			`xdplb_packets_total{reason="to_backend",verdict="forward"} 41`,
			`xdplb_events_total{event="flow_expired"} 3`,
			`xdplb_flow_table_capacity{table="flows"} 262144`,
			`xdplb_flow_table_capacity{table="half_open"} 65536`,
			`xdplb_attached{hook="xdp",iface="eth1",mode="native"} 1`,
			`xdplb_build_info{goversion="` + runtime.Version() + `",version="` + Version + `"} 1`,
			`xdplb_config_last_reload_successful 1`,
			"process_open_fds ", "go_goroutines ",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		if strings.Contains(out, `reason="flow_expired"`) {
			t.Error("an event is counted as packets")
		}
		// One-hot: exactly one state per backend is 1.
		for _, b := range []netip.AddrPort{s1, s2, s3} {
			if n := strings.Count(out, `xdplb_backend_state{backend="`+b.String()+`",`); n != len(States) {
				t.Errorf("%s has %d state series, want %d", b, n, len(States))
			}
		}
	})
}

// gatherText is the registry's exposition in the text format.
func gatherText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestDecideNode: what the interface's addresses mean.
func TestDecideNode(t *testing.T) {
	cfg := testConfig()
	eph := config.PortRange{Lo: 32768, Hi: 60999}
	lb1 := netip.MustParseAddr("10.10.10.98")
	vip := cfg.VIP
	cases := []struct {
		name       string
		own        []netip.Addr
		mutate     func(*config.Config)
		local      bool
		source     netip.Addr
		snat, errs string
	}{
		{name: "vip frontend: checks from the node's address", own: []netip.Addr{lb1}, source: lb1, snat: "6444-65535"},
		{name: "node address frontend", own: []netip.Addr{vip}, local: true, source: vip, snat: "61000-65535"},
		{name: "check-source wins", own: []netip.Addr{lb1}, mutate: func(c *config.Config) { c.CheckSource = netip.MustParseAddr("10.10.10.97") },
			source: netip.MustParseAddr("10.10.10.97"), snat: "6444-65535"},
		{name: "no address of its own", own: nil, errs: "no IPv4 address of its own"},
		{name: "snat range inside the ephemeral range on the node address", own: []netip.Addr{vip}, local: true,
			mutate: func(c *config.Config) { c.SNATPorts = config.PortRange{Lo: 40000, Hi: 50000} }, errs: "ephemeral"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig()
			if c.mutate != nil {
				c.mutate(&cfg)
			}
			n, err := decideNode(cfg, c.own, eph)
			if c.errs != "" {
				if err == nil || !strings.Contains(err.Error(), c.errs) {
					t.Fatalf("err %v, want %q", err, c.errs)
				}
				return
			}
			if err != nil || n.local != c.local || n.source != c.source || n.snat.String() != c.snat {
				t.Fatalf("%+v %v; want local=%v source=%s snat=%s", n, err, c.local, c.source, c.snat)
			}
		})
	}
}
