package testnet

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdplb/xdplb/tests/testenv"
)

// rootSnapshot is what the root network namespace looks like: link names and
// IPv4 addresses. Read-only: tests never change the root namespace.
type rootSnapshot struct {
	links []string
	addrs []string
}

func snapshotRoot(t *testing.T) rootSnapshot {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var s rootSnapshot
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		s.addrs = append(s.addrs, a.IPNet.String())
	}
	slices.Sort(s.links)
	slices.Sort(s.addrs)
	return s
}

func checkRootClean(t *testing.T, before rootSnapshot, n *Net) {
	t.Helper()
	after := snapshotRoot(t)
	ours := map[string]bool{BridgeName: true, HostIface: true}
	for _, h := range n.Hosts() {
		ours[h.PeerName] = true
	}
	for _, l := range after.links {
		if ours[l] || strings.HasPrefix(l, n.Prefix) {
			t.Errorf("root namespace has link %q, which testnet creates only inside namespaces", l)
		}
	}
	for _, a := range after.addrs {
		if strings.HasPrefix(a, "10.10.10.") {
			t.Errorf("root namespace has test address %s", a)
		}
	}
	if !slices.Equal(before.links, after.links) {
		t.Errorf("root namespace links changed: before %v, after %v", before.links, after.links)
	}
	if !slices.Equal(before.addrs, after.addrs) {
		t.Errorf("root namespace addresses changed: before %v, after %v", before.addrs, after.addrs)
	}
}

func namespacesWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(netnsDir, prefix+"-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestGuideTopology(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	before := snapshotRoot(t)
	topo := NewTopology(t, Options{}, Guide)
	n := topo.Net

	if got := len(topo.Servers) + len(topo.LBs) + len(topo.Agents); got != 8 {
		t.Fatalf("got %d hosts, want 8", got)
	}
	want := map[string]string{
		"server-1": "10.10.10.50/24", "server-2": "10.10.10.51/24", "server-3": "10.10.10.52/24",
		"lb-1": "10.10.10.98/24", "lb-2": "10.10.10.99/24",
		"agent-1": "10.10.10.101/24", "agent-2": "10.10.10.102/24", "agent-3": "10.10.10.103/24",
	}
	for name, addr := range want {
		h := n.Host(name)
		if h == nil {
			t.Fatalf("no host %s", name)
		}
		if h.Addr.String() != addr {
			t.Errorf("%s: addr %s, want %s", name, h.Addr, addr)
		}
		if _, err := os.Stat(h.Path()); err != nil {
			t.Errorf("%s: namespace not at %s: %v", name, h.Path(), err)
		}
		a4 := h.IP().As4()
		if wantMAC := fmt.Sprintf("02:58:%02x:%02x:%02x:%02x", a4[0], a4[1], a4[2], a4[3]); h.MAC.String() != wantMAC {
			t.Errorf("%s: MAC %s, want %s", name, h.MAC, wantMAC)
		}
		addrs, err := h.Addrs()
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 || addrs[0].String() != addr {
			t.Errorf("%s: eth1 has %v, want [%s]", name, addrs, addr)
		}
	}
	if topo.Server(2).Name != "server-2" || topo.LB(1).Name != "lb-1" || topo.Agent(3).Name != "agent-3" || topo.Agent(4) != nil {
		t.Error("Topology accessors return the wrong hosts")
	}

	// Everyone reaches everyone (ICMP), all through the bridge.
	for _, from := range n.Hosts() {
		for _, to := range n.Hosts() {
			if from == to {
				continue
			}
			if _, err := from.Ping(ctxT(t, 3*time.Second), to.IP()); err != nil {
				t.Errorf("ping %s -> %s: %v", from, to, err)
			}
		}
	}

	// Tx checksum offload is off on every host.
	out, err := topo.Agent(1).Exec(ctxT(t, 5*time.Second), "ethtool", "-k", HostIface)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("tx-checksumming: off")) {
		t.Errorf("tx-checksumming not off on agent-1:\n%s", out)
	}
	// XDP pass program on the LBs' switch ports only.
	for _, h := range n.Hosts() {
		attached, id, err := h.PeerXDPAttached()
		if err != nil {
			t.Fatal(err)
		}
		isLB := strings.HasPrefix(h.Name, "lb-")
		if attached != isLB {
			t.Errorf("%s: XDP on switch port attached=%v (prog %d), want %v", h, attached, id, isLB)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if left := namespacesWithPrefix(t, n.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	checkRootClean(t, before, n)
	if _, err := os.Stat(n.ownerPath()); !os.IsNotExist(err) {
		t.Errorf("owner file %s left behind (%v)", n.ownerPath(), err)
	}
}

func TestTCPAcrossNamespaces(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	before := snapshotRoot(t)
	topo := NewTopology(t, Options{}, Spec{Servers: 1, Agents: 1})
	srv, agent := topo.Server(1), topo.Agent(1)

	ln, err := srv.Listen("tcp4", "10.10.10.50:7000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// The listener was opened inside server-1; serving it from a plain
	// goroutine still serves it there.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			}()
		}
	}()

	c, err := agent.Dial("tcp4", "10.10.10.50:7000")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "10.10.10.101:") {
		t.Errorf("server saw client %q, want 10.10.10.101:*", b)
	}
	if !agent.CanDial("10.10.10.50:7000", time.Second) {
		t.Error("CanDial to a listening port: false")
	}
	if agent.CanDial("10.10.10.50:7001", time.Second) {
		t.Error("CanDial to a closed port: true")
	}
	// Link down: nothing gets through; link up: traffic again.
	if err := srv.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	if agent.CanDial("10.10.10.50:7000", 300*time.Millisecond) {
		t.Error("dial succeeded while server-1's link was down")
	}
	if err := srv.SetLinkUp(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !agent.CanDial("10.10.10.50:7000", 300*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("server-1 unreachable 5s after its link came back up")
		}
	}
	topo.Close()
	checkRootClean(t, before, topo.Net)
}

func TestVIPMove(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	topo := NewTopology(t, Options{}, Spec{LBs: 2, Agents: 1})
	lb1, lb2, agent := topo.LB(1), topo.LB(2), topo.Agent(1)
	vip := VIPAddr()

	if err := lb1.AddAddr(VIP + "/32"); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Ping(ctxT(t, 3*time.Second), vip); err != nil {
		t.Fatal(err)
	}
	mac, ok, err := agent.Neighbor(vip)
	if err != nil || !ok || mac.String() != lb1.MAC.String() {
		t.Fatalf("agent's ARP entry for VIP: %v %v %v, want %s", mac, ok, err, lb1.MAC)
	}

	// Move the VIP like keepalived: delete, add on the peer, announce. The
	// kernel ignores an ARP update within locktime (1 s) of the last one.
	time.Sleep(1100 * time.Millisecond)
	if err := lb1.DelAddr(VIP + "/32"); err != nil {
		t.Fatal(err)
	}
	if err := lb2.AddAddr(VIP + "/32"); err != nil {
		t.Fatal(err)
	}
	if err := lb2.GratuitousARP(vip); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mac, ok, err = agent.Neighbor(vip)
		if err != nil {
			t.Fatal(err)
		}
		if ok && mac.String() == lb2.MAC.String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after gratuitous ARP from lb-2 the agent still has %v for the VIP, want %s", mac, lb2.MAC)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// ArpFlush forgets it.
	if err := agent.ArpFlush(); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := agent.Neighbor(vip); ok {
		t.Error("ARP entry for the VIP survived ArpFlush")
	}
	if _, err := agent.Ping(ctxT(t, 3*time.Second), vip); err != nil {
		t.Fatal(err)
	}
}

func TestDoAndSysctl(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	h, err := n.AddHost("h1", "10.10.10.1/24")
	if err != nil {
		t.Fatal(err)
	}
	rootNS, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer rootNS.Close()

	var inside netns.NsHandle
	if err := h.Do(func() error {
		var err error
		inside, err = netns.Get()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(h.NS) || inside.Equal(rootNS) {
		t.Errorf("Do ran in %v, want the host's namespace %v", inside, h.NS)
	}

	// Many calls: no goroutine is ever left in the host namespace.
	for i := 0; i < 50; i++ {
		if err := h.Do(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		cur, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		if !cur.Equal(rootNS) {
			cur.Close()
			t.Fatal("caller's thread left the root namespace")
		}
		cur.Close()
	}

	// Errors and panics come back to the caller.
	if err := h.Do(func() error { return io.ErrUnexpectedEOF }); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("Do error = %v", err)
	}
	func() {
		defer func() {
			if v := recover(); v == nil || !strings.Contains(fmt.Sprint(v), "boom") {
				t.Errorf("recovered %v, want the panic from inside Do", v)
			}
		}()
		_ = h.Do(func() error { panic("boom") })
	}()

	// Sysctls are per namespace; IPv6 is off by default.
	if err := h.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if v, err := h.GetSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("ip_forward in host = %q %v", v, err)
	}
	if v, err := h.GetSysctl("net.ipv6.conf.all.disable_ipv6"); err != nil || v != "1" {
		t.Errorf("disable_ipv6 in host = %q %v, want 1", v, err)
	}
	if _, err := h.Exec(ctxT(t, 5*time.Second), "true"); err != nil {
		t.Fatal(err)
	}
}

func TestExecVariants(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	h, err := n.AddHost("h1", "10.10.10.1/24")
	if err != nil {
		t.Fatal(err)
	}
	out, err := h.Exec(ctxT(t, 5*time.Second), "ip", "-4", "-o", "addr", "show", "dev", HostIface)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "10.10.10.1/24") {
		t.Errorf("nsenter: ip addr shows %q", out)
	}
	out, err = h.ExecIPNetns(ctxT(t, 5*time.Second), "ip", "-4", "-o", "addr", "show", "dev", HostIface)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "10.10.10.1/24") {
		t.Errorf("ip netns exec: ip addr shows %q", out)
	}

	// nsenter keeps the caller's /sys (so /sys/fs/bpf stays visible); ip
	// netns exec remounts /sys for the namespace.
	rootSys, err := os.ReadDir("/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	var rootNames []string
	for _, e := range rootSys {
		rootNames = append(rootNames, e.Name())
	}
	out, err = h.Exec(ctxT(t, 5*time.Second), "ls", "/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, rootNames) {
		t.Errorf("nsenter: /sys/class/net = %v, want the caller's view %v", got, rootNames)
	}
	out, err = h.ExecIPNetns(ctxT(t, 5*time.Second), "ls", "/sys/class/net")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{HostIface, "lo"}) {
		t.Errorf("ip netns exec: /sys/class/net = %v, want [eth1 lo]", got)
	}

	if _, err := h.Exec(ctxT(t, 5*time.Second), "false"); err == nil {
		t.Error("Exec of false: no error")
	}
}

func TestStartedProcessesStopOnClose(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	h, err := n.AddHost("h1", "10.10.10.1/24")
	if err != nil {
		t.Fatal(err)
	}
	// A process that ignores SIGTERM must still die (SIGKILL after grace).
	stubborn, err := h.Start("sh", "-c", "trap '' TERM; echo started; sleep 60")
	if err != nil {
		t.Fatal(err)
	}
	polite, err := h.Start("sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if err := stubborn.WaitOutput(ctxT(t, 5*time.Second), "started"); err != nil {
		t.Fatal(err)
	}
	// The process runs in the host's namespace (once nsenter has switched).
	for deadline := time.Now().Add(5 * time.Second); ; {
		pidNS, err := netns.GetFromPid(polite.PID())
		if err != nil {
			t.Fatal(err)
		}
		in := pidNS.Equal(h.NS)
		pidNS.Close()
		if in {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("started process is not in the host's namespace")
		}
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	for _, p := range []*Process{stubborn, polite} {
		if !p.Exited() {
			t.Errorf("%s still running after Close", p)
		}
		if err := syscall.Kill(p.PID(), 0); err == nil {
			t.Errorf("PID %d still exists after Close", p.PID())
		}
	}
}

func TestAddHostValidation(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	for _, name := range []string{"", "sw", "UPPER", "much-too-long-name", "a/b"} {
		if _, err := n.AddHost(name, ""); err == nil {
			t.Errorf("AddHost(%q) accepted", name)
		}
	}
	if _, err := n.AddHost("a", "10.1.1.1/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddHost("a", "10.1.1.2/24"); err == nil {
		t.Error("duplicate host name accepted")
	}
	if _, err := n.AddHost("b", "10.1.1.1/24"); err == nil {
		t.Error("duplicate address accepted")
	}
	if _, err := n.AddHost("c", "not-an-address"); err == nil {
		t.Error("bad address accepted")
	}
	h, err := n.AddHost("noaddr", "")
	if err != nil {
		t.Fatal(err)
	}
	if h.Addr.IsValid() || len(h.MAC) != 6 || h.MAC[0]&2 == 0 {
		t.Errorf("host without address: addr %v mac %v", h.Addr, h.MAC)
	}
	if _, err := Create(Options{Prefix: "Bad-Prefix"}); err == nil {
		t.Error("bad prefix accepted")
	}
}

// Cleanup after failure, panic and SIGKILL: a helper test in a child process
// builds a network and then fails in the requested way.

const helperEnv = "XDPLB_TESTNET_HELPER"

func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for TestCleanupOnFailure")
	}
	prefix := os.Getenv(helperEnv + "_PREFIX")
	topo := NewTopology(t, Options{Prefix: prefix}, Spec{Servers: 1, Agents: 1})
	if _, err := topo.Server(1).Start("sleep", "60"); err != nil {
		t.Fatal(err)
	}
	fmt.Println("helper-ready")
	switch mode {
	case "fatal":
		t.Fatal("failing on purpose")
	case "panic":
		panic("panicking on purpose")
	case "kill":
		time.Sleep(time.Minute) // the parent kills us
	}
}

func TestCleanupOnFailure(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	for _, mode := range []string{"fatal", "panic", "kill"} {
		t.Run(mode, func(t *testing.T) {
			prefix := fmt.Sprintf("xl%06x", time.Now().UnixNano()&0xffffff)
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v", "-test.timeout=60s")
			cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperEnv+"_PREFIX="+prefix)
			var out tailBuffer // written by the child while we poll it
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()

			if mode == "kill" {
				deadline := time.Now().Add(30 * time.Second)
				for !strings.Contains(out.String(), "helper-ready") {
					if time.Now().After(deadline) {
						_ = cmd.Process.Kill()
						t.Fatalf("helper never got ready:\n%s", out.String())
					}
					time.Sleep(10 * time.Millisecond)
				}
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-done:
				if err == nil {
					t.Fatalf("helper succeeded, want failure:\n%s", out.String())
				}
			case <-time.After(60 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("helper hung:\n%s", out.String())
			}
			if !strings.Contains(out.String(), "helper-ready") {
				t.Fatalf("helper failed before building its network:\n%s", out.String())
			}

			left := namespacesWithPrefix(t, prefix)
			if mode != "kill" {
				if len(left) > 0 {
					t.Errorf("namespaces left after a %s: %v\n%s", mode, left, out.String())
				}
				return
			}
			// SIGKILL skips t.Cleanup: the namespaces stay until the next
			// Create sweeps them.
			// (Another test package's Create may have swept them already.)
			if len(left) != 3 {
				t.Logf("after SIGKILL: namespaces %v, expected the 3 the helper made", left)
			}
			removed, err := SweepStale()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range left {
				if !slices.Contains(removed, filepath.Base(l)) {
					t.Errorf("SweepStale did not remove %s (removed %v)", l, removed)
				}
			}
			if left := namespacesWithPrefix(t, prefix); len(left) > 0 {
				t.Errorf("namespaces left after SweepStale: %v", left)
			}
			if _, err := os.Stat(filepath.Join(OwnerDir, prefix+".owner")); !os.IsNotExist(err) {
				t.Errorf("owner file left after SweepStale: %v", err)
			}
		})
	}
}

func TestSweepLeavesLiveRunsAlone(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	if _, err := n.AddHost("h1", ""); err != nil {
		t.Fatal(err)
	}
	removed, err := SweepStale()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range removed {
		if strings.HasPrefix(r, n.Prefix) {
			t.Errorf("SweepStale removed %s of a live run", r)
		}
	}
	if got := len(namespacesWithPrefix(t, n.Prefix)); got != 2 {
		t.Errorf("live run has %d namespaces after sweep, want 2", got)
	}
}

func TestMACsFor(t *testing.T) {
	h, p := macsFor(netip.MustParseAddr("10.10.10.98"))
	if h.String() != "02:58:0a:0a:0a:62" || p.String() != "02:59:0a:0a:0a:62" {
		t.Errorf("macsFor = %s %s", h, p)
	}
}

func TestProcStartTime(t *testing.T) {
	a, err := procStartTime(os.Getpid())
	if err != nil || a == "" {
		t.Fatalf("procStartTime(self) = %q, %v", a, err)
	}
	if _, err := procStartTime(1 << 30); err == nil {
		t.Error("procStartTime of a PID that cannot exist: no error")
	}
}
