package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
)

// reloadable gives the rig a configuration source a test changes.
type reloadable struct {
	mu       sync.Mutex
	cfg      config.Config
	err      error
	warnings []string
}

func (r *reloadable) set(change func(*config.Config)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(&r.cfg)
}

func (r *reloadable) load() (config.Config, []string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return config.Config{}, r.warnings, r.err
	}
	if err := r.cfg.Validate(); err != nil {
		return config.Config{}, r.warnings, err
	}
	return r.cfg, r.warnings, nil
}

// notes records what the daemon tells the service manager.
type notes struct {
	mu  sync.Mutex
	got []string
}

func (n *notes) add(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.got = append(n.got, s)
}

func (n *notes) last() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.got) == 0 {
		return ""
	}
	return n.got[len(n.got)-1]
}

// reloadRig is a rig whose daemon reloads from a reloadable, builds its
// checkers as the scripted one, and records its notifications.
func reloadRig(t *testing.T) (*rig, *reloadable, *notes) {
	n := &notes{}
	var checkerKinds []health.CheckKind
	r := newRigWith(t, func(c *config.Config, p *parts) {
		p.notify = n.add
		p.newChecker = func(k health.CheckKind, o health.CheckOptions) (health.Checker, error) {
			checkerKinds = append(checkerKinds, k)
			if o.CAFile == "/missing/ca.crt" {
				return nil, errors.New("check-ca /missing/ca.crt: no such file")
			}
			return nil, nil // replaced below
		}
	})
	scripted := r.checker
	next := r.d.parts.newChecker
	r.d.parts.newChecker = func(k health.CheckKind, o health.CheckOptions) (health.Checker, error) {
		if _, err := next(k, o); err != nil {
			return nil, err
		}
		return scripted, nil
	}
	src := &reloadable{cfg: r.d.config()}
	r.d.opts = Options{Reload: src.load, Logger: quiet}
	return r, src, n
}

// TestReloadLive (issue 13 §3): a reload adds, removes, renames and
// reweighs backends and changes check settings and timers, live: no
// connection is removed, the program is not touched, an added backend
// starts down and comes up after rise checks, a removed one retires (no
// new connections, its connection kept) and is gone once that has ended.
func TestReloadLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, src, n := reloadRig(t)
		ids := map[netip.AddrPort]uint32{}
		for i, s := range []netip.AddrPort{s1, s2, s3} {
			ids[s] = r.backend(t, s).ID
			client := netip.AddrPortFrom(netip.MustParseAddr("10.10.10.101"), uint16(40000+i))
			r.dp.AddConn(client, s, ids[s], uint16(20000+i), r.d.parts.now(), bpf.FlowEstablished)
		}
		synctest.Wait()
		entries := len(r.dp.Flows(bpf.TableEstablished))
		s4 := netip.MustParseAddrPort("10.10.10.53:6443")
		src.set(func(c *config.Config) {
			c.Backends = []config.BackendSpec{
				{Name: "api-1", Addr: s1, Weight: 2},
				{Name: "server-3", Addr: s3, Weight: 1},
				{Name: "server-4", Addr: s4, Weight: 1},
			}
			c.Inter, c.Fall, c.Rise = 2*time.Second, 2, 2
			c.Check, c.CheckPath = health.CheckHTTPS, "/livez"
			c.GCInterval = 5 * time.Second
		})
		res := r.d.reload("test")
		if !res.OK {
			t.Fatalf("reload: %+v", res)
		}
		want := []string{
			"backend server-1 (10.10.10.50:6443) weight 1 -> 2",
			"backend server-1 (10.10.10.50:6443) name server-1 -> api-1",
			"backend server-4 (10.10.10.53:6443) added",
			"backend server-2 (10.10.10.51:6443) removed",
			"check: tls -> https", "check-path: /readyz -> /livez", "inter: 1s -> 2s", "rise: 2 -> 2", "fall: 3 -> 2", "gc-interval: 10s -> 5s",
		}
		got := strings.Join(res.Changes, "\n")
		for _, w := range want {
			if w == "rise: 2 -> 2" {
				if strings.Contains(got, "rise:") {
					t.Errorf("an unchanged setting is listed: %s", got)
				}
				continue
			}
			if !strings.Contains(got, w) {
				t.Errorf("changes lack %q:\n%s", w, got)
			}
		}
		if len(r.dp.Flows(bpf.TableEstablished)) != entries || r.nudges.count() != 0 {
			t.Fatalf("the reload touched connections: %d entries (was %d), %d nudged", len(r.dp.Flows(bpf.TableEstablished)), entries, r.nudges.count())
		}
		if p := r.d.mon.Params(); p.Inter != 2*time.Second || p.Fall != 2 || r.d.config().GCInterval != 5*time.Second {
			t.Errorf("timings after the reload: %+v, gc %v", p, r.d.config().GCInterval)
		}
		if state(ptr(r.d.status()), s2) != StateRetiring {
			t.Errorf("s2 removed: %s, want RETIRING", state(ptr(r.d.status()), s2))
		}
		for _, id := range r.dp.Live() {
			if id == ids[s2] {
				t.Fatal("the retired backend takes new connections")
			}
		}
		if state(ptr(r.d.status()), s4) != StateDown {
			t.Errorf("s4 just added: %s, want DOWN until its checks pass", state(ptr(r.d.status()), s4))
		}
		time.Sleep(2*time.Second + time.Millisecond) // checks of s4 at 0 and 2 s: rise 2
		synctest.Wait()
		if st := r.d.status(); state(&st, s4) != StateUp || !strings.Contains(n.last(), "3/3 backends up, 1 retiring") {
			t.Errorf("s4 after two passing checks: %s; notified %q", state(&st, s4), n.last())
		}
		// The retired backend's connection ends: the GC frees it.
		var keys []bpf.FlowKey
		for k, f := range r.dp.Flows(bpf.TableEstablished) {
			if f.Backend == ids[s2] {
				keys = append(keys, k)
			}
		}
		r.dp.DeleteFlows(bpf.TableEstablished, keys)
		r.d.gc()
		if state(ptr(r.d.status()), s2) != "" {
			t.Error("the retired backend is still listed after its last connection")
		}
		if _, ok := r.d.mon.Status(s2.String()); ok {
			t.Error("the retired backend is still checked")
		}
		if r.conns(ids[s1]) != 1 || r.conns(ids[s3]) != 1 {
			t.Error("other backends lost connections")
		}
	})
}

func ptr(st Status) *Status { return &st }

// TestReloadRefused (issue 13 §3, bad input): a change that needs a new
// program, a configuration that does not load, check files that do not
// load: nothing changes, the error says what to do, status and metrics
// show the failed reload.
func TestReloadRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, src, _ := reloadRig(t)
		before := r.d.config()
		cases := []struct {
			name   string
			change func(*config.Config)
			err    error
			want   string
		}{
			{"frontend address", func(c *config.Config) { c.VIP = netip.MustParseAddr("10.10.10.101") }, nil,
				"reload refused, nothing changed: vip: 10.10.10.100 -> 10.10.10.101 (the frontend address is compiled into the program): restart to apply"},
			{"frontend port and a backend", func(c *config.Config) {
				c.Port = 7443
				c.Backends = c.Backends[:1]
			}, nil, "port: 6443 -> 7443"},
			{"hook", func(c *config.Config) { c.Hook = bpf.HookTC }, nil, "hook: xdp -> tc"},
			{"snat range", func(c *config.Config) { c.SNATPorts = config.PortRange{Lo: 61000, Hi: 65535} }, nil, "snat-ports: auto -> 61000-65535"},
			{"table size", func(c *config.Config) { c.MaxConns = 1000 }, nil, "max-conns: 131072 -> 1000"},
			{"broken file", nil, errors.New("config /etc/xdplb/xdplb.yaml: line 3: unknown key \"bakends\": did you mean \"backends\"?"), "unknown key"},
			{"invalid value", func(c *config.Config) { c.Inter = time.Nanosecond }, nil, "inter 1ns: want 100ms to 1h"},
			{"check files", func(c *config.Config) { c.CheckCA = "/missing/ca.crt" }, nil, "no such file"},
		}
		for i, c := range cases {
			src.mu.Lock()
			src.cfg, src.err = before, c.err
			src.mu.Unlock()
			if c.change != nil {
				src.set(c.change)
			}
			res := r.d.reload("test")
			if res.OK || !strings.Contains(res.Error, c.want) {
				t.Errorf("%s: %+v, want a refusal saying %q", c.name, res, c.want)
			}
			if got := r.d.config(); !configEqual(got, before) {
				t.Errorf("%s: the configuration changed: %+v", c.name, got)
			}
			if len(r.d.bal.Backends()) != 3 || r.d.mon.Params().Inter != time.Second {
				t.Errorf("%s: backends or timings changed", c.name)
			}
			st := r.d.status()
			if st.Reload == nil || st.Reload.OK || r.d.reloads[1].Load() != uint64(i+1) {
				t.Errorf("%s: status %+v, failed reloads %d", c.name, st.Reload, r.d.reloads[1].Load())
			}
		}
		out := gatherText(t, r.d.registry())
		if !strings.Contains(out, "xdplb_config_last_reload_successful 0") || !strings.Contains(out, `xdplb_config_reloads_total{result="failed"} 8`) {
			t.Errorf("metrics after failed reloads:\n%s", grepLines(out, "reload"))
		}
		// Fixed: it applies, and metrics say so.
		src.mu.Lock()
		src.cfg, src.err = before, nil
		src.mu.Unlock()
		if res := r.d.reload("test"); !res.OK || len(res.Changes) != 0 {
			t.Errorf("reload of the running configuration: %+v", res)
		}
		if out := gatherText(t, r.d.registry()); !strings.Contains(out, "xdplb_config_last_reload_successful 1") {
			t.Errorf("metrics after a good reload:\n%s", grepLines(out, "reload"))
		}
	})
}

func configEqual(a, b config.Config) bool { return len(config.Changes(&a, &b)) == 0 }

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestReloadBySignalAndSocket: SIGHUP and the control socket's reload
// command both reload; the socket answers with what changed.
func TestReloadBySignalAndSocket(t *testing.T) {
	r, src, _ := reloadRig(t)
	hup := make(chan os.Signal, 1)
	r.d.opts.Hup = hup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.d.reloadLoop(ctx)
	src.set(func(c *config.Config) { c.Rise = 5 })
	hup <- syscall.SIGHUP
	deadline := time.Now().Add(5 * time.Second)
	for r.d.mon.Params().Rise != 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.d.mon.Params().Rise != 5 {
		t.Fatal("SIGHUP did not reload")
	}
	src.set(func(c *config.Config) { c.Fall = 7 })
	resp := r.d.handle(Request{Cmd: "reload"})
	if !resp.OK || resp.Reload == nil || len(resp.Reload.Changes) != 1 || resp.Reload.Changes[0] != "fall: 3 -> 7" {
		t.Fatalf("reload over the socket: %+v %+v", resp, resp.Reload)
	}
	src.set(func(c *config.Config) { c.VIP = netip.MustParseAddr("10.10.10.99") })
	if resp := r.d.handle(Request{Cmd: "reload"}); resp.OK || !strings.Contains(resp.Error, "restart") {
		t.Fatalf("refused reload over the socket: %+v", resp)
	}
}

// TestSDNotify: the datagrams reach a socket named as systemd names it, a
// path or an abstract name.
func TestSDNotify(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{filepath.Join(dir, "notify"), "@xdplb-test-" + filepath.Base(dir)} {
		laddr := &net.UnixAddr{Name: name, Net: "unixgram"}
		c, err := net.ListenUnixgram("unixgram", laddr)
		if err != nil {
			t.Fatal(err)
		}
		notify := newNotifier(name)
		if notify == nil {
			t.Fatalf("no notifier for %q", name)
		}
		notify("READY=1\nSTATUS=forwarding")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 256)
		n, err := c.Read(buf)
		c.Close()
		if err != nil || string(buf[:n]) != "READY=1\nSTATUS=forwarding" {
			t.Fatalf("%s: read %q, %v", name, buf[:n], err)
		}
	}
	if newNotifier("") != nil || newNotifier("relative") != nil {
		t.Error("a notifier without a socket")
	}
	r, _, n := reloadRig(t)
	r.d.notifyReady()
	if got := n.last(); !strings.HasPrefix(got, "READY=1\nSTATUS=forwarding 10.10.10.100:6443 on eth1 (xdp native via bpf_link): 3/3 backends up") {
		t.Errorf("ready: %q", got)
	}
}
