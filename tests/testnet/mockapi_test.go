package testnet_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/apiserver"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testenv"
	"github.com/xdplb/xdplb/tests/testnet"
)

// TestMockAPIAcrossNamespaces runs the mockapi binary on server-1..3 and the
// agent (binary and in-process) on agent-1, talking to each server directly
// over real TCP/TLS through the bridge; no load balancer.
func TestMockAPIAcrossNamespaces(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	mockapi := lab.MustBuild(t, lab.MockAPI)
	agentBin := lab.MustBuild(t, lab.Agent)
	topo := testnet.NewTopology(t, testnet.Options{}, testnet.Spec{Servers: 3, Agents: 1, TxOffloadOff: true})
	a1 := topo.Agent(1)

	var names []string
	for _, s := range topo.Servers {
		names = append(names, s.Name, s.IP().String())
	}
	pki, err := apiserver.WritePKI(t.TempDir(), names...)
	if err != nil {
		t.Fatal(err)
	}
	procs := map[string]*testnet.Process{}
	for _, s := range topo.Servers {
		p, err := s.Start(mockapi,
			"--listen", fmt.Sprintf("%s:%d", s.IP(), testnet.APIPort),
			"--name", s.Name,
			"--cert", pki.ServerCert, "--key", pki.ServerKey,
			"--token-file", pki.TokenFile,
			"--heartbeat", "50ms",
			"--control", "127.0.0.1:6444")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = p.WaitOutput(ctx, "listening")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		procs[s.Name] = p
	}
	url := func(s *testnet.Host) string { return fmt.Sprintf("https://%s:%d", s.IP(), testnet.APIPort) }

	// The agent binary, run inside agent-1, reaches each server.
	for _, s := range topo.Servers {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := a1.Exec(ctx, agentBin, "whoami", "--url", url(s), "-n", "6", "-c", "3",
			"--ca", pki.CAFile, "--token-file", pki.TokenFile, "--json", "--strict")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var res agent.BalanceResult
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("agent whoami output %q: %v", out, err)
		}
		if res.Counts[s.Name] != 6 || res.Failures != 0 {
			t.Errorf("agent whoami --url %s: %+v, want 6 answers from %s", url(s), res, s.Name)
		}
	}
	// Without the token: 401, like K3s.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	out, err := a1.Exec(ctx, agentBin, "whoami", "--url", url(topo.Server(1)), "--ca", pki.CAFile, "--json")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"http-401": 1`) {
		t.Errorf("whoami without token: %s", out)
	}

	// In process: a client whose connections are dialled inside agent-1.
	cl := &agent.Client{
		TLS:         &tls.Config{RootCAs: pki.CA.Pool()},
		Token:       pki.Token,
		DialContext: a1.DialContext,
		Timeout:     3 * time.Second,
	}
	bg := context.Background()
	for _, s := range topo.Servers {
		if name, err := cl.Whoami(bg, url(s)); err != nil || name != s.Name {
			t.Errorf("in-process whoami %s = %q, %v", url(s), name, err)
		}
	}

	// Readiness by signal and by the loopback control endpoint.
	s2 := topo.Server(2)
	if err := procs[s2.Name].Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "server-2 unready after SIGUSR1", func() bool { return agent.Classify(cl.Readyz(bg, url(s2))) == "http-503" })
	if err := procs[s2.Name].Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "server-2 ready after SIGUSR2", func() bool { return cl.Readyz(bg, url(s2)) == nil })
	s1 := topo.Server(1)
	post := func(path string) {
		t.Helper()
		c, err := s1.Dial("tcp4", "127.0.0.1:6444")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", path)
		b := make([]byte, 64)
		if n, _ := c.Read(b); !strings.Contains(string(b[:n]), "200 OK") {
			t.Fatalf("control %s: %q", path, b[:n])
		}
	}
	post("/unready")
	if err := cl.Readyz(bg, url(s1)); agent.Classify(err) != "http-503" {
		t.Errorf("server-1 readyz after POST /unready: %v", err)
	}
	post("/ready")
	if err := cl.Readyz(bg, url(s1)); err != nil {
		t.Errorf("server-1 readyz after POST /ready: %v", err)
	}
	// The control endpoint is loopback only: not reachable from agent-1.
	if a1.CanDial(s1.IP().String()+":6444", 500*time.Millisecond) {
		t.Error("control endpoint reachable from the network")
	}

	// Watch streams: a link going down hangs them (no RST), back up they
	// recover; SIGTERM ends them cleanly and mockapi exits 0.
	s3 := topo.Server(3)
	ws3, err := cl.StartWatch(bg, url(s3), agent.WatchOptions{Streams: 3, HungAfter: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ws3.Stop()
	ws2, err := cl.StartWatch(bg, url(s2), agent.WatchOptions{Streams: 3, HungAfter: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.Stop()
	if r3, r2 := ws3.Report(), ws2.Report(); r3.Open != 3 || r2.Open != 3 {
		t.Fatalf("watches did not open: %+v / %+v", r3, r2)
	}
	if err := s3.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "streams to server-3 hung", func() bool { return ws3.Report().Hung == 3 })
	time.Sleep(200 * time.Millisecond)
	if err := s3.SetLinkUp(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "streams to server-3 recovered", func() bool { return ws3.Report().Open == 3 })
	if r := ws3.Report(); r.Broken != 0 || r.Stalled != 3 || r.MaxGap < 500*time.Millisecond {
		t.Errorf("after link down/up: %+v, want 3 stalled, none broken, max gap >= 0.5s", r)
	}

	if err := procs[s2.Name].Stop(5 * time.Second); err != nil {
		t.Errorf("mockapi did not exit cleanly on SIGTERM: %v\n%s", err, procs[s2.Name].Stderr())
	}
	waitFor(t, "streams to server-2 ended", func() bool { return ws2.Report().Broken == 3 })
	if r := ws2.Report(); r.EOF != 3 {
		t.Errorf("after SIGTERM: %+v, want 3 EOF", r)
	}

	// The agent binary's watch report, from inside agent-1.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	out, err = a1.Exec(ctx, agentBin, "watch", "--url", url(s1), "-n", "3", "--duration", "500ms",
		"--ca", pki.CAFile, "--token-file", pki.TokenFile)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var rep agent.WatchReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("agent watch output %q: %v", out, err)
	}
	if rep.Open != 3 || rep.Broken != 0 || rep.PerServer["server-1"] != 3 || len(rep.Details) != 3 {
		t.Errorf("agent watch: %+v", rep)
	}
	for _, d := range rep.Details {
		if !strings.HasPrefix(d.Local, "10.10.10.101:") || d.Remote != "10.10.10.50:6443" {
			t.Errorf("stream %d: %s -> %s, want from agent-1 to server-1", d.ID, d.Local, d.Remote)
		}
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
