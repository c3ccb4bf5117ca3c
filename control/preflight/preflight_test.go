package preflight

import (
	"errors"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/bpf"
)

// TestXDPModeAuto (issue 13 §9): auto on a veth takes a mode that forwards.
func TestXDPModeAuto(t *testing.T) {
	tests := []struct {
		name string
		req  bpf.XDPMode
		ifc  Iface
		mode bpf.XDPMode
		why  string
	}{
		{"veth, peer without XDP", bpf.XDPAuto, Iface{Name: "eth1", Driver: "veth", PeerName: "br-lb1", PeerKnown: true}, bpf.XDPGeneric, "its peer br-lb1 runs no XDP program"},
		{"veth, peer unknown", bpf.XDPAuto, Iface{Name: "eth1", Driver: "veth"}, bpf.XDPGeneric, "cannot look into"},
		{"veth, peer with XDP", bpf.XDPAuto, Iface{Name: "eth1", Driver: "veth", PeerName: "br-lb1", PeerKnown: true, PeerXDP: true}, bpf.XDPAuto, "native first"},
		{"virtio", bpf.XDPAuto, Iface{Name: "eth1", Driver: "virtio_net"}, bpf.XDPAuto, ""},
		{"asked native on a veth", bpf.XDPNative, Iface{Name: "eth1", Driver: "veth", PeerKnown: true}, bpf.XDPNative, ""},
		{"asked generic", bpf.XDPGeneric, Iface{Driver: "ixgbe"}, bpf.XDPGeneric, ""},
	}
	for _, tt := range tests {
		mode, why := XDPMode(tt.req, tt.ifc)
		if mode != tt.mode || !strings.Contains(why, tt.why) || (tt.why == "") != (why == "") {
			t.Errorf("%s: %s %q, want %s %q", tt.name, mode, why, tt.mode, tt.why)
		}
	}
}

func find(checks []Check, name string) []Check {
	var out []Check
	for _, c := range checks {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// TestVirtioChecks (issue 13 §9): what makes native XDP fail or crawl on
// virtio_net, and what to change.
func TestVirtioChecks(t *testing.T) {
	base := Facts{Kernel: "5.4.0-216-generic", Root: true, Hook: bpf.HookXDP, Mode: bpf.XDPAuto, BPFFS: "/sys/fs/bpf", BPFFSMounted: true}
	tests := []struct {
		name   string
		kernel string
		ifc    Iface
		want   []string // result + substring of detail or fix, per virtio line
	}{
		{"all well", "", Iface{MTU: 1500, Combined: 2, MaxCombined: 4, CPUs: 2}, []string{"pass|2 queues in use of 4"}},
		{"big mtu", "", Iface{MTU: 9000, Combined: 2, MaxCombined: 4, CPUs: 2}, []string{"fail|ip link set eth1 mtu 1500", "pass|"}},
		{"lro on", "", Iface{MTU: 1500, LRO: true, Combined: 2, MaxCombined: 4, CPUs: 2}, []string{"warn|ethtool -K eth1 lro off", "pass|"}},
		{"gro-hw on", "", Iface{MTU: 1500, GROHW: true, Combined: 2, MaxCombined: 4, CPUs: 2}, []string{"warn|rx-gro-hw off", "pass|"}},
		{"queues all in use, 5.4", "", Iface{MTU: 1500, Combined: 4, MaxCombined: 4, CPUs: 2}, []string{"fail|ethtool -L eth1 combined 2"}},
		{"queues all in use, 6.1", "6.1.0-18-amd64", Iface{MTU: 1500, Combined: 4, MaxCombined: 4, CPUs: 2}, []string{"warn|slow"}},
		{"one queue, two CPUs", "6.1.0-18-amd64", Iface{MTU: 1500, Combined: 1, MaxCombined: 1, CPUs: 2}, []string{"warn|queues=4"}},
	}
	for _, tt := range tests {
		f := base
		if tt.kernel != "" {
			f.Kernel = tt.kernel
		}
		tt.ifc.Name, tt.ifc.Driver, tt.ifc.Up = "eth1", "virtio_net", true
		f.Iface = tt.ifc
		got := find(Checks(f), "virtio")
		if len(got) != len(tt.want) {
			t.Errorf("%s: %d virtio lines %v, want %d", tt.name, len(got), got, len(tt.want))
			continue
		}
		for i, w := range tt.want {
			res, sub, _ := strings.Cut(w, "|")
			if string(got[i].Result) != res || !strings.Contains(got[i].Detail+" "+got[i].Fix, sub) {
				t.Errorf("%s: line %d = %s, want %s with %q", tt.name, i, got[i], res, sub)
			}
		}
	}
	// Generic asked: none of it matters.
	f := base
	f.Mode = bpf.XDPGeneric
	f.Iface = Iface{Name: "eth1", Driver: "virtio_net", MTU: 9000, LRO: true, Up: true}
	if got := find(Checks(f), "virtio"); len(got) != 0 {
		t.Errorf("generic: %v", got)
	}
}

// TestDoctorChecks: every line of the report says pass, warn or fail (or
// info), and the worst one decides doctor's exit status.
func TestDoctorChecks(t *testing.T) {
	good := Facts{Kernel: "6.1.0-18-amd64", Root: true, BTF: true, BPFFS: "/sys/fs/bpf", BPFFSMounted: true,
		Hook: bpf.HookXDP, Mode: bpf.XDPAuto,
		Features: []Feature{{Name: "bpf_link for XDP (5.9+)"}, {Name: "tcx (6.6+)", Err: errors.New("not supported"), Without: "clsact"}},
		Iface:    Iface{Name: "eth1", Driver: "ixgbe", Up: true, MTU: 1500},
		Keepalived: Keepalived{Path: "/etc/keepalived/keepalived.conf", Running: true,
			Text: "vrrp_script chk_xdplb {\n  script \"/usr/bin/xdplb check --quiet\"\n}\n"}}
	checks := Checks(good)
	if w := Worst(checks); w != Pass {
		t.Errorf("a good node: worst %s\n%v", w, checks)
	}
	for _, c := range checks {
		switch c.Result {
		case Pass, Warn, Fail, Info:
		default:
			t.Errorf("check %s: result %q", c.Name, c.Result)
		}
	}
	bad := []struct {
		name   string
		change func(*Facts)
		check  string
		result Result
		sub    string
	}{
		{"old kernel", func(f *Facts) { f.Kernel = "4.19.0-21-amd64" }, "kernel", Fail, "older than 5.4"},
		{"not root", func(f *Facts) { f.Root = false; f.Features = nil }, "privileges", Warn, "not root"},
		{"no bpf syscall", func(f *Facts) {
			f.Features = []Feature{{Name: "bpf system call", Err: errors.New("function not implemented"), Needed: true}}
		}, "bpf", Fail, "function not implemented"},
		{"no bpffs", func(f *Facts) { f.BPFFSMounted = false }, "bpffs", Warn, "not a bpf filesystem"},
		{"no such interface", func(f *Facts) { f.Iface = Iface{Name: "eth9", Err: errors.New("Link not found")} }, "interface", Fail, "eth9: Link not found"},
		{"interface down", func(f *Facts) { f.Iface.Up = false }, "interface", Warn, "DOWN"},
		{"another xdp program", func(f *Facts) { f.Iface.XDPProg = 42 }, "xdp", Fail, "another XDP program (id 42)"},
		{"native on a veth without peer program", func(f *Facts) {
			f.Mode = bpf.XDPNative
			f.Iface = Iface{Name: "eth1", Driver: "veth", Up: true, PeerName: "veth9", PeerKnown: true}
		}, "xdp-mode", Fail, "dropped silently"},
		{"auto on a veth", func(f *Facts) {
			f.Iface = Iface{Name: "eth1", Driver: "veth", Up: true, PeerName: "veth9", PeerKnown: true}
		}, "xdp-mode", Warn, "auto: generic"},
		{"keepalived tracks haproxy", func(f *Facts) {
			f.Keepalived.Text = "vrrp_script chk_haproxy {\n    script \"killall -0 haproxy\"\n}\n"
		}, "keepalived", Warn, "still tracks haproxy"},
		{"keepalived without track script", func(f *Facts) { f.Keepalived.Text = "vrrp_instance v {\n}\n" }, "keepalived", Warn, "no xdplb check"},
		{"no keepalived", func(f *Facts) { f.Keepalived = Keepalived{} }, "keepalived", Info, "no keepalived configuration"},
	}
	for _, b := range bad {
		f := good
		b.change(&f)
		var hit bool
		for _, c := range find(Checks(f), b.check) {
			if c.Result == b.result && strings.Contains(c.Detail, b.sub) {
				hit = true
				if (c.Result == Warn || c.Result == Fail) && c.Fix == "" && b.check != "privileges" {
					t.Errorf("%s: %s without a fix", b.name, c)
				}
			}
		}
		if !hit {
			t.Errorf("%s: no %s %s line with %q in\n%v", b.name, b.result, b.check, b.sub, Checks(f))
		}
	}
}

func TestKernelVersion(t *testing.T) {
	for in, want := range map[string][2]int{"5.4.0-216-generic": {5, 4}, "6.18.0": {6, 18}, "4.19.0-21-amd64": {4, 19}} {
		a, b, ok := KernelVersion(in)
		if !ok || a != want[0] || b != want[1] {
			t.Errorf("%s: %d.%d %v", in, a, b, ok)
		}
	}
	if _, _, ok := KernelVersion("weird"); ok {
		t.Error("weird release parsed")
	}
}
