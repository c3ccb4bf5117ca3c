package lab

import (
	"context"
	"debug/elf"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/apiserver"
	"github.com/xdplb/xdplb/tests/testnet"
)

func host(name string, addr netip.Addr) *testnet.Host {
	return &testnet.Host{Name: name, Addr: netip.PrefixFrom(addr, 24)}
}

func guideServers() []*testnet.Host {
	var hs []*testnet.Host
	for i := 1; i <= 3; i++ {
		hs = append(hs, host("server-"+string(rune('0'+i)), testnet.ServerAddr(i)))
	}
	return hs
}

func TestRunArgs(t *testing.T) {
	servers := guideServers()
	tests := []struct {
		name string
		c    InstanceConfig
		want []string
	}{
		{"defaults: the VIP over every server", InstanceConfig{},
			[]string{"run", "--instance", "xl1-lb1", "--bpffs", "/b", "--iface", "eth1", "--vip", "10.10.10.100", "--metrics-addr", "",
				"--backend", "10.10.10.50", "--backend", "10.10.10.51", "--backend", "10.10.10.52"}},
		{"frontend, backends and more flags", InstanceConfig{Frontend: testnet.LBAddr(1), Backends: []netip.Addr{testnet.ServerAddr(2)},
			Args: []string{"--hook", "tc", "--check", "tcp"}},
			[]string{"run", "--instance", "xl1-lb1", "--bpffs", "/b", "--iface", "eth1", "--vip", "10.10.10.98", "--metrics-addr", "",
				"--backend", "10.10.10.51", "--hook", "tc", "--check", "tcp"}},
		{"no backends at all", InstanceConfig{Backends: []netip.Addr{}},
			[]string{"run", "--instance", "xl1-lb1", "--bpffs", "/b", "--iface", "eth1", "--vip", "10.10.10.100", "--metrics-addr", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := runArgs("xl1-lb1", "/b", tc.c, servers); !slices.Equal(got, tc.want) {
				t.Errorf("runArgs:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestCLIArgs(t *testing.T) {
	tests := []struct {
		args, want []string
	}{
		{[]string{"status", "--json"}, []string{"status", "--instance", "i", "--bpffs", "/b", "--json"}},
		{[]string{"detach"}, []string{"detach", "--instance", "i", "--bpffs", "/b"}},
		{nil, []string{"--instance", "i", "--bpffs", "/b"}},
	}
	for _, tc := range tests {
		args := slices.Clone(tc.args)
		if got := cliArgs("i", "/b", args); !slices.Equal(got, tc.want) {
			t.Errorf("cliArgs(%q) = %q, want %q", tc.args, got, tc.want)
		}
		if !slices.Equal(args, tc.args) {
			t.Errorf("cliArgs changed its argument: %q", args)
		}
	}
}

func TestInstanceName(t *testing.T) {
	tests := []struct{ prefix, host, tag, want string }{
		{"xl1a2b3c", "lb-1", "", "xl1a2b3c-lb1"},
		{"xl1a2b3c", "lb-2", "xdpnative", "xl1a2b3c-lb2-xdpnative"},
	}
	for _, tc := range tests {
		if got := instanceName(tc.prefix, tc.host, tc.tag); got != tc.want {
			t.Errorf("instanceName(%q, %q, %q) = %q, want %q", tc.prefix, tc.host, tc.tag, got, tc.want)
		}
	}
	for _, tag := range []string{"xdp-native", "X", "../x", "abcdefghijklm"} {
		if validTag.MatchString(tag) {
			t.Errorf("tag %q accepted", tag)
		}
	}
}

func TestServerArgs(t *testing.T) {
	pki := &apiserver.PKI{ServerCert: "/p/server.crt", ServerKey: "/p/server.key"}
	tests := []struct {
		kind ServerKind
		want []string
	}{
		{API, []string{"--name", "server-1", "--listen", ":6443", "--cert", "/p/server.crt", "--key", "/p/server.key", "--public-readyz"}},
		{Echo, []string{"--name", "server-1", "--listen", "", "--echo-listen", ":6443"}},
		{Discard, []string{"--name", "server-1", "--listen", "", "--discard-listen", ":6443"}},
	}
	for _, tc := range tests {
		got, err := serverArgs(tc.kind, "server-1", pki)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("serverArgs(%s) = %q, %v; want %q", tc.kind, got, err, tc.want)
		}
	}
	if _, err := serverArgs("ping", "server-1", pki); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, err := serverArgs(API, "server-1", nil); err == nil {
		t.Error("API server without a PKI accepted")
	}
}

func TestParseStatusAndBackendState(t *testing.T) {
	// What `xdplb status --json` prints, trimmed.
	out := []byte(`{"instance":"xl1-lb1","version":"lab-1","frontend_is":"vip","backends":[
		{"addr":"10.10.10.50:6443","state":"UP"},{"addr":"10.10.10.51:6443","state":"DOWN"},
		{"addr":"10.10.10.5:6443","state":"DRAIN"}],"counters":{"new_flow":300}}`)
	st, err := parseStatus(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Instance != "xl1-lb1" || st.Version != "lab-1" || st.Counters["new_flow"] != 300 || len(st.Backends) != 3 {
		t.Fatalf("parsed %+v", st)
	}
	for addr, want := range map[string]daemon.State{"10.10.10.50": "UP", "10.10.10.51": "DOWN", "10.10.10.5": "DRAIN", "10.10.10.52": ""} {
		if got := BackendState(st, netip.MustParseAddr(addr)); got != want {
			t.Errorf("BackendState(%s) = %q, want %q", addr, got, want)
		}
	}
	if _, err := parseStatus([]byte("xdplb: no daemon")); err == nil || !strings.Contains(err.Error(), "no daemon") {
		t.Errorf("bad JSON: %v", err)
	}
	if got := BackendState(daemon.Status{}, testnet.ServerAddr(1)); got != "" {
		t.Errorf("empty status: %q", got)
	}
}

func TestSpecDefaultsToGuide(t *testing.T) {
	if got := (Options{}).spec(); got != testnet.Guide {
		t.Errorf("zero Spec: %+v, want the guide's", got)
	}
	one := testnet.Spec{Servers: 3, LBs: 1, Agents: 3}
	if got := (Options{Spec: one}).spec(); got != one {
		t.Errorf("Spec: %+v, want %+v", got, one)
	}
}

func TestPKINames(t *testing.T) {
	topo := &testnet.Topology{Servers: guideServers()[:2], LBs: []*testnet.Host{host("lb-1", testnet.LBAddr(1))}}
	want := []string{"server-1", "10.10.10.50", "server-2", "10.10.10.51", "lb-1", "10.10.10.98"}
	if got := pkiNames(topo); !slices.Equal(got, want) {
		t.Errorf("pkiNames = %q, want %q", got, want)
	}
}

func TestBuildArgs(t *testing.T) {
	got := buildArgs(XDPLB, "/o/xdplb")
	want := []string{"build", "-trimpath", "-o", "/o/xdplb", "-ldflags", "-X github.com/xdplb/xdplb/control/daemon.Version=lab-1", "github.com/xdplb/xdplb/cmd/xdplb"}
	if !slices.Equal(got, want) {
		t.Errorf("buildArgs(XDPLB) = %q, want %q", got, want)
	}
	if got := buildArgs(MockAPI, "/o/mockapi"); !slices.Equal(got, []string{"build", "-trimpath", "-o", "/o/mockapi", "github.com/xdplb/xdplb/tests/cmd/mockapi"}) {
		t.Errorf("buildArgs(MockAPI) = %q", got)
	}
	if XDPLB.LDFlags == XDPLBUpgraded.LDFlags || XDPLB.Pkg != XDPLBUpgraded.Pkg {
		t.Error("the upgraded xdplb must be the same command under another version")
	}
}

func TestPrebuilt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mockapi"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "agent"), []byte("not executable"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(PrebuiltEnv, dir)
	ctx := context.Background()
	if got, err := Build(ctx, MockAPI); err != nil || got != filepath.Join(dir, "mockapi") {
		t.Errorf("Build(MockAPI) = %q, %v; want the prebuilt one", got, err)
	}
	if _, err := Build(ctx, Agent); err == nil || !strings.Contains(err.Error(), "not an executable") {
		t.Errorf("Build(Agent) with a non-executable file: %v", err)
	}
	if _, err := Build(ctx, XDPLB); err == nil || !strings.Contains(err.Error(), PrebuiltEnv) {
		t.Errorf("Build(XDPLB) missing from the prebuilt directory: %v", err)
	}
}

// Build compiles a tool once per process: the second call returns the same
// file without building it again.
func TestBuildOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build")
	}
	t.Setenv(PrebuiltEnv, "")
	first := MustBuild(t, MockAPI)
	st, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	assertStatic(t, first)
	time.Sleep(10 * time.Millisecond)
	if again := MustBuild(t, MockAPI); again != first {
		t.Fatalf("second Build: %s, first %s", again, first)
	}
	if st2, err := os.Stat(first); err != nil || !st2.ModTime().Equal(st.ModTime()) {
		t.Fatalf("built twice: %v %v", st2.ModTime(), st.ModTime())
	}
	if err := RemoveBinaries(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(first)); !os.IsNotExist(err) {
		t.Fatalf("build directory left after RemoveBinaries: %v", err)
	}
}

// assertStatic fails unless file is an ELF executable with no program
// interpreter and no dynamic section: it runs on any libc (the VM
// matrix's guests run Debian 11's glibc 2.31).
func assertStatic(t *testing.T, file string) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: dynamically linked (built with cgo?)", file, p.Type)
		}
	}
	if f.Section(".dynamic") != nil || f.Section(".interp") != nil {
		t.Errorf("%s has a .dynamic or .interp section", file)
	}
}
