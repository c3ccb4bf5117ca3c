package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/tests/testenv"
)

// inNetns runs fn on a locked OS thread inside a new network namespace
// holding a veth pair "eth1"/"peer1" (both up), and a fresh bpffs mounted
// in a temp dir. Everything is removed afterwards, on failure too.
func inNetns(t *testing.T, fn func(bpffs string)) {
	t.Helper()
	inJoinableNetns(t, func(bpffs, _ string) { fn(bpffs) })
}

// inJoinableNetns is inNetns, also telling fn a path a child process opens
// to join the namespace (/proc/<pid>/task/<tid>/ns/net). The namespace has
// no name in /run/netns: it lives only as long as this thread, so it goes
// with the test process however that ends (a named one outlived a test
// binary killed mid-run, and its bind mount could not be removed).
func inJoinableNetns(t *testing.T, fn func(bpffs, netnsPath string)) {
	t.Helper()
	testenv.RequireRoot(t, "creates a network namespace and attaches BPF programs")
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread ends with the goroutine without unlocking, so the
		// runtime discards it rather than reuse it in another netns.
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("create netns: %w", err)
			return
		}
		defer func() {
			netns.Set(orig)
			ns.Close()
		}()
		path := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "peer1"}
		if err := netlink.LinkAdd(veth); err != nil {
			errc <- fmt.Errorf("add veth: %w", err)
			return
		}
		for _, n := range []string{"eth1", "peer1"} {
			l, _ := netlink.LinkByName(n)
			netlink.LinkSetUp(l)
		}
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		fn(bpffs, path)
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func testOptions(bpffs string, hook bpf.Hook, mode bpf.XDPMode) Options {
	return Options{
		BPFFS: bpffs, Instance: "t" + randHex(3), Iface: "eth1", Hook: hook, XDPMode: mode,
		Data: bpf.Config{Frontend: netip.MustParseAddrPort("10.10.10.100:6443"), SNATLo: 20000, SNATHi: 29999},
	}
}

// TestAttachReplaceDetach: each hook and mode attaches, a second start
// against the pinned state swaps the program and keeps the flow table, and
// detach leaves the interface and bpffs clean.
func TestAttachReplaceDetach(t *testing.T) {
	cases := []struct {
		hook     bpf.Hook
		mode     bpf.XDPMode
		noLink   bool
		wantMode string
	}{
		{bpf.HookXDP, bpf.XDPNative, false, "native"},
		{bpf.HookXDP, bpf.XDPGeneric, false, "generic"},
		{bpf.HookXDP, bpf.XDPAuto, false, "native"},
		{bpf.HookTC, "", false, ""},
		// The paths of kernels without bpf_link (5.4): netlink, clsact.
		{bpf.HookXDP, bpf.XDPNative, true, "native"},
		{bpf.HookXDP, bpf.XDPGeneric, true, "generic"},
		{bpf.HookTC, "", true, "clsact"},
	}
	for _, c := range cases {
		name := string(c.hook) + "-" + string(c.mode)
		if c.noLink {
			name += "-nolink"
		}
		t.Run(name, func(t *testing.T) {
			var errs []string
			fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
			inNetns(t, func(bpffs string) {
				opts := testOptions(bpffs, c.hook, c.mode)
				opts.NoLink = c.noLink
				inst, err := Start(opts)
				if err != nil {
					fail("start: %v", err)
					return
				}
				fmt.Printf("REPORT: kernel=%s hook=%s mode=%s via=%s clock=%s insns=%d\n",
					kernelRelease(), inst.Attachment.Hook, inst.Attachment.Mode, inst.Attachment.Via, inst.Attachment.Clock, inst.Attachment.Insns)
				if c.wantMode != "" && inst.Attachment.Mode != c.wantMode {
					fail("mode %q, want %q (%s)", inst.Attachment.Mode, c.wantMode, inst.Attachment)
				}
				if inst.Replaced {
					fail("fresh start reported as replace")
				}
				att, err := Attached(bpffs, opts.Instance)
				if err != nil || att.ProgID != inst.Attachment.ProgID || att.Iface != "eth1" {
					fail("attached: %+v %v", att, err)
				}
				key := bpf.Key(netip.MustParseAddrPort("10.10.10.101:40000"), opts.Data.Frontend)
				if err := inst.Maps.XdplbFlows.Put(key, bpf.Flow{State: uint8(bpf.FlowEstablished), LastSeenNs: 1}); err != nil {
					fail("put flow: %v", err)
				}
				firstID := inst.Attachment.ProgID
				inst.Close()

				inst2, err := Start(opts)
				if err != nil {
					fail("restart: %v", err)
					return
				}
				if !inst2.Replaced || inst2.Attachment.ProgID == firstID {
					fail("restart did not replace: %+v", inst2.Attachment)
				}
				var f bpf.Flow
				if err := inst2.Maps.XdplbFlows.Lookup(key, &f); err != nil {
					fail("flow lost across restart: %v", err)
				}
				if att, err := Attached(bpffs, opts.Instance); err != nil || att.ProgID != inst2.Attachment.ProgID {
					fail("after restart attached: %+v %v", att, err)
				}
				if l, _ := netlink.LinkByName("eth1"); c.hook == bpf.HookTC {
					if ids, _ := tcProgIDs(l); len(ids) > 1 {
						fail("tc filters after replace: %v", ids)
					}
				}
				// The kernel frees a replaced program after an RCU grace
				// period (tc filters: a workqueue), so allow it a moment.
				gone := false
				for i := 0; i < 100 && !gone; i++ {
					p, err := ebpf.NewProgramFromID(firstID)
					if err != nil {
						gone = true
						break
					}
					p.Close()
					time.Sleep(20 * time.Millisecond)
				}
				if !gone {
					fail("old program %d still alive 2s after replace", firstID)
				}
				inst2.Close()

				if err := Detach(bpffs, opts.Instance); err != nil {
					fail("detach: %v", err)
				}
				l, _ := netlink.LinkByName("eth1")
				if x := l.Attrs().Xdp; x != nil && x.Attached {
					fail("xdp still attached after detach: %+v", x)
				}
				if ids, _ := tcProgIDs(l); len(ids) > 0 {
					fail("tc filters left: %v", ids)
				}
				if qs, _ := netlink.QdiscList(l); hasClsact(qs) {
					fail("clsact qdisc left")
				}
				if _, err := os.Stat(instanceDir(bpffs, opts.Instance)); !errors.Is(err, os.ErrNotExist) {
					fail("pin dir left: %v", err)
				}
				if err := Detach(bpffs, opts.Instance); err != nil {
					fail("second detach: %v", err)
				}
			})
			if len(errs) > 0 {
				t.Fatal(strings.Join(errs, "\n"))
			}
		})
	}
}

func hasClsact(qs []netlink.Qdisc) bool {
	for _, q := range qs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

// TestRefusals: bad requests fail with a clear error and leave nothing
// attached or pinned.
func TestRefusals(t *testing.T) {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	inNetns(t, func(bpffs string) {
		opts := testOptions(bpffs, bpf.HookXDP, bpf.XDPAuto)
		opts.Iface = "eth9"
		if _, err := Start(opts); err == nil || !strings.Contains(err.Error(), `"eth9" not found`) {
			fail("missing iface: %v", err)
		}
		if _, err := os.Stat(instanceDir(bpffs, opts.Instance)); !errors.Is(err, os.ErrNotExist) {
			fail("missing iface left pins")
		}

		bad := testOptions(bpffs, bpf.HookXDP, bpf.XDPAuto)
		bad.Data.SNATLo, bad.Data.SNATHi = 6000, 7000
		if _, err := Start(bad); err == nil || !strings.Contains(err.Error(), "contain the frontend port") {
			fail("snat range with frontend port: %v", err)
		}
		if _, err := os.Stat(instanceDir(bpffs, bad.Instance)); !errors.Is(err, os.ErrNotExist) {
			fail("bad config left pins")
		}

		a := testOptions(bpffs, bpf.HookXDP, bpf.XDPAuto)
		inst, err := Start(a)
		if err != nil {
			fail("start a: %v", err)
			return
		}
		defer Detach(bpffs, a.Instance)
		inst.Close()
		b := testOptions(bpffs, bpf.HookXDP, bpf.XDPAuto)
		if _, err := Start(b); err == nil || !strings.Contains(err.Error(), "already runs xdplb instance") {
			fail("second instance on the same iface: %v", err)
		}
		if _, err := os.Stat(instanceDir(bpffs, b.Instance)); !errors.Is(err, os.ErrNotExist) {
			fail("refused instance left pins")
		}
		a.Hook = bpf.HookTC
		if _, err := Start(a); err == nil || !strings.Contains(err.Error(), "attached on the xdp hook") {
			fail("hook switch: %v", err)
		}
		if att, err := Attached(bpffs, a.Instance); err != nil || att.Hook != bpf.HookXDP {
			fail("refused hook switch disturbed the instance: %+v %v", att, err)
		}
	})
	if len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
}

func kernelRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

// instanceDir is the pin directory of a (valid) test instance name.
func instanceDir(bpffs, instance string) string {
	dir, _ := bpf.InstanceDir(bpffs, instance)
	return dir
}

// TestLegacyLayoutRefused: an instance an older release pinned (maps named
// flows, backends, ...) is refused with what to do, and detach removes it.
func TestLegacyLayoutRefused(t *testing.T) {
	var errs []string
	inNetns(t, func(bpffs string) {
		opts := testOptions(bpffs, bpf.HookXDP, bpf.XDPAuto)
		dir := instanceDir(bpffs, opts.Instance)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			errs = append(errs, err.Error())
			return
		}
		old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 64, MaxEntries: 4})
		if err != nil {
			errs = append(errs, err.Error())
			return
		}
		defer old.Close()
		if err := old.Pin(filepath.Join(dir, "flows")); err != nil {
			errs = append(errs, err.Error())
			return
		}
		if _, err := Start(opts); err == nil || !strings.Contains(err.Error(), "older xdplb") || !strings.Contains(err.Error(), "xdplb detach --instance "+opts.Instance) {
			errs = append(errs, fmt.Sprintf("start over a legacy instance: %v", err))
		}
		if err := Detach(bpffs, opts.Instance); err != nil {
			errs = append(errs, fmt.Sprintf("detach: %v", err))
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Sprintf("legacy instance left after detach: %v", err))
		}
	})
	if len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
}

// TestCounterMapOfAnotherLayout: an instance whose stats map has the
// layout of an older xdplb (an array of one counter per reason) is
// upgraded in place: the stats map is replaced, the flow table kept.
func TestCounterMapOfAnotherLayout(t *testing.T) {
	inNetns(t, func(bpffs string) {
		opts := testOptions(bpffs, bpf.HookXDP, bpf.XDPGeneric)
		inst, err := Start(opts)
		if err != nil {
			t.Fatal(err)
		}
		key := bpf.Key(netip.MustParseAddrPort("10.10.10.101:40000"), opts.Data.Frontend)
		if err := inst.Maps.XdplbFlows.Put(key, bpf.Flow{State: uint8(bpf.FlowEstablished), LastSeenNs: 1}); err != nil {
			t.Fatal(err)
		}
		inst.Close()
		defer Detach(bpffs, opts.Instance)
		// The older layout, pinned in its place.
		path := filepath.Join(instanceDir(bpffs, opts.Instance), "xdplb_stats")
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "xdplb_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(bpf.StatCount)})
		if err != nil {
			t.Fatal(err)
		}
		if err := old.Pin(path); err != nil {
			t.Fatal(err)
		}
		old.Close()

		inst2, err := Start(opts)
		if err != nil {
			t.Fatalf("upgrade over an older stats map: %v", err)
		}
		defer inst2.Close()
		if !inst2.Replaced {
			t.Error("the program was not replaced in place")
		}
		var f bpf.Flow
		if err := inst2.Maps.XdplbFlows.Lookup(key, &f); err != nil {
			t.Errorf("flow lost: %v", err)
		}
		if inst2.Maps.XdplbStats.MaxEntries() != 1 || inst2.Maps.XdplbStats.ValueSize() != uint32(8*bpf.StatCount) {
			t.Errorf("stats map not replaced: %d entries of %d bytes", inst2.Maps.XdplbStats.MaxEntries(), inst2.Maps.XdplbStats.ValueSize())
		}
		if _, err := (Datapath{M: inst2.Maps}).Stats(); err != nil {
			t.Errorf("stats: %v", err)
		}
	})
}
