// Package e2e proves, with real TCP/TLS through the real data path in
// network namespaces, that xdplb does the K3s guide's job: the guide's
// network (server-1..3, lb-1/lb-2, agent-1..3) is built per test, mock API
// servers run on the servers, xdplb on the LBs, and the agents connect
// through the frontend.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/testnet"
)

// Health timing of the suite: HAProxy semantics, short intervals so the
// scenarios run in seconds. Bounds the tests assert derive from these.
const (
	rise = 2
	fall = 3
)

// inter is 300 ms, or XDPLB_E2E_INTER (the VM matrix's guests run under
// TCG, where a TLS handshake can take longer than 300 ms).
var inter = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("XDPLB_E2E_INTER")); err == nil && d > 0 {
		return d
	}
	return 300 * time.Millisecond
}()

// slack widens the timing bounds where the machine is slow on purpose
// (XDPLB_E2E_SLACK=3s in the VM matrix, whose guests run under TCG).
var slack = func() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("XDPLB_E2E_SLACK"))
	return d
}()

var (
	binOnce sync.Once
	bins    struct {
		xdplb, xdplb2, mockapi string
		pki                    string
		err                    error
	}
)

// build compiles xdplb (twice, as two different binaries, for the upgrade
// scenario) and the mock API server, and makes the test PKI; once per run.
func build(t *testing.T) {
	t.Helper()
	testnet.SkipIfNotRoot(t)
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xdplb-e2e-bin")
		if err != nil {
			bins.err = err
			return
		}
		root, _ := filepath.Abs("../..")
		goBuild := func(out, pkg string, ldflags string) error {
			cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, pkg)
			cmd.Dir = root
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
			}
			return nil
		}
		bins.xdplb = filepath.Join(dir, "xdplb")
		bins.xdplb2 = filepath.Join(dir, "xdplb-upgraded")
		bins.mockapi = filepath.Join(dir, "mockapi")
		// Prebuilt binaries (the VM matrix: no compiler run in a guest).
		if pre := os.Getenv("XDPLB_E2E_BIN"); pre != "" {
			bins.xdplb = filepath.Join(pre, "xdplb")
			bins.xdplb2 = filepath.Join(pre, "xdplb-upgraded")
			bins.mockapi = filepath.Join(pre, "mockapi")
		}
		for _, b := range []struct{ out, pkg, ld string }{
			{bins.xdplb, "./cmd/xdplb", "-X github.com/xdplb/xdplb/control/daemon.Version=e2e-1"},
			{bins.xdplb2, "./cmd/xdplb", "-X github.com/xdplb/xdplb/control/daemon.Version=e2e-2-upgraded"},
			{bins.mockapi, "./cmd/mockapi", ""},
		} {
			if os.Getenv("XDPLB_E2E_BIN") != "" {
				break
			}
			if bins.err = goBuild(b.out, b.pkg, b.ld); bins.err != nil {
				return
			}
		}
		bins.pki = filepath.Join(dir, "pki")
		out, err := exec.Command(bins.mockapi, "--gen-pki", bins.pki, "--san", testnet.VIP,
			"--san", testnet.LBAddr(1).String(), "--san", testnet.LBAddr(2).String(),
			"--san", testnet.ServerAddr(1).String(), "--san", testnet.ServerAddr(2).String(), "--san", testnet.ServerAddr(3).String()).CombinedOutput()
		if err != nil {
			bins.err = fmt.Errorf("gen pki: %v: %s", err, out)
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// hookCase is one way of running the data path.
type hookCase struct {
	name string
	args []string
}

var hookCases = []hookCase{
	{"xdp-native", []string{"--hook", "xdp", "--xdp-mode", "native"}},
	{"xdp-generic", []string{"--hook", "xdp", "--xdp-mode", "generic"}},
	{"tc", []string{"--hook", "tc"}},
}

type cluster struct {
	t       *testing.T
	topo    *testnet.Topology
	servers []*testnet.Process
	lbProcs map[*testnet.Host]*testnet.Process
	bpffs   map[*testnet.Host]string
	hook    hookCase
	extra   []string // more xdplb run flags
	echo    bool
	front   netip.Addr
	clients []*agent.Client // one per agent host
}

type clusterOpts struct {
	hook     hookCase
	frontend netip.Addr // default: the VIP, added to lb-1
	noVIP    bool
	extra    []string
	// echo runs the servers as plain TCP echo sinks on :6443 instead of
	// the TLS API (bulk data tests; use --check tcp).
	echo bool
	// offloads keeps TX checksum offload and TSO on every host: the
	// kernel's senders then hand over partial checksums and GSO packets.
	offloads bool
}

func newCluster(t *testing.T, o clusterOpts) *cluster {
	t.Helper()
	build(t)
	n := testnet.New(t, testnet.Options{Logf: t.Logf})
	topo, err := n.Build(testnet.Guide)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, topo: topo, hook: o.hook, extra: o.extra, front: o.frontend, echo: o.echo,
		lbProcs: map[*testnet.Host]*testnet.Process{}, bpffs: map[*testnet.Host]string{}}
	if !c.front.IsValid() {
		c.front = testnet.VIPAddr()
	}
	if !o.noVIP && c.front == testnet.VIPAddr() {
		if err := topo.LBs[0].AddAddr(testnet.VIP + "/24"); err != nil {
			t.Fatal(err)
		}
	}
	if o.offloads {
		for _, h := range topo.Hosts() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := h.Exec(ctx, "ethtool", "-K", "eth1", "tx", "on", "tso", "on", "gso", "on")
			cancel()
			if err != nil {
				t.Fatalf("ethtool on %s: %v %s", h.Name, err, out)
			}
		}
	}
	for i := range topo.Servers {
		c.startServer(i)
	}
	tlsCfg, err := agent.TLSConfig(filepath.Join(bins.pki, "ca.crt"), "", "", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range topo.Agents {
		c.clients = append(c.clients, &agent.Client{TLS: tlsCfg, DialContext: a.DialContext, Timeout: 8 * time.Second})
	}
	for _, lb := range topo.LBs {
		dir := filepath.Join(t.TempDir(), "bpffs")
		os.MkdirAll(dir, 0o700)
		if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
			t.Fatal(err)
		}
		lb := lb
		c.bpffs[lb] = dir
		t.Cleanup(func() {
			// Detach before the namespaces go, then unmount.
			c.xdplb(lb, "detach")
			unix.Unmount(dir, unix.MNT_DETACH)
		})
	}
	return c
}

func (c *cluster) url() string { return fmt.Sprintf("https://%s:6443", c.front) }

func (c *cluster) startServer(i int) {
	c.t.Helper()
	h := c.topo.Servers[i]
	args := []string{"--name", h.Name, "--listen", ":6443",
		"--cert", filepath.Join(bins.pki, "server.crt"), "--key", filepath.Join(bins.pki, "server.key"), "--public-readyz"}
	if c.echo {
		args = []string{"--name", h.Name, "--listen", "", "--echo-listen", ":6443"}
	}
	p, err := h.Start(bins.mockapi, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	if len(c.servers) <= i {
		c.servers = append(c.servers, make([]*testnet.Process, i+1-len(c.servers))...)
	}
	c.servers[i] = p
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Stdout(), "listening") {
		if time.Now().After(deadline) || p.Exited() {
			c.t.Fatalf("mockapi on %s did not start: %s %s", h.Name, p.Stdout(), p.Stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) instance(lb *testnet.Host) string {
	return c.topo.Prefix + "-" + strings.ReplaceAll(lb.Name, "-", "")
}

// xdplb runs the CLI in lb's namespace against its instance.
func (c *cluster) xdplb(lb *testnet.Host, args ...string) (string, error) {
	return c.xdplbBin(bins.xdplb, lb, args...)
}

func (c *cluster) xdplbBin(bin string, lb *testnet.Host, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append(args[:1:1], append([]string{"--instance", c.instance(lb), "--bpffs", c.bpffs[lb]}, args[1:]...)...)
	out, err := lb.Command(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// runArgs are the flags of `xdplb run` on lb.
func (c *cluster) runArgs(lb *testnet.Host) []string {
	args := []string{"run", "--instance", c.instance(lb), "--bpffs", c.bpffs[lb],
		"--iface", "eth1", "--vip", c.front.String(), "--inter", inter.String(),
		"--rise", fmt.Sprint(rise), "--fall", fmt.Sprint(fall), "--metrics-addr", ""}
	for i := range c.topo.Servers {
		args = append(args, "--backend", testnet.ServerAddr(i+1).String())
	}
	if check := os.Getenv("XDPLB_E2E_CHECK"); check != "" {
		// The VM matrix checks with tcp: under TCG a TLS handshake can
		// outlast any sensible check timeout.
		args = append(args, "--check", check)
	}
	args = append(args, c.hook.args...)
	return append(args, c.extra...)
}

// startLB starts xdplb on lb and waits until `xdplb check` passes.
func (c *cluster) startLB(lb *testnet.Host) *testnet.Process {
	return c.startLBBin(bins.xdplb, lb)
}

func (c *cluster) startLBBin(bin string, lb *testnet.Host) *testnet.Process {
	c.t.Helper()
	p, err := lb.Start(bin, c.runArgs(lb)...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.lbProcs[lb] = p
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.xdplbBin(bin, lb, "check", "--quiet"); err == nil {
			return p
		}
		if p.Exited() || time.Now().After(deadline) {
			c.t.Fatalf("xdplb on %s did not become ready: %v\n%s", lb.Name, p.Wait(), p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) lb1() *testnet.Host { return c.topo.LBs[0] }

func (c *cluster) status(lb *testnet.Host) daemon.Status {
	c.t.Helper()
	out, err := c.xdplb(lb, "status", "--json")
	if err != nil {
		c.t.Fatalf("xdplb status: %v: %s", err, out)
	}
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("status json: %v: %s", err, out)
	}
	return st
}

func (c *cluster) backendState(lb *testnet.Host, addr netip.Addr) string {
	for _, b := range c.status(lb).Backends {
		if strings.HasPrefix(b.Addr, addr.String()+":") {
			return string(b.State)
		}
	}
	return "?"
}

// waitState polls until a backend reaches state, returning how long it took.
func (c *cluster) waitState(lb *testnet.Host, addr netip.Addr, state string, limit time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		if c.backendState(lb, addr) == state {
			return time.Since(start)
		}
		if time.Since(start) > limit+slack {
			c.t.Fatalf("backend %s not %s within %s (status: %+v)", addr, state, limit, c.status(lb).Backends)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// balance makes n new TLS connections spread over the agents.
func (c *cluster) balance(n int) agent.BalanceResult {
	c.t.Helper()
	total := agent.BalanceResult{Counts: map[string]int{}, Errors: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, cl := range c.clients {
		share := n / len(c.clients)
		if i < n%len(c.clients) {
			share++
		}
		wg.Add(1)
		go func(cl *agent.Client, share int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r, err := cl.Balance(ctx, c.url(), share, 4)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				total.Failures += share
				total.Errors[err.Error()]++
				return
			}
			for k, v := range r.Counts {
				total.Counts[k] += v
			}
			for k, v := range r.Errors {
				total.Errors[k] += v
			}
			total.Requests += r.Requests
			total.Failures += r.Failures
			if total.FirstError == "" {
				total.FirstError = r.FirstError
			}
		}(cl, share)
	}
	wg.Wait()
	return total
}

// watch opens n streams spread over the agents.
func (c *cluster) watch(n int) []*agent.WatchSet {
	c.t.Helper()
	var sets []*agent.WatchSet
	for i, cl := range c.clients {
		share := n / len(c.clients)
		if i < n%len(c.clients) {
			share++
		}
		ws, err := cl.StartWatch(context.Background(), c.url(), agent.WatchOptions{Streams: share, HungAfter: time.Second})
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { ws.Stop() })
		sets = append(sets, ws)
	}
	return sets
}

func report(sets []*agent.WatchSet) []agent.StreamReport {
	var out []agent.StreamReport
	for _, ws := range sets {
		out = append(out, ws.Report().Details...)
	}
	return out
}
