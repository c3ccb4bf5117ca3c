package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI drives the CLI as main does, with a fake environment.
func runCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	e := env_(env, &out, &errb)
	err := xdplb(e, args)
	code = 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		if !errors.Is(err, errSilent) {
			errb.WriteString("xdplb: " + err.Error() + "\n")
		}
	}
	return out.String(), errb.String(), code
}

func env_(vars map[string]string, out, errw *bytes.Buffer) env {
	return env{ctx: context.Background(), stdout: out, stderr: errw, getenv: func(k string) string { return vars[k] }}
}

// TestRunRefusesBadInput: configuration and flag errors are reported before
// anything touches the kernel (these run without root).
func TestRunRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	unknownKey := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknownKey, []byte("iface: eth1\nvip: 10.10.10.100\nbackends: [10.10.10.50]\nbackend-port: 1\n"), 0o600)
	good := []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--config", filepath.Join(dir, "none.yaml")}
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no subcommand", nil, 2, "no subcommand"},
		{"unknown subcommand", []string{"frob"}, 2, `unknown command "frob" for "xdplb"`},
		{"unknown flag", []string{"run", "--nope"}, 2, "unknown flag: --nope"},
		{"stray argument", []string{"run", "eth1"}, 2, "takes no arguments"},
		{"bad vip", []string{"run", "--iface", "eth1", "--vip", "ten", "--backend", "10.10.10.50"}, 2, "not an IP address"},
		{"bad backend", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "x:y"}, 2, "--backend"},
		{"bad snat range", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--snat-ports", "5-"}, 2, "--snat-ports"},
		{"no iface", []string{"run", "--vip", "10.10.10.100", "--backend", "10.10.10.50"}, 2, "iface"},
		{"no backends", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100"}, 2, "backend"},
		{"duplicate backends", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--backend", "10.10.10.50:6443"}, 2, "listed twice"},
		{"vip is a backend", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.100"}, 2, "is the vip"},
		{"explicit config missing", good, 2, "none.yaml"},
		{"unknown config key", []string{"run", "--config", unknownKey}, 2, `"backend-port"`},
		{"inter 1ns", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--inter", "1ns"}, 2, "inter 1ns: want 100ms to 1h"},
		{"established-timeout 1ns", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--established-timeout", "1ns"}, 2, "established-timeout 1ns: want 10s to 168h"},
		{"check-timeout 1ns", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--check-timeout", "1ns"}, 2, "timeout 1ns: want 10ms to 1m"},
		{"max-conns too small", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--max-conns", "3"}, 2, "max-conns 3: want 16 to 4194304"},
		{"per-client cap above the table", []string{"run", "--iface", "eth1", "--vip", "10.10.10.100", "--backend", "10.10.10.50", "--max-conns", "100", "--max-conns-per-client", "200"}, 2, "max-conns-per-client 200"},
		{"config is /dev/zero", []string{"run", "--config", "/dev/zero"}, 2, "not a regular file (a character device)"},
		{"check with an argument", []string{"check", "backends"}, 2, "takes no arguments"},
		{"backend subcommand usage", []string{"backend", "drain"}, 2, "usage"},
		{"backend weight not a number", []string{"backend", "weight", "10.10.10.50", "heavy"}, 2, "not a number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, nil, c.args...)
			if code != c.code || !strings.Contains(stderr, c.msg) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, c.code, c.msg)
			}
		})
	}
}

// TestNoDaemon: commands that need the daemon say so and exit non-zero.
func TestNoDaemon(t *testing.T) {
	for _, args := range [][]string{{"status", "--instance", "nonexistent-xyz"}, {"check", "--instance", "nonexistent-xyz"}} {
		_, stderr, code := runCLI(t, nil, args...)
		if code != 1 || !strings.Contains(stderr, `no xdplb daemon for instance "nonexistent-xyz"`) {
			t.Fatalf("%v: exit %d, %q", args, code, stderr)
		}
	}
	if _, stderr, code := runCLI(t, nil, "check", "--instance", "nonexistent-xyz", "--quiet"); code != 1 || stderr != "" {
		t.Fatalf("check --quiet: exit %d, stderr %q", code, stderr)
	}
	_, stderr, code := runCLI(t, map[string]string{"XDPLB_BPFFS": t.TempDir()}, "flows", "--instance", "nonexistent-xyz")
	if code != 1 || !strings.Contains(stderr, "nothing pinned") {
		t.Fatalf("flows: exit %d, %q", code, stderr)
	}
}

func TestHelpAndVersion(t *testing.T) {
	if out, _, code := runCLI(t, nil, "--help"); code != 0 || !strings.Contains(out, "xdplb run") {
		t.Fatalf("help: %d %q", code, out)
	}
	if out, _, code := runCLI(t, nil, "version"); code != 0 || !strings.HasPrefix(out, "xdplb ") {
		t.Fatalf("version: %d %q", code, out)
	}
}
