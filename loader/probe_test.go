package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/tests/testenv"
)

// kernelAtLeast says whether release (uname -r) is major.minor or later.
func kernelAtLeast(t *testing.T, release string, major, minor int) bool {
	t.Helper()
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", release, err)
	}
	return ma > major || ma == major && mi >= minor
}

// The probes agree with the kernel's history: each feature is found on
// the kernels that have it, and only there. The kernel matrix runs this on
// 5.4, 5.10, 6.1 and the host's kernel.
func TestProbe(t *testing.T) {
	testenv.RequireRoot(t, "loads BPF programs and makes a network namespace")
	f := Probe()
	fmt.Printf("REPORT: probe: %s\n", f.ProbeReport())
	for name, err := range map[string]error{"bpf": f.BPF, "xdp": f.XDP, "xdp attach": f.XDPAttach, "sched_cls": f.SchedCLS, "scratch netns": f.Scratch} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	since := []struct {
		name         string
		err          error
		major, minor int
	}{
		{"bpf_link for XDP", f.XDPLink, 5, 9},
		{"map batch", f.MapBatch, 5, 6},
		{"bpf_ktime_get_coarse_ns", f.CoarseClock, 5, 11},
		{"tcx", f.TCX, 6, 6},
	}
	for _, s := range since {
		has := kernelAtLeast(t, f.Release, s.major, s.minor)
		if has && s.err != nil {
			t.Errorf("%s: kernel %s should have it (since %d.%d): %v", s.name, f.Release, s.major, s.minor, s.err)
		}
		if !has && s.err == nil {
			t.Errorf("%s: found on kernel %s, before %d.%d", s.name, f.Release, s.major, s.minor)
		}
	}
	// clsact and cls_bpf are what 5.4 has; newer kernels keep them.
	if f.Clsact != nil || f.ClsBPF != nil {
		t.Errorf("clsact %v, cls_bpf %v", f.Clsact, f.ClsBPF)
	}
	for _, h := range bpf.Hooks {
		if err := f.Require(h); err != nil {
			t.Errorf("Require(%s): %v", h, err)
		}
	}
	fb := strings.Join(f.Fallbacks(), "; ")
	if fb == "" {
		fb = "none"
	}
	fmt.Printf("REPORT: probe: fallbacks: %s\n", fb)

	// The data path itself, as this kernel's verifier takes it (loaded,
	// not attached): its size after the verifier's rewrites, and the
	// instructions the verifier processed (5.16+ reports them).
	spec, err := bpf.LoadSpec(bpf.Config{Frontend: netip.MustParseAddrPort("10.10.10.100:6443"), SNATLo: 20000, SNATHi: 29999})
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load the data path: %v", err)
	}
	defer coll.Close()
	for _, h := range bpf.Hooks {
		info, err := coll.Programs[h.Prog()].Info()
		if err != nil {
			t.Fatal(err)
		}
		insns, _ := info.Instructions()
		verified := "not reported (5.16+)"
		if n, ok := info.VerifiedInstructions(); ok {
			verified = fmt.Sprint(n)
		}
		fmt.Printf("REPORT: probe: data path %s: %d instructions after the verifier, %s processed by it\n", h.Prog(), len(insns), verified)
	}
}

// What the daemon says for kernels without a piece: the missing piece and
// its kernel option, in the error.
func TestRequire(t *testing.T) {
	ok := Features{Release: "5.4.286"}
	tests := []struct {
		name string
		f    func(Features) Features
		hook bpf.Hook
		want string
	}{
		{"no bpf syscall", func(f Features) Features { f.BPF = unix.ENOSYS; return f }, bpf.HookXDP, "no BPF system call (built without CONFIG_BPF_SYSCALL)"},
		{"bpf refused", func(f Features) Features { f.BPF = unix.EPERM; return f }, bpf.HookTC, "run as root"},
		{"no xdp", func(f Features) Features { f.XDP = ebpf.ErrNotSupported; return f }, bpf.HookXDP, "cannot load XDP programs"},
		{"xdp does not attach", func(f Features) Features { f.XDPAttach = unix.EOPNOTSUPP; return f }, bpf.HookXDP, "cannot attach XDP programs"},
		{"no sched_cls", func(f Features) Features { f.SchedCLS = ebpf.ErrNotSupported; return f }, bpf.HookTC, "CONFIG_NET_CLS_BPF"},
		{"no clsact, no tcx", func(f Features) Features { f.Clsact, f.TCX = unix.ENOENT, ebpf.ErrNotSupported; return f }, bpf.HookTC, "no clsact qdisc (CONFIG_NET_SCH_INGRESS)"},
		{"no cls_bpf, no tcx", func(f Features) Features { f.ClsBPF, f.TCX = unix.ENOENT, ebpf.ErrNotSupported; return f }, bpf.HookTC, "no bpf classifier (CONFIG_NET_CLS_BPF)"},
	}
	for _, tc := range tests {
		err := tc.f(ok).Require(tc.hook)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// Neither tcx nor clsact: the start line says the TC hook cannot run.
	none := ok
	none.TCX, none.Clsact = ebpf.ErrNotSupported, unix.ENOENT
	if fb := none.Fallbacks(); len(fb) != 1 || !strings.Contains(fb[0], "--hook tc cannot run here") {
		t.Errorf("no tcx, no clsact: fallbacks %q", fb)
	}
	// No clsact is fine where tcx works, and for the XDP hook.
	noClsact := ok
	noClsact.Clsact = unix.ENOENT
	if err := noClsact.Require(bpf.HookTC); err != nil {
		t.Errorf("tcx without clsact: %v", err)
	}
	noClsact.TCX = ebpf.ErrNotSupported
	if err := noClsact.Require(bpf.HookXDP); err != nil {
		t.Errorf("xdp on a kernel without clsact: %v", err)
	}
	// 5.4: everything works, through the older paths.
	k54 := ok
	k54.XDPLink, k54.TCX, k54.MapBatch, k54.CoarseClock = ebpf.ErrNotSupported, ebpf.ErrNotSupported, ebpf.ErrNotSupported, errors.New("no")
	if fb := k54.Fallbacks(); len(fb) != 4 || !strings.Contains(fb[0], "netlink") || !strings.Contains(fb[1], "clsact") {
		t.Errorf("5.4 fallbacks: %q", fb)
	}
}
