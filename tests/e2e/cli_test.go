package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/testnet"
)

// clean asserts lb's eth1 runs no program and the instance left nothing on
// bpffs or in /run/xdplb.
func clean(t *testing.T, c *cluster, lb *testnet.Host, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	link, err := lb.Exec(ctx, "ip", "-d", "link", "show", "dev", "eth1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(link), "prog/xdp") || strings.Contains(string(link), "xdpgeneric") || strings.Contains(string(link), " xdp ") {
		t.Fatalf("%s: eth1 still runs an XDP program:\n%s", when, link)
	}
	filters, _ := lb.Exec(ctx, "tc", "filter", "show", "dev", "eth1", "ingress")
	if strings.TrimSpace(string(filters)) != "" {
		t.Fatalf("%s: tc filters left on eth1:\n%s", when, filters)
	}
	if out, err := lb.Exec(ctx, "bpftool", "net", "show", "dev", "eth1"); err == nil && strings.Contains(string(out), "xdplb") {
		t.Fatalf("%s: bpftool still shows xdplb on eth1:\n%s", when, out)
	}
	in := c.lbs[lb]
	if _, err := os.Stat(in.PinDir()); err == nil {
		t.Fatalf("%s: pins left under %s", when, in.PinDir())
	}
	if _, err := os.Stat(in.SocketPath()); err == nil {
		t.Fatalf("%s: control socket left", when)
	}
}

// runExpectingError runs `xdplb run` with args replaced or added and wants
// a non-zero exit with msg on stderr.
func runExpectingError(t *testing.T, c *cluster, lb *testnet.Host, args []string, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := lb.Exec(ctx, c.lbs[lb].Bin, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("xdplb %v: exit %v, want failure\n%s", args, err, out)
	}
	if !strings.Contains(string(out), msg) {
		t.Fatalf("xdplb %v: error does not say %q:\n%s", args, msg, out)
	}
	if !strings.HasPrefix(string(out), "xdplb: ") && !strings.Contains(string(out), "\nxdplb: ") {
		t.Fatalf("xdplb %v: error not in the xdplb: form:\n%s", args, out)
	}
}

// with returns the good run arguments with flag's value replaced (or
// removed when value is "-"), or added.
func with(args []string, flag, value string) []string {
	out := append([]string{}, args...)
	for i := 0; i < len(out); i++ {
		if out[i] == flag {
			if value == "-" {
				return append(out[:i], out[i+2:]...)
			}
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

func withoutBackends(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--backend" {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// Scenario 9: bad configuration and flags give a clear error and a
// non-zero exit, and leave nothing attached or pinned; a detached interface
// is clean; `xdplb check` exit codes.
func TestBadInputLeavesNothing(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	good := in.RunArgs()
	dir := t.TempDir()
	yamlWith := func(body string) string {
		p := filepath.Join(dir, strings.Repeat("c", len(body)%7+1)+".yaml")
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown flag", append(append([]string{}, good...), "--frobnicate"), "unknown flag: --frobnicate"},
		{"bad vip", with(good, "--vip", "10.10.10.300"), "not an IP address"},
		{"ipv6 vip", with(good, "--vip", "fd00::1"), "IPv4"},
		{"bad port", with(good, "--port", "70000"), "--port"},
		{"no backends", withoutBackends(good), "backend"},
		{"duplicate backend", append(append([]string{}, good...), "--backend", testnet.ServerAddr(1).String()+":6443"), "listed twice"},
		{"vip is a backend", append(append([]string{}, good...), "--backend", testnet.VIP), "is the vip"},
		{"bad backend", append(append([]string{}, good...), "--backend", "server-9"), "server-9"},
		{"missing interface", with(good, "--iface", "eth7"), `"eth7" not found`},
		{"bad hook", with(good, "--hook", "sockmap"), "hook"},
		{"bad xdp mode", with(good, "--xdp-mode", "turbo"), "xdp-mode"},
		{"bad check", with(good, "--check", "ping"), "check"},
		{"snat range with frontend port", with(good, "--snat-ports", "6000-7000"), "6443"},
		{"snat range reversed", with(good, "--snat-ports", "9000-8000"), "9000-8000"},
		{"rise zero", with(good, "--rise", "0"), "rise"},
		{"cert without key", with(good, "--check-cert", "/etc/hostname"), "check-key"},
		{"node address frontend, snat in the ephemeral range", with(with(good, "--vip", testnet.LBAddr(1).String()), "--snat-ports", "40000-50000"), "ephemeral"},
		{"config file missing", with(good, "--config", filepath.Join(dir, "nope.yaml")), "nope.yaml"},
		{"unknown config key", []string{"run", "--instance", in.Name, "--bpffs", in.BPFFS,
			"--config", yamlWith("iface: eth1\nvip: 10.10.10.100\nbackends: [10.10.10.50]\nchek: tls\n")}, `"chek"`},
		{"config vip equals backend", []string{"run", "--instance", in.Name, "--bpffs", in.BPFFS,
			"--config", yamlWith("iface: eth1\nvip: 10.10.10.100\nbackends: [10.10.10.100]\n")}, "is the vip"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runExpectingError(t, c, lb, tc.args, tc.msg)
			clean(t, c, lb, tc.name)
		})
	}

	// No daemon: check fails.
	if out, err := c.xdplb(lb, "check"); err == nil {
		t.Fatalf("check passed with no daemon: %s", out)
	}
	// A second daemon of the same instance, or another instance on the
	// same interface, is refused and leaves the first one untouched.
	p := c.startLB(lb)
	runExpectingError(t, c, lb, good, "already has a running daemon")
	other := with(good, "--instance", in.Name+"x")
	t.Cleanup(func() { os.Remove(daemon.LockPath(in.Name + "x")) })
	runExpectingError(t, c, lb, other, "already runs xdplb instance")
	if out, err := c.xdplb(lb, "check"); err != nil {
		t.Fatalf("check failed with the daemon up: %v %s", err, out)
	}
	// Every backend down: check --backends fails; check passes (this
	// node still forwards its flows).
	for i := range c.Servers {
		c.ServerProcess(i + 1).Kill()
	}
	deadline := time.Now().Add(fall*inter + 2*time.Second)
	for {
		_, err := c.xdplb(lb, "check", "--backends")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("check --backends still passes with every backend down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := c.xdplb(lb, "check"); err != nil {
		t.Fatalf("check with every backend down (the node forwards): %v %s", err, out)
	}
	// Crash: check fails at once, the program stays attached.
	p.Kill()
	if out, err := c.xdplb(lb, "check"); err == nil {
		t.Fatalf("check passed after the daemon died: %s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if link, _ := lb.Exec(ctx, "ip", "link", "show", "dev", "eth1"); !strings.Contains(string(link), "xdp") {
		t.Fatalf("program gone with the daemon:\n%s", link)
	}
	if out, err := c.xdplb(lb, "flows"); err != nil {
		t.Fatalf("flows without a daemon: %v %s", err, out)
	}
	if out, err := c.xdplb(lb, "detach"); err != nil {
		t.Fatalf("detach: %v %s", err, out)
	}
	clean(t, c, lb, "after detach")
}
