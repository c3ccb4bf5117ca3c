// Package install installs xdplb's .deb in a guest of the VM matrix and
// checks what an operator gets: dpkg -i on the target's userland (Debian
// bullseye: dpkg 1.20, glibc 2.31, like Ubuntu 20.04), the static binary
// running there, the packaged keepalived sample accepted by the release's
// keepalived, a package of the wrong architecture refused, and dpkg -r
// leaving nothing attached or pinned. It installs into the system, so it
// runs only inside a guest that tests/vm/vmrun booted (whose root is a
// throwaway overlay) and skips everywhere else.
//
//	make vm-test runs TestInstall before the other tests of a guest and
//	TestRemove after them ($XDPLB_VM_DEBS holds the packages).
package install

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/tests/testenv"
)

// inGuest skips unless this is a vmrun guest: never install on a host.
func inGuest(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "installs a package with dpkg; make vm-test runs it as root in a guest")
	if os.Getenv("XDPLB_VM") != "1" {
		t.Skip("installs xdplb system-wide: runs only in a tests/vm/vmrun guest (XDPLB_VM=1)")
	}
	if _, err := os.Stat("/run/xdplb-vm/stage2.sh"); err != nil {
		t.Skip("XDPLB_VM=1 but no /run/xdplb-vm/stage2.sh: not a tests/vm/vmrun guest, refusing to install")
	}
}

func report(format string, args ...any) {
	fmt.Printf("REPORT: install: "+format+"\n", args...)
}

// debs finds the packages make vm-test built in $XDPLB_VM_DEBS: one for
// amd64, and one for arm64.
func debs(t *testing.T) (native, foreign string) {
	t.Helper()
	dir := os.Getenv("XDPLB_VM_DEBS")
	if dir == "" {
		t.Fatal("XDPLB_VM_DEBS names no directory (make vm-test sets it)")
	}
	one := func(arch string) string {
		m, _ := filepath.Glob(filepath.Join(dir, "xdplb_*_"+arch+".deb"))
		if len(m) != 1 {
			t.Fatalf("%d xdplb_*_%s.deb in %s, want one", len(m), arch, dir)
		}
		return m[0]
	}
	return one("amd64"), one("arm64")
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func firstLine(s string) string { return strings.TrimSpace(strings.SplitN(s, "\n", 2)[0]) }

// TestVagrantLBFailsFast: vagrant/lb.sh (the LB nodes' provisioning) with a
// package for another architecture, or a package whose binary cannot run
// here, stops at once with the real error instead of waiting for `xdplb
// check`. /vagrant is made in the guest as Vagrant's synced folder would be.
func TestVagrantLBFailsFast(t *testing.T) {
	inGuest(t)
	_, foreign := debs(t)
	repo, _ := os.Getwd() // make vm-test runs it from the repository
	script := filepath.Join(repo, "vagrant", "lb.sh")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("run from the repository: %v", err)
	}
	fresh := func(t *testing.T, debs ...string) {
		t.Helper()
		os.RemoveAll("/vagrant") // the guest's own, made below
		mustRun(t, "mkdir", "-p", "/vagrant/vagrant")
		mustRun(t, "cp", filepath.Join(repo, "vagrant", "common.sh"), "/vagrant/vagrant/")
		for _, d := range debs {
			mustRun(t, "cp", d, "/vagrant/")
		}
	}
	provision := func(t *testing.T) string {
		t.Helper()
		start := time.Now()
		cmd := exec.Command("bash", script)
		cmd.Env = append(os.Environ(), "NODE_IP=10.10.10.98", "VIP=10.10.10.100", "LB_STATE=MASTER", "LB_PRIORITY=200",
			"BACKENDS=10.10.10.50 10.10.10.51 10.10.10.52")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("vagrant/lb.sh succeeded:\n%s", out)
		}
		if took := time.Since(start); took > 60*time.Second {
			t.Errorf("vagrant/lb.sh failed only after %s", took.Round(time.Second))
		}
		return string(out)
	}
	t.Cleanup(func() {
		run(t, "dpkg", "-P", "xdplb")
		os.RemoveAll("/vagrant")
	})

	t.Run("only a package for another architecture", func(t *testing.T) {
		fresh(t, foreign)
		out := provision(t)
		if !strings.Contains(out, "want one /vagrant/xdplb_*_amd64.deb for this amd64 node, found 0") || !strings.Contains(out, filepath.Base(foreign)) {
			t.Errorf("lb.sh did not say what is wrong:\n%s", out)
		}
		report("vagrant/lb.sh, arm64 package only: %s", lastLine(out))
	})

	t.Run("a binary for another architecture", func(t *testing.T) {
		// The arm64 package relabelled amd64: dpkg installs it, and the
		// binary cannot run.
		dir := t.TempDir()
		mustRun(t, "dpkg-deb", "-R", foreign, filepath.Join(dir, "pkg"))
		ctl := filepath.Join(dir, "pkg", "DEBIAN", "control")
		b, err := os.ReadFile(ctl)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(ctl, []byte(strings.Replace(string(b), "Architecture: arm64", "Architecture: amd64", 1)), 0o644)
		relabelled := filepath.Join(dir, "xdplb_0.0~relabelled_amd64.deb")
		mustRun(t, "dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", filepath.Join(dir, "pkg"), relabelled)
		fresh(t, relabelled)
		out := provision(t)
		if !strings.Contains(out, "the installed xdplb does not run on this node") || !strings.Contains(out, "Exec format error") {
			t.Errorf("lb.sh did not give the real error:\n%s", out)
		}
		report("vagrant/lb.sh, arm64 binary: %s", lastLine(out))
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestInstall: dpkg -i as the README says (apt install ./xdplb_*.deb does
// the same with a static binary: nothing to resolve).
func TestInstall(t *testing.T) {
	inGuest(t)
	native, foreign := debs(t)
	report("userland %s; %s", firstLine(mustRun(t, "ldd", "--version")), firstLine(mustRun(t, "dpkg", "--version")))

	// A package for another architecture is refused, and nothing installed.
	out, err := run(t, "dpkg", "-i", foreign)
	if err == nil || !strings.Contains(out, "package architecture (arm64) does not match system (amd64)") {
		t.Errorf("dpkg -i %s: %v, want a refusal naming the architectures:\n%s", filepath.Base(foreign), err, out)
	} else {
		report("wrong architecture refused: %s", firstLine(out[strings.Index(out, "package architecture"):]))
	}
	if _, err := os.Stat("/usr/bin/xdplb"); err == nil {
		t.Fatal("/usr/bin/xdplb exists after the refused package")
	}

	out = mustRun(t, "dpkg", "-i", native)
	t.Logf("dpkg -i:\n%s", out)
	if st := mustRun(t, "dpkg-query", "-W", "-f", "${Status} ${Version}", "xdplb"); !strings.HasPrefix(st, "install ok installed ") {
		t.Fatalf("dpkg-query: %q", st)
	}
	if cf := mustRun(t, "dpkg-query", "-W", "-f", "${Conffiles}", "xdplb"); !strings.Contains(cf, "/etc/xdplb/xdplb.yaml ") {
		t.Errorf("/etc/xdplb/xdplb.yaml is not a conffile: %q", cf)
	}
	version := firstLine(mustRun(t, "/usr/bin/xdplb", "version"))
	report("installed %s: %s", filepath.Base(native), version)
	f, err := elf.Open("/usr/bin/xdplb")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("/usr/bin/xdplb has a program interpreter: not static")
		}
	}
	f.Close()
	// glibc 2.31's ldd on a static binary.
	if out, _ := run(t, "ldd", "/usr/bin/xdplb"); !strings.Contains(out, "not a dynamic executable") {
		t.Errorf("ldd /usr/bin/xdplb: %q", out)
	}
	for _, p := range []string{"/lib/systemd/system/xdplb.service", "/usr/share/man/man8/xdplb.8.gz",
		"/usr/share/bash-completion/completions/xdplb", "/usr/share/doc/xdplb/copyright"} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	// The packaged keepalived sample, as the release's keepalived reads it.
	conf := "/usr/share/doc/xdplb/examples/keepalived.conf"
	out, err = run(t, "keepalived", "--config-test", "--use-file", conf)
	if err != nil {
		t.Errorf("keepalived --config-test %s: %v\n%s", conf, err, out)
	}
	report("%s accepted by %s", conf, firstLine(mustRun(t, "keepalived", "--version")))
}

// TestKeepalivedTracksXdplb: the release's keepalived with the package's
// sample configuration, as the README installs it, and the package's
// daemon with the package's /etc/xdplb/xdplb.yaml, on this guest's eth1
// (lb-1's address): keepalived takes the VIP once `xdplb check` passes,
// gives it up when the daemon dies, and takes it again when the daemon is
// back. Alone, with generous bounds: the timing of a failover between two
// nodes is the host's end-to-end suite's (TestKeepalivedFailover).
func TestKeepalivedTracksXdplb(t *testing.T) {
	inGuest(t)
	if _, err := os.Stat("/usr/bin/xdplb"); err != nil {
		t.Fatal("xdplb is not installed (TestInstall runs first)")
	}
	eth1 := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "eth1p"}
	if err := netlink.LinkAdd(eth1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(eth1) })
	for _, name := range []string{"eth1", "eth1p"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		netlink.LinkSetUp(l)
		if name == "eth1" {
			addr, _ := netlink.ParseAddr("10.10.10.98/24")
			if err := netlink.AddrAdd(l, addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustRun(t, "cp", "/usr/share/doc/xdplb/examples/keepalived.conf", "/etc/keepalived/keepalived.conf")
	dir := t.TempDir()

	var logs testenv.SyncBuffer // the daemons' output, shown if the test fails
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("xdplb and keepalived said:\n%s", logs.String())
		}
	})
	start := func(name string, args ...string) (stop func()) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &logs, &logs
		// Its own process group: keepalived forks a VRRP child and track
		// scripts that hold the output pipe, and a SIGKILL of the parent
		// alone left them running (the 5.4 guest waited 8 minutes for
		// the pipe to close). WaitDelay bounds that wait in any case.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		stopped := false
		stop = func() {
			if stopped {
				return
			}
			stopped = true
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the group we started
			<-done
		}
		t.Cleanup(stop)
		return stop
	}
	hasVIP := func() bool {
		l, err := netlink.LinkByName("eth1")
		if err != nil {
			return false
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.String() == "10.10.10.100" {
				return true
			}
		}
		return false
	}
	waitVIP := func(want bool, limit time.Duration, what string) time.Duration {
		t.Helper()
		begin := time.Now()
		for hasVIP() != want {
			if time.Since(begin) > limit {
				t.Fatalf("%s: VIP on eth1 = %v after %s, want %v", what, !want, limit, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return time.Since(begin)
	}

	// The packaged configuration, as is: eth1, the VIP, the guide's backends.
	daemon := start("/usr/bin/xdplb", "run")
	t.Cleanup(func() { run(t, "/usr/bin/xdplb", "detach") })
	start("keepalived", "--dont-fork", "--log-console", "--vrrp", "--use-file", "/etc/keepalived/keepalived.conf",
		"--pid", dir+"/keepalived.pid", "--vrrp_pid", dir+"/vrrp.pid", "--checkers_pid", dir+"/checkers.pid")
	took := waitVIP(true, 90*time.Second, "keepalived with xdplb up")
	report("keepalived %s with the package's sample: VIP on eth1 %s after start", firstLine(mustRun(t, "keepalived", "--version")), took.Round(time.Millisecond))
	daemon()
	took = waitVIP(false, 60*time.Second, "xdplb killed")
	report("xdplb killed: keepalived gave up the VIP after %s", took.Round(time.Millisecond))
	start("/usr/bin/xdplb", "run")
	took = waitVIP(true, 90*time.Second, "xdplb back")
	report("xdplb back: VIP on eth1 again after %s", took.Round(time.Millisecond))
}

// TestRemove: dpkg -r stops a running daemon and detaches its program
// (prerm), keeps the conffile; dpkg -P then removes it.
func TestRemove(t *testing.T) {
	inGuest(t)
	if _, err := os.Stat("/usr/bin/xdplb"); err != nil {
		t.Fatal("xdplb is not installed (TestInstall runs first)")
	}
	// A daemon on a veth of the guest's own namespace, with the default
	// bpffs: as on an LB node.
	la := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "xrm0"}, PeerName: "xrm1"}
	if err := netlink.LinkAdd(la); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(la) })
	for _, name := range []string{"xrm0", "xrm1"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		netlink.LinkSetUp(l)
		if name == "xrm0" {
			addr, _ := netlink.ParseAddr("10.99.0.1/24")
			if err := netlink.AddrAdd(l, addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The packaged /etc/xdplb/xdplb.yaml, its keys overridden by flags.
	daemon := exec.Command("/usr/bin/xdplb", "run", "--iface", "xrm0", "--vip", "10.99.0.100", "--backend", "10.99.0.2",
		"--check", "tcp", "--xdp-mode", "generic", "--metrics-addr", "")
	daemon.Stdout, daemon.Stderr = os.Stdout, os.Stdout
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			syscall.Kill(daemon.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !xdpAttached(t, "xrm0") {
		select {
		case <-exited:
			t.Fatalf("xdplb run exited: %v", waitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("xdplb run attached nothing to xrm0 within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var st struct {
		Attachment struct{ Via, Mode string }
	}
	if out, err := run(t, "/usr/bin/xdplb", "status", "--json"); err == nil {
		json.Unmarshal([]byte(out), &st)
	}
	report("daemon of the package attached (%s %s), now dpkg -r", st.Attachment.Mode, st.Attachment.Via)

	out := mustRun(t, "dpkg", "-r", "xdplb")
	t.Logf("dpkg -r:\n%s", out)
	if !strings.Contains(out, "detaching instance default") {
		t.Errorf("prerm did not say it detached the instance:\n%s", out)
	}
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		t.Error("the daemon still runs 15s after dpkg -r")
	}
	if xdpAttached(t, "xrm0") {
		t.Error("an XDP program is still attached to xrm0 after dpkg -r")
	}
	for _, p := range []string{"/sys/fs/bpf/xdplb/default", "/run/xdplb/default.sock", "/usr/bin/xdplb"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after dpkg -r (%v)", p, err)
		}
	}
	if _, err := os.Stat("/etc/xdplb/xdplb.yaml"); err != nil {
		t.Errorf("dpkg -r removed the conffile: %v", err)
	}
	mustRun(t, "dpkg", "-P", "xdplb")
	if _, err := os.Stat("/etc/xdplb"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/etc/xdplb left after dpkg -P (%v)", err)
	}
	report("dpkg -r: daemon stopped, program detached, pins removed, conffile kept; dpkg -P: /etc/xdplb gone")
}

func xdpAttached(t *testing.T, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	x := l.Attrs().Xdp
	return x != nil && x.Attached
}
