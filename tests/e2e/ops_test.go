package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// opsConfig is the configuration file of TestOperatorConventions: the
// suite's timing, metrics on lb-1's own address, and the backends given.
func opsConfig(metrics netip.AddrPort, inter time.Duration, backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "iface: eth1\nvip: %s\n", testnet.VIPAddr())
	fmt.Fprintf(&b, "inter: %s\nrise: %d\nfall: %d\nmetrics-addr: %s\n", inter, rise, fall, metrics)
	if check := os.Getenv("XDPLB_E2E_CHECK"); check != "" {
		fmt.Fprintf(&b, "check: %s\n", check)
	}
	b.WriteString("backends:\n")
	for _, be := range backends {
		fmt.Fprintf(&b, "  - %s\n", be)
	}
	return b.String()
}

func backendNamed(st daemon.Status, name string) (daemon.BackendStatus, bool) {
	for _, b := range st.Backends {
		if b.Name == name {
			return b, true
		}
	}
	return daemon.BackendStatus{}, false
}

// TestOperatorConventions (issue 13): in one lab, in order:
//
//   - config check of the file, in the LB's namespace;
//   - the daemon under systemd's protocol (NOTIFY_SOCKET): READY=1 with
//     its state once it forwards, RELOADING=1 at a reload; under strace,
//     every system call it makes is one the unit's SystemCallFilter lets
//     through; --xdp-mode auto on lb-1's veth, whose peer runs an XDP
//     program, takes native;
//   - metrics as Prometheus scrapes them, passing promlint, backends named;
//   - 30 watch streams held through: a reload that renames, reweighs,
//     removes a backend and changes the timing (xdplb reload), one that
//     adds it back (SIGHUP), a broken file, a change that needs a restart,
//     and a restart; none breaks, the program is never detached;
//   - the removed backend retires: no new connection goes to it while its
//     streams go on;
//   - on lb-2, whose veth peer runs no XDP program, doctor says auto takes
//     generic, and a daemon with auto takes generic and forwards.
func TestOperatorConventions(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCase{"xdp-auto", []string{"--hook", "xdp"}}})
	lb := c.lb1()
	dir := t.TempDir()
	conf := filepath.Join(dir, "xdplb.yaml")
	metrics := netip.AddrPortFrom(testnet.LBAddr(1), 9716)
	server := func(i int) string { return testnet.ServerAddr(i).String() }
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(opsConfig(metrics, inter, "server-1="+server(1), "server-2="+server(2), "server-3="+server(3)))

	in, err := c.NewInstance(lb, lab.InstanceConfig{Tag: "ops", Frontend: c.front, ConfigFile: conf, ReadyTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.lbs[lb] = in
	if out, err := in.CLI("config", "check", "--config", conf); err != nil || !strings.Contains(out, "valid") ||
		!strings.Contains(out, "name: server-1, address: "+server(1)+":6443") {
		t.Fatalf("config check: %v\n%s", err, out)
	}

	// Phase 1: under systemd's notify protocol and strace.
	notify := listenNotify(t, filepath.Join(dir, "notify"))
	straceOut := filepath.Join(dir, "strace")
	strace, _ := exec.LookPath("strace")
	in.Config.Wrap = func(argv []string) []string {
		pre := []string{"env", "NOTIFY_SOCKET=" + notify.path}
		if strace != "" {
			pre = append(pre, strace, "-f", "-qq", "-c", "-o", straceOut)
		}
		return append(pre, argv...)
	}
	c.startLB(lb)
	st := c.status(lb)
	if ready := notify.wait(t, "READY=1"); !strings.Contains(ready, "STATUS=forwarding "+c.front.String()+":6443 on eth1 (xdp native via") ||
		!strings.Contains(ready, "3/3 backends up") {
		t.Errorf("READY notification: %q", ready)
	}
	if st.Attachment.Mode != "native" || !strings.Contains(st.Attachment.Reason, "runs an XDP program") {
		t.Errorf("auto on a veth whose peer runs XDP: %s (%s), want native", st.Attachment.Mode, st.Attachment.Reason)
	}
	t.Logf("REPORT: xdp-mode auto on lb-1: %s: %s", st.Attachment.Mode, st.Attachment.Reason)
	progID := st.Attachment.ProgID
	for i := 1; i <= 3; i++ {
		if b, ok := backendNamed(st, fmt.Sprintf("server-%d", i)); !ok || b.Addr != server(i)+":6443" {
			t.Fatalf("status lacks server-%d: %+v", i, st.Backends)
		}
	}
	c.waitState(lb, testnet.ServerAddr(3), daemon.StateUp, 5*time.Second)
	body := scrape(t, c, metrics)
	if problems, err := promlint.New(bytes.NewReader(body)).Lint(); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", err, problems)
	}
	for _, want := range []string{
		fmt.Sprintf(`xdplb_backend_state{backend="%s:6443",name="server-2",state="up"} 1`, server(2)),
		fmt.Sprintf(`xdplb_backend_state{backend="%s:6443",name="server-2",state="down"} 0`, server(2)),
		`xdplb_build_info{`, `xdplb_health_checks_total{`, `xdplb_packets_total{reason="new_flow",verdict="forward"}`, "process_open_fds",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
	var excerpt []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.Contains(l, `name="server-1"`) && !strings.HasPrefix(l, "#") || strings.HasPrefix(l, "xdplb_build_info") ||
			strings.HasPrefix(l, "xdplb_events_total") || strings.Contains(l, `reason="to_backend"`) {
			excerpt = append(excerpt, l)
		}
	}
	t.Logf("REPORT: metrics excerpt:\n%s", strings.Join(excerpt, "\n"))
	if out, err := in.CLI("reload"); err != nil || !strings.Contains(out, "nothing changed") {
		t.Errorf("reload of the same file: %v %s", err, out)
	}
	if got := notify.wait(t, "RELOADING=1"); got == "" {
		t.Error("no RELOADING=1 at a reload")
	}
	notify.wait(t, "READY=1")
	stopTraced(t, c, in)
	if strace != "" {
		checkSyscalls(t, straceOut)
	} else {
		t.Log("strace not installed: the daemon's system calls were not checked against the unit's filter")
	}
	in.Config.Wrap = nil
	c.startLB(lb) // a restart: lossless, and the rest runs untraced
	if id := c.status(lb).Attachment.ProgID; id == progID {
		t.Logf("restart kept prog id %d", id) // a restart swaps in a new program; either is fine
	}
	progID = c.status(lb).Attachment.ProgID

	// Phase 2: reloads under 30 watch streams.
	sets := c.watch(30)
	time.Sleep(500 * time.Millisecond)
	on3, _ := streamsOn(report(sets), "server-3")
	write(opsConfig(metrics, 400*time.Millisecond, "api-1="+server(1), "server-2="+server(2)+",weight=2"))
	out, err := in.CLI("reload")
	if err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	for _, want := range []string{"name server-1 -> api-1", "server-2 (" + server(2) + ":6443) weight 1 -> 2", "server-3 (" + server(3) + ":6443) removed", "inter: " + inter.String() + " -> 400ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, out)
		}
	}
	st = c.status(lb)
	if st.Attachment.ProgID != progID || !st.Attached {
		t.Fatalf("the reload touched the program: prog %d, was %d, attached %v", st.Attachment.ProgID, progID, st.Attached)
	}
	if b, _ := backendNamed(st, "server-3"); b.State != daemon.StateRetiring {
		t.Errorf("server-3 after its removal: %+v, want RETIRING", b)
	}
	// Its connections are still tracked (flows reads the pinned maps;
	// status counts connections only at the next flow GC).
	var rows []daemon.FlowRow
	if out, err := in.CLI("flows", "--backend", "server-3", "--json"); err != nil || json.Unmarshal([]byte(out), &rows) != nil || len(rows) < len(on3) {
		t.Errorf("flows --backend server-3: %v, %d rows for %d streams: %.300s", err, len(rows), len(on3), out)
	} else if len(rows) > 0 && rows[0].Name != "server-3" {
		t.Errorf("flows rows without the backend's name: %+v", rows[0])
	}
	if r := c.balance(90); r.Failures > 0 || r.Counts["server-3"] > 0 || r.Counts["server-2"] <= r.Counts["server-1"] {
		t.Errorf("new connections after the reload: %v (server-3 retired, server-2 weight 2 over api-1's 1)", r)
	} else {
		t.Logf("REPORT: after the reload: 90 connections: %v (server-3 retired; %d streams kept on it)", r.Counts, len(on3))
	}

	// SIGHUP: server-3 listed again, back with its slot and connections.
	write(opsConfig(metrics, inter, "api-1="+server(1), "server-2="+server(2)+",weight=2", "server-3="+server(3)))
	if err := in.Process().Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, ok := backendNamed(c.status(lb), "server-3"); ok && b.State == daemon.StateUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server-3 not back after SIGHUP: %+v", c.status(lb).Backends)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A broken file, a change that needs a restart: refused, nothing changes.
	before := c.status(lb)
	for _, bad := range []struct{ text, want string }{
		{"bakends: [" + server(1) + "]\n", `unknown key "bakends": did you mean "backends"?`},
		{opsConfig(metrics, inter, "server-1="+server(1)) + "max-conns: 1000\n", "max-conns: 131072 -> 1000"},
		{opsConfig(metrics, time.Nanosecond, "server-1="+server(1)), "inter 1ns: want 100ms to 1h"},
	} {
		write(bad.text)
		out, err := in.CLI("reload")
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("reload of a bad file: %v, %q; want a failure saying %q", err, out, bad.want)
		}
		st := c.status(lb)
		if len(st.Backends) != len(before.Backends) || st.Reload == nil || st.Reload.OK || st.Attachment.ProgID != progID {
			t.Errorf("a refused reload changed something: %+v, reload %+v", st.Backends, st.Reload)
		}
	}
	if _, err := in.CLI("check", "--backends", "--quiet"); err != nil {
		t.Errorf("check after the refused reloads: %v", err)
	}
	write(opsConfig(metrics, inter, "api-1="+server(1), "server-2="+server(2)+",weight=2", "server-3="+server(3)))
	if out, err := in.CLI("reload"); err != nil {
		t.Errorf("reload of the fixed file: %v %s", err, out)
	}

	time.Sleep(time.Second)
	broken, worst := 0, 0.0
	for _, s := range report(sets) {
		if s.Broken || s.Hung {
			broken++
			t.Errorf("stream broke across the reloads: %+v", s)
		}
		worst = max(worst, s.MaxGapMS)
	}
	t.Logf("REPORT: reloads (rename, reweigh, remove, add back by SIGHUP, 3 refused): 30 streams, %d broken, worst heartbeat gap %.0f ms, prog id unchanged", broken, worst)

	// bpftool prints the maps readably: counters by name, flows and
	// backends by field (BTF).
	if _, err := exec.LookPath("bpftool"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, m := range []struct{ name, want string }{
			{"xdplb_stats", `"to_backend": `}, {"xdplb_backends", `"addr": `}, {"xdplb_flows", `"last_seen_ns": `},
		} {
			out, err := exec.CommandContext(ctx, "bpftool", "map", "dump", "pinned", filepath.Join(in.PinDir(), m.name)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), m.want) {
				t.Errorf("bpftool map dump %s: %v\n%.2000s", m.name, err, out)
			}
			t.Logf("REPORT: bpftool map dump pinned .../%s:\n%.1500s", m.name, out)
		}
	}

	// Phase 3: lb-2's veth peer runs no XDP program: auto takes generic.
	lb2 := c.LB(2)
	if err := lb2.DetachXDPFromPeer(); err != nil {
		t.Fatal(err)
	}
	defer lb2.AttachPassXDPToPeer()
	in2 := c.lbs[lb2]
	in2.Config.Frontend = testnet.LBAddr(2) // the node's own address: no VIP needed
	doc, _ := in2.CLI(append([]string{"doctor"}, in2.RunArgs()[5:]...)...)
	if !regexp.MustCompile(`(?m)^warn\s+xdp-mode\s+auto: generic: eth1 is a veth and its peer \S+ runs no XDP program`).MatchString(doc) {
		t.Errorf("doctor on lb-2:\n%s", doc)
	}
	t.Logf("REPORT: doctor on lb-2:\n%s", doc)
	if err := in2.Start(); err != nil {
		t.Fatal(err)
	}
	st2, _ := in2.Status()
	if st2.Attachment.Mode != "generic" || !strings.Contains(st2.Attachment.Reason, "runs no XDP program") {
		t.Errorf("auto on lb-2: %s (%s), want generic", st2.Attachment.Mode, st2.Attachment.Reason)
	}
	in2.WaitBackend(testnet.ServerAddr(3), daemon.StateUp, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := c.clients[0].Balance(ctx, "https://"+testnet.LBAddr(2).String()+":6443", 30, 4)
	if err != nil || r.Failures > 0 {
		t.Errorf("through lb-2 in generic mode: %v %+v", err, r)
	}
	t.Logf("REPORT: xdp-mode auto on lb-2 (peer without XDP): %s; 30 connections through it: %v", st2.Attachment.Mode, r.Counts)
}

// notifySocket is a service manager's notification socket, for a test.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T, path string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifySocket{path: path, msgs: make(chan string, 64)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case n.msgs <- string(buf[:k]):
			default:
			}
		}
	}()
	return n
}

// wait returns the next notification that contains want (within 10 s).
func (n *notifySocket) wait(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, want) {
				return m
			}
		case <-timeout:
			t.Errorf("no notification with %q within 10 s", want)
			return ""
		}
	}
}

// stopTraced stops a daemon started under a wrapper (strace): SIGTERM to
// the daemon itself, then the wrapper ends with it.
func stopTraced(t *testing.T, c *cluster, in *lab.Instance) {
	t.Helper()
	st, err := in.Status()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !in.Process().Exited() {
		if time.Now().After(deadline) {
			t.Fatal("the traced daemon did not stop within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkSyscalls compares the system calls strace -c counted with what the
// unit's SystemCallFilter lets through (systemd-analyze syscall-filter
// expands its groups).
func checkSyscalls(t *testing.T, straceOut string) {
	t.Helper()
	data, err := os.ReadFile(straceOut)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] == "%" || strings.HasPrefix(f[0], "-") || f[len(f)-1] == "total" {
			continue
		}
		used[f[len(f)-1]] = true
	}
	if len(used) < 10 {
		t.Fatalf("strace counted %d system calls:\n%s", len(used), data)
	}
	unit, err := os.ReadFile("../../packaging/xdplb.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^SystemCallFilter=(.*)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("the unit has no SystemCallFilter")
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze not installed: system calls used: %v", keys(used))
		return
	}
	out, err := exec.Command(sa, "syscall-filter").Output()
	if err != nil {
		t.Fatal(err)
	}
	groups := parseSyscallGroups(out)
	allowed := map[string]bool{}
	var add func(name string)
	add = func(name string) {
		if !strings.HasPrefix(name, "@") {
			allowed[name] = true
			return
		}
		for _, m := range groups[name] {
			add(m)
		}
	}
	for _, f := range strings.Fields(string(m[1])) {
		add(f)
	}
	var denied []string
	for s := range used {
		if !allowed[s] {
			denied = append(denied, s)
		}
	}
	sort.Strings(denied)
	if len(denied) > 0 {
		t.Errorf("the daemon made system calls the unit's SystemCallFilter denies: %v", denied)
	}
	t.Logf("REPORT: the daemon made %d distinct system calls (start, scrape, reload, stop), all in the unit's SystemCallFilter", len(used))
}

func parseSyscallGroups(out []byte) map[string][]string {
	groups := map[string][]string{}
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "@"):
			cur = strings.TrimSpace(line)
		case strings.HasPrefix(line, "    ") && cur != "":
			s := strings.TrimSpace(line)
			if s != "" && !strings.HasPrefix(s, "#") {
				groups[cur] = append(groups[cur], s)
			}
		}
	}
	return groups
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// scrape fetches /metrics from an agent's namespace.
func scrape(t *testing.T, c *cluster, addr netip.AddrPort) []byte {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.Agent(1).DialContext}}
	resp, err := cl.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %v %d", err, resp.StatusCode)
	}
	return body
}
