package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/testnet"
)

// keepalivedConf renders the repo's sample packaging/keepalived.conf (or
// the one $XDPLB_E2E_KEEPALIVED_CONF names: the VM matrix gives the one
// the .deb installed) for one LB of this test: its state, and track
// scripts that check this LB's own xdplb instance (never a process name:
// every namespace shares one PID namespace).
func keepalivedConf(t *testing.T, c *cluster, lb *testnet.Host, master bool) string {
	t.Helper()
	file := "../../packaging/keepalived.conf"
	if f := os.Getenv("XDPLB_E2E_KEEPALIVED_CONF"); f != "" {
		file = f
	}
	sample, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(sample)
	in := c.lbs[lb]
	for _, script := range []struct{ sample, args string }{
		{`script "/usr/bin/xdplb check --quiet"`, "check --quiet"},
		{`script "/usr/bin/xdplb check --backends --quiet"`, "check --backends --quiet"},
	} {
		line := fmt.Sprintf("script %q", fmt.Sprintf("%s %s --instance %s --bpffs %s", in.Bin, script.args, in.Name, in.BPFFS))
		if !strings.Contains(conf, script.sample) {
			t.Fatalf("sample keepalived.conf no longer has the track script line this test rewrites: %s", script.sample)
		}
		conf = strings.Replace(conf, script.sample, line, 1)
	}
	if !strings.Contains(conf, "state MASTER") || !strings.Contains(conf, "priority 200") || !strings.Contains(conf, "weight -150") {
		t.Fatal("sample keepalived.conf: want lb-1 MASTER with priority 200 and the backends check weighted -150 (more than the gap to lb-2's 100)")
	}
	if !master {
		// lb-2, as the sample's comments say.
		conf = strings.Replace(conf, "state MASTER", "state BACKUP", 1)
		conf = strings.Replace(conf, "priority 200", "priority 100", 1)
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func startKeepalived(t *testing.T, c *cluster, lb *testnet.Host, master bool) *testnet.Process {
	t.Helper()
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatal("keepalived is not installed (make test installs it: apt-get install keepalived)")
	}
	conf := keepalivedConf(t, c, lb, master)
	dir := filepath.Dir(conf)
	p, err := lb.Start("keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
		"--use-file", conf, "--pid", filepath.Join(dir, "keepalived.pid"),
		"--vrrp_pid", filepath.Join(dir, "vrrp.pid"), "--checkers_pid", filepath.Join(dir, "checkers.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func hasVIP(t *testing.T, h *testnet.Host) bool {
	addrs, err := h.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Addr() == testnet.VIPAddr() {
			return true
		}
	}
	return false
}

// waitVIP waits until the VIP is on want and on no other LB.
func waitVIP(t *testing.T, c *cluster, want *testnet.Host, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok := hasVIP(t, want)
		for _, lb := range c.LBs {
			if lb != want && hasVIP(t, lb) {
				ok = false
			}
		}
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("VIP not on %s alone within %s", want.Name, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stays asserts the VIP stays on lb, alone, for d.
func stays(t *testing.T, c *cluster, lb *testnet.Host, d time.Duration, why string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if !hasVIP(t, lb) {
			t.Fatalf("%s: the VIP left %s", why, lb.Name)
		}
		for _, other := range c.LBs {
			if other != lb && hasVIP(t, other) {
				t.Fatalf("%s: the VIP is on %s too", why, other.Name)
			}
		}
	}
}
