package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/lab"
	"github.com/xdplb/xdplb/tests/testnet"
)

// noSyscall is the tool that runs a command with system calls failing
// (tests/cmd/nosyscall): a kernel without the BPF system call, or a node
// where xdplb may not mount, without such a kernel or node.
var noSyscall = lab.Tool{Name: "nosyscall", Pkg: "github.com/xdplb/xdplb/tests/cmd/nosyscall"}

// runWrappedExpectingError runs argv on lb (argv[0] wraps `xdplb run`) and
// wants a non-zero exit with msg in an "xdplb: " line.
func runWrappedExpectingError(t *testing.T, lb *testnet.Host, argv []string, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := lb.Exec(ctx, argv[0], argv[1:]...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("%v: exit %v, want failure\n%s", argv, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "xdplb: ") && strings.Contains(line, msg) {
			t.Logf("REPORT: platform: %s", line)
			return line
		}
	}
	t.Fatalf("%v: no \"xdplb: ...%s...\" line:\n%s", argv, msg, out)
	return ""
}

// Bad platform: a kernel without the BPF system call, a bpffs that cannot
// be mounted, an ip_local_reserved_ports that cannot be written. Each
// gives an "xdplb: " message naming the missing piece, a non-zero exit,
// and leaves nothing attached or pinned.
func TestPlatformFaults(t *testing.T) {
	c := newCluster(t, clusterOpts{hook: hookCases[0]})
	lb := c.lb1()
	in := c.lbs[lb]
	tool := lab.MustBuild(t, noSyscall)
	good := append([]string{in.Bin}, in.RunArgs()...)

	t.Run("no BPF system call", func(t *testing.T) {
		for _, hook := range []string{"xdp", "tc"} {
			run := with(good, "--hook", hook)
			if hook == "tc" {
				run = with(run, "--xdp-mode", "-")
			}
			argv := append([]string{tool, "-errno", "ENOSYS", "-syscall", "bpf", "--"}, run...)
			runWrappedExpectingError(t, lb, argv, "has no BPF system call (built without CONFIG_BPF_SYSCALL)")
			clean(t, c, lb, "no bpf syscall, hook "+hook)
		}
	})

	t.Run("bpffs not mountable", func(t *testing.T) {
		// A directory with no bpffs on it, on a node where mount(2) is
		// refused (a container without CAP_SYS_ADMIN).
		dir := t.TempDir()
		argv := append([]string{tool, "-errno", "EPERM", "-syscall", "mount", "--"}, with(good, "--bpffs", dir)...)
		runWrappedExpectingError(t, lb, argv, "mount bpffs at "+dir)
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("%s holds %v after the failed start", dir, entries)
		}
		clean(t, c, lb, "bpffs not mountable")
	})

	t.Run("ip_local_reserved_ports not writable", func(t *testing.T) {
		// The node's own address as the frontend: xdplb must reserve its
		// SNAT ports, and /proc/sys is read-only (as in a container). The
		// read-only mount lives in a mount namespace of its own.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		before, err := lb.Exec(ctx, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		run := with(good, "--vip", testnet.LBAddr(1).String())
		argv := append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
			`mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"`, "sh"}, run...)
		runWrappedExpectingError(t, lb, argv, "ip_local_reserved_ports")
		clean(t, c, lb, "ip_local_reserved_ports not writable")
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		after, err := lb.Exec(ctx, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports")
		cancel()
		if err != nil || string(after) != string(before) {
			t.Errorf("ip_local_reserved_ports changed: %q -> %q (%v)", before, after, err)
		}
	})

	// The same instance then starts on this kernel, and says at start, in
	// one line, what the kernel lacks that it works around (or that it
	// lacks nothing).
	p := c.startLB(lb)
	var line string
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if strings.Contains(l, "msg=\"kernel ") {
			if line != "" {
				t.Errorf("two kernel lines:\n%s\n%s", line, l)
			}
			line = l
		}
	}
	if line == "" {
		t.Fatalf("the daemon said nothing about the kernel at start:\n%s", p.Stderr())
	}
	t.Logf("REPORT: platform: at start: %s", line[strings.Index(line, "msg="):])
}
