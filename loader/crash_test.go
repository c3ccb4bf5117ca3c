package loader

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// The child process of TestStartKilledAnywhere reads its task from these.
const (
	crashEnvStep     = "XDPLB_LOADER_CRASH_STEP"
	crashEnvNetns    = "XDPLB_LOADER_CRASH_NETNS"
	crashEnvBPFFS    = "XDPLB_LOADER_CRASH_BPFFS"
	crashEnvInstance = "XDPLB_LOADER_CRASH_INSTANCE"
	crashEnvHook     = "XDPLB_LOADER_CRASH_HOOK"
	crashEnvNoLink   = "XDPLB_LOADER_CRASH_NOLINK"
)

// TestCrashChild is not a test: it is the process TestStartKilledAnywhere
// starts, which joins the test's namespace, starts an instance and kills
// itself with SIGKILL at the step it was given.
func TestCrashChild(t *testing.T) {
	step := os.Getenv(crashEnvStep)
	if step == "" {
		t.Skip("the child process of TestStartKilledAnywhere")
	}
	runtime.LockOSThread()
	ns, err := netns.GetFromPath(os.Getenv(crashEnvNetns))
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	opts := testOptions(os.Getenv(crashEnvBPFFS), bpf.Hook(os.Getenv(crashEnvHook)), bpf.XDPNative)
	opts.Instance = os.Getenv(crashEnvInstance)
	opts.NoLink = os.Getenv(crashEnvNoLink) != ""
	crashPoint = func(s string) {
		if s == step {
			unix.Kill(os.Getpid(), unix.SIGKILL)
			select {}
		}
	}
	if _, err = Start(opts); err != nil {
		t.Fatalf("start: %v", err)
	}
	fmt.Println(notReached) // this start has no such step (a fresh start never replaces)
}

const notReached = "XDPLB-CRASH-STEP-NOT-REACHED"

// TestStartKilledAnywhere: a start killed (SIGKILL) after any of its steps
// leaves state the next start takes over: it succeeds, forwards with a
// whole instance, and after detach nothing is pinned or attached. Each
// case kills a first start (fresh: loaded, pinned, renamed, attached) and
// a second one (upgrade: loaded, replaced, attached).
func TestStartKilledAnywhere(t *testing.T) {
	steps := []string{"loaded", "pinned", "renamed", "replaced", "attached"}
	cases := []struct {
		hook   bpf.Hook
		noLink bool
	}{{bpf.HookXDP, false}, {bpf.HookXDP, true}, {bpf.HookTC, false}, {bpf.HookTC, true}}
	for _, c := range cases {
		for _, step := range steps {
			name := fmt.Sprintf("%s-nolink=%v/%s", c.hook, c.noLink, step)
			t.Run(name, func(t *testing.T) {
				var errs []string
				fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
				inJoinableNetns(t, func(bpffs, nsPath string) {
					opts := testOptions(bpffs, c.hook, bpf.XDPNative)
					opts.NoLink = c.noLink
					kill := func(what string) {
						cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
						cmd.Env = append(os.Environ(), crashEnvStep+"="+step, crashEnvNetns+"="+nsPath,
							crashEnvBPFFS+"="+bpffs, crashEnvInstance+"="+opts.Instance, crashEnvHook+"="+string(c.hook))
						if c.noLink {
							cmd.Env = append(cmd.Env, crashEnvNoLink+"=1")
						}
						out, err := cmd.CombinedOutput()
						if err == nil && strings.Contains(string(out), notReached) {
							return
						}
						var ee *exec.ExitError
						if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
							fail("%s: child was not killed at %q: %v\n%s", what, step, err, out)
						}
					}
					restart := func(what string) {
						inst, err := Start(opts)
						if err != nil {
							fail("%s: start after a start killed at %q: %v", what, step, err)
							return
						}
						inst.Close()
						if att, err := Attached(bpffs, opts.Instance); err != nil || att.ProgID != inst.Attachment.ProgID {
							fail("%s: not attached after restart: %+v %v", what, att, err)
						}
					}
					kill("fresh")
					restart("fresh")
					kill("upgrade")
					restart("upgrade")
					if err := Detach(bpffs, opts.Instance); err != nil {
						fail("detach: %v", err)
					}
					if left, _ := os.ReadDir(bpf.StateDir(bpffs)); len(left) > 0 {
						var names []string
						for _, e := range left {
							names = append(names, e.Name())
						}
						fail("left under %s: %s", bpf.StateDir(bpffs), strings.Join(names, ", "))
					}
					l, _ := netlink.LinkByName("eth1")
					if x := l.Attrs().Xdp; x != nil && x.Attached {
						fail("xdp still attached: %+v", x)
					}
					if ids, _ := tcProgIDs(l); len(ids) > 0 {
						fail("tc filters left: %v", ids)
					}
				})
				if len(errs) > 0 {
					t.Fatal(strings.Join(errs, "\n"))
				}
			})
		}
	}
}
