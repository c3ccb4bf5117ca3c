// Package e2e proves, with real TCP/TLS through the real data path in
// network namespaces, that xdplb does the K3s guide's job: the guide's
// network (server-1..3, lb-1/lb-2, agent-1..3) is built per test, mock API
// servers run on the servers, xdplb on the LBs, and the agents connect
// through the frontend.
package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/lab"
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

// TestMain removes the binaries the lab built for this test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	lab.RemoveBinaries()
	os.Exit(code)
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

// cluster is the lab of one test with its xdplb instances (one per LB,
// not started) and the agents' clients.
type cluster struct {
	*lab.Lab
	t       *testing.T
	lbs     map[*testnet.Host]*lab.Instance
	kind    lab.ServerKind
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
	front := o.frontend
	if !front.IsValid() {
		front = testnet.VIPAddr()
	}
	l := lab.New(t, lab.Options{NoVIP: o.noVIP || front != testnet.VIPAddr()})
	c := &cluster{Lab: l, t: t, front: front, kind: lab.API, lbs: map[*testnet.Host]*lab.Instance{}}
	if o.echo {
		c.kind = lab.Echo
	}
	if o.offloads {
		for _, h := range l.Hosts() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := h.Exec(ctx, "ethtool", "-K", "eth1", "tx", "on", "tso", "on", "gso", "on")
			cancel()
			if err != nil {
				t.Fatalf("ethtool on %s: %v %s", h.Name, err, out)
			}
		}
	}
	if err := l.StartServers(c.kind); err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := agent.TLSConfig(l.PKI.CAFile, "", "", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range l.Agents {
		c.clients = append(c.clients, &agent.Client{TLS: tlsCfg, DialContext: a.DialContext, Timeout: 8 * time.Second})
	}
	// The health timing of the suite, the VM matrix's check, the hook.
	args := []string{"--inter", inter.String(), "--rise", fmt.Sprint(rise), "--fall", fmt.Sprint(fall)}
	if check := os.Getenv("XDPLB_E2E_CHECK"); check != "" {
		// The VM matrix checks with tcp: under TCG a TLS handshake can
		// outlast any sensible check timeout.
		args = append(args, "--check", check)
	}
	args = append(append(args, o.hook.args...), o.extra...)
	for _, lb := range l.LBs {
		in, err := l.NewInstance(lb, lab.InstanceConfig{Frontend: front, Args: args})
		if err != nil {
			t.Fatal(err)
		}
		c.lbs[lb] = in
	}
	return c
}

func (c *cluster) url() string { return fmt.Sprintf("https://%s:6443", c.front) }

// startServer starts server-i's (1-based) mock server again.
func (c *cluster) startServer(i int) {
	c.t.Helper()
	if _, err := c.StartServer(i, c.kind); err != nil {
		c.t.Fatal(err)
	}
}

// xdplb runs the CLI in lb's namespace against its instance.
func (c *cluster) xdplb(lb *testnet.Host, args ...string) (string, error) {
	return c.lbs[lb].CLI(args...)
}

// startLB starts xdplb on lb and waits until `xdplb check` passes.
func (c *cluster) startLB(lb *testnet.Host) *testnet.Process {
	c.t.Helper()
	return c.startLBBin(c.Bin.XDPLB, lb)
}

func (c *cluster) startLBBin(bin string, lb *testnet.Host) *testnet.Process {
	c.t.Helper()
	in := c.lbs[lb]
	if err := in.StartBin(bin); err != nil {
		c.t.Fatal(err)
	}
	return in.Process()
}

func (c *cluster) lb1() *testnet.Host { return c.LB(1) }

func (c *cluster) status(lb *testnet.Host) daemon.Status {
	c.t.Helper()
	st, err := c.lbs[lb].Status()
	if err != nil {
		c.t.Fatal(err)
	}
	return st
}

// waitState polls until a backend reaches state, returning how long it took.
func (c *cluster) waitState(lb *testnet.Host, addr netip.Addr, state daemon.State, limit time.Duration) time.Duration {
	c.t.Helper()
	took, err := c.lbs[lb].WaitBackend(addr, state, limit+slack)
	if err != nil {
		c.t.Fatal(err)
	}
	return took
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
