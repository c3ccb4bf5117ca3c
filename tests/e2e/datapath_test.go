package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf/packet"
	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testenv"
	"github.com/xdplb/xdplb/tests/testnet"
)

// addHost adds a host to the cluster's wire with full checksums on send
// (as the guide's hosts have).
func addHost(t *testing.T, c *cluster, name, cidr string) *testnet.Host {
	t.Helper()
	h, err := c.Net.AddHost(name, cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DisableTxOffload(); err != nil {
		t.Fatal(err)
	}
	return h
}

// run runs a command in h, failing the test on error.
func run(t *testing.T, h *testnet.Host, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, args[0], args[1:]...)
	if err != nil {
		t.Fatalf("%s: %s: %v\n%s", h.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rawSender sends hand-made IPv4 packets from inside a host (a raw socket
// opened in its namespace): what a blind attacker on the wire can do.
type rawSender struct{ fd int }

func newRawSender(t *testing.T, h *testnet.Host) *rawSender {
	t.Helper()
	var fd int
	if err := h.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatalf("raw socket in %s: %v", h.Name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &rawSender{fd: fd}
}

func (s *rawSender) send(t *testing.T, p packet.TCP) {
	t.Helper()
	if err := unix.Sendto(s.fd, p.Datagram(), 0, &unix.SockaddrInet4{Addr: p.Dst.Addr().As4()}); err != nil {
		t.Fatalf("send %v: %v", p.Flags, err)
	}
}

// flows lists lb's tracked connections.
func flows(t *testing.T, c *cluster, lb *testnet.Host) []daemon.FlowRow {
	t.Helper()
	out, err := c.lbs[lb].CLI("flows", "--json")
	if err != nil {
		t.Fatalf("xdplb flows: %v: %s", err, out)
	}
	var rows []daemon.FlowRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("flows json: %v: %s", err, out)
	}
	return rows
}

// TestBlindAttackKeepsConnections: an attacker on the wire who knows the
// 4-tuples of the watch streams (and their SNAT ports), but not their
// sequence numbers, sends each connection RSTs and FINs with random
// sequence numbers in both directions, then a SYN. Every stream survives,
// watched for 12 s after the attack (a flow wrongly closed would die after
// the closing timeout, 10 s); the data path counts what it ignored.
func TestBlindAttackKeepsConnections(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		sets := c.watch(9)
		time.Sleep(500 * time.Millisecond)
		rows := flows(t, c, c.lb1())
		snat := map[string]daemon.FlowRow{}
		for _, r := range rows {
			snat[r.Client] = r
		}
		attacker := newRawSender(t, addHost(t, c, "attacker", "10.10.10.200/24"))
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		front := netip.AddrPortFrom(c.front, testnet.APIPort)
		const perKind = 50
		sent := 0
		before := report(sets)
		for _, s := range before {
			r, ok := snat[s.Local]
			if !ok {
				t.Fatalf("no flow for stream %s among %d", s.Local, len(rows))
			}
			client := netip.MustParseAddrPort(r.Client)
			backend := netip.MustParseAddrPort(r.Backend)
			snatAP := netip.MustParseAddrPort(r.SNAT)
			for range perKind {
				attacker.send(t, packet.TCP{Src: client, Dst: front, Flags: packet.RST, Seq: rng.Uint32()})
				attacker.send(t, packet.TCP{Src: backend, Dst: snatAP, Flags: packet.RST | packet.ACK, Seq: rng.Uint32(), Ack: rng.Uint32()})
				attacker.send(t, packet.TCP{Src: client, Dst: front, Flags: packet.FIN | packet.ACK, Seq: rng.Uint32(), Ack: rng.Uint32()})
				attacker.send(t, packet.TCP{Src: backend, Dst: snatAP, Flags: packet.FIN | packet.ACK, Seq: rng.Uint32(), Ack: rng.Uint32()})
				sent += 4
			}
			attacker.send(t, packet.TCP{Src: client, Dst: front, Flags: packet.SYN, Seq: rng.Uint32()})
			sent++
		}
		time.Sleep(12 * time.Second)
		after := report(sets)
		for i, s := range after {
			if s.Broken || s.Hung || s.Heartbeats <= before[i].Heartbeats {
				t.Fatalf("stream %s broken by the blind attack: %+v", s.Local, s)
			}
		}
		st := c.status(c.lb1())
		if got := st.Counters["close_ignored"]; got < uint64(len(after)*perKind*3) {
			t.Errorf("close_ignored %d after %d blind RSTs and FINs that reached the data path", got, len(after)*perKind*4)
		}
		if st.Counters["flow_reopened"] != 0 {
			t.Errorf("the attacker's SYN reopened %d flows", st.Counters["flow_reopened"])
		}
		t.Logf("REPORT: blind attack: %d spoofed RST/FIN/SYN on %d streams, 0 broken 12 s later; close_ignored %d",
			sent, len(after), st.Counters["close_ignored"])
	})
}

// TestBackendMACChange: a backend whose MAC changes (NIC replaced, VM
// migrated) keeps its established connections once the LB's neighbour
// entry follows the change.
func TestBackendMACChange(t *testing.T) {
	forEachHook(t, clusterOpts{}, func(t *testing.T, c *cluster) {
		sets := c.watch(9)
		time.Sleep(500 * time.Millisecond)
		srv := c.Server(2)
		newMAC, _ := net.ParseMAC("02:5a:0a:0a:0a:33")
		run(t, srv, "ip", "link", "set", "dev", "eth1", "address", newMAC.String())
		// The server announces its new MAC, as a migrated VM does.
		if err := srv.GratuitousARP(srv.IP()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5*time.Second + slack)
		for {
			mac, _, _ := c.lb1().Neighbor(srv.IP())
			if mac.String() == newMAC.String() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lb-1's neighbour entry for %s is still %v", srv.IP(), mac)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(5 * time.Second)
		on := 0
		worst := 0.0
		for _, s := range report(sets) {
			if s.Broken || s.Hung {
				t.Fatalf("stream broke after the backend's MAC change: %+v", s)
			}
			if s.Server == "server-2" {
				on++
				worst = max(worst, s.MaxGapMS)
			}
		}
		for _, b := range c.status(c.lb1()).Backends {
			if strings.HasPrefix(b.Addr, srv.IP().String()+":") && !strings.HasPrefix(b.NextHop, newMAC.String()) {
				t.Errorf("status still shows next hop %s for %s", b.NextHop, b.Addr)
			}
		}
		t.Logf("REPORT: backend MAC change: %d streams on server-2 kept, worst heartbeat gap %.0f ms", on, worst)
	})
}

// sinkServer accepts one TCP connection at a time in h on port: it reads
// until the client closes its side, then answers with n bytes.
func sinkServer(t *testing.T, h *testnet.Host, port uint16, n int) (received chan int) {
	t.Helper()
	ln, err := h.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	received = make(chan int, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn) {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(60 * time.Second))
				got, _ := io.Copy(io.Discard, conn)
				if got == 0 {
					return // a health check's connection
				}
				received <- int(got)
				conn.Write(make([]byte, n))
			}(conn)
		}
	}()
	return received
}

// TestPathMTUDiscovery: routers with smaller MTUs stand between the LB
// and a backend, and between the LB and a client. Big segments hit the
// narrow links in both directions; the router's "fragmentation needed"
// errors are addressed to the frontend address (the source of every packet
// the LB sends), and the data path translates them for the endpoint that
// sent the segment. Both transfers complete; without the translation both
// stall on a black hole.
func TestPathMTUDiscovery(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, mounts bpffs, attaches XDP programs")
	for _, hk := range hookCases {
		t.Run(hk.name, func(t *testing.T) {
			l := lab.New(t, lab.Options{Spec: testnet.Spec{Servers: 1, LBs: 1, TxOffloadOff: true, PassXDPOnLBPeers: true}})
			c := &cluster{Lab: l, t: t, front: testnet.VIPAddr(), lbs: map[*testnet.Host]*lab.Instance{}}
			// Two routers: one in front of the backend's subnet, one in
			// front of the client's (a router drops a packet that comes
			// back to it with its own address as the source, so one
			// router cannot play both).
			routerS := addHost(t, c, "router-s", "10.10.10.1/24")
			routerC := addHost(t, c, "router-c", "10.10.10.2/24")
			far := addHost(t, c, "srv-far", "10.20.0.10/24")
			client := addHost(t, c, "agent-far", "10.30.0.10/24")
			run(t, routerS, "ip", "addr", "add", "10.20.0.1/24", "dev", "eth1")
			run(t, routerC, "ip", "addr", "add", "10.30.0.1/24", "dev", "eth1")
			for _, r := range []*testnet.Host{routerS, routerC} {
				for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth1.send_redirects=0"} {
					run(t, r, "sysctl", "-qw", k)
				}
			}
			// The narrow links: route MTUs on the routers (each forwards
			// back out of its one interface).
			run(t, routerS, "ip", "route", "change", "10.20.0.0/24", "dev", "eth1", "src", "10.20.0.1", "mtu", "1300")
			run(t, routerC, "ip", "route", "change", "10.30.0.0/24", "dev", "eth1", "src", "10.30.0.1", "mtu", "1200")
			run(t, routerS, "ip", "route", "add", "10.30.0.0/24", "via", "10.10.10.2")
			run(t, routerC, "ip", "route", "add", "10.20.0.0/24", "via", "10.10.10.1")
			run(t, far, "ip", "route", "add", "default", "via", "10.20.0.1")
			run(t, client, "ip", "route", "add", "default", "via", "10.30.0.1")
			lb := l.LB(1)
			run(t, lb, "ip", "route", "add", "10.20.0.0/24", "via", "10.10.10.1")
			run(t, lb, "ip", "route", "add", "10.30.0.0/24", "via", "10.10.10.2")

			const size = 4 << 20
			received := sinkServer(t, far, testnet.APIPort, size)
			in, err := l.NewInstance(lb, lab.InstanceConfig{Backends: []netip.Addr{far.IP()},
				Args: append([]string{"--check", "tcp", "--inter", inter.String()}, hk.args...)})
			if err != nil {
				t.Fatal(err)
			}
			if err := in.Start(); err != nil {
				t.Fatal(err)
			}
			c.lbs[lb] = in

			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second+slack)
			defer cancel()
			conn, err := client.DialContext(ctx, "tcp", lab.Frontend().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if dl, ok := ctx.Deadline(); ok {
				conn.SetDeadline(dl)
			}
			start := time.Now()
			var wg sync.WaitGroup
			var up error
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, up = conn.Write(make([]byte, size))
				conn.(*net.TCPConn).CloseWrite()
			}()
			down, err := io.Copy(io.Discard, conn)
			wg.Wait()
			if up != nil || err != nil || down != size {
				if st, serr := in.Status(); serr == nil {
					t.Logf("xdplb counters: %v", st.Counters)
				}
				for _, h := range []*testnet.Host{routerS, routerC, client, far} {
					t.Logf("%s: %s", h.Name, run(t, h, "sh", "-c", "nstat -az | grep -Ei 'IcmpOut|IcmpIn|FragFail|OutNoRoutes' | grep -v ' 0 ' ; ip route get 10.10.10.100"))
				}
				t.Fatalf("transfer through the narrow links: upload %v, download %d of %d bytes: %v (a black hole?)", up, down, size, err)
			}
			select {
			case got := <-received:
				if got != size {
					t.Fatalf("the backend received %d of %d bytes", got, size)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the backend never saw the upload end")
			}
			took := time.Since(start)
			st, err := in.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Counters["icmp"] < 2 {
				t.Errorf("%d ICMP errors translated, want at least one each way", st.Counters["icmp"])
			}
			route := run(t, client, "ip", "route", "get", lab.Frontend().Addr().String())
			if !strings.Contains(route, "mtu 1300") && !strings.Contains(route, "mtu 1200") {
				t.Errorf("the client learnt no path MTU toward the frontend: %s", route)
			}
			backendRoute := run(t, far, "ip", "route", "get", lab.Frontend().Addr().String())
			if !strings.Contains(backendRoute, "mtu 1200") {
				t.Errorf("the backend learnt no path MTU toward the frontend: %s", backendRoute)
			}
			t.Logf("REPORT: path MTU: 4 MiB up (1300-byte link) and 4 MiB down (1200-byte link) in %s; %d ICMP errors translated; client: %s; backend: %s",
				took.Round(time.Millisecond), st.Counters["icmp"], strings.TrimSpace(route), strings.TrimSpace(backendRoute))
		})
	}
}
