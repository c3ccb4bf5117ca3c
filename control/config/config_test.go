package config

import (
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/health"
)

// guideConfig is the configuration of the guide's HAProxy setup.
const guideConfig = `
iface: eth1
vip: 10.10.10.100
backends:
  - 10.10.10.50
  - 10.10.10.51:6443
  - {address: 10.10.10.52:6443, weight: 2}
`

func mustParse(t *testing.T, yaml string) Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatalf("ParseConfig() = %v", err)
	}
	return cfg
}

func TestParseConfigDefaults(t *testing.T) {
	t.Setenv(bpf.BPFFSEnv, "")
	cfg := mustParse(t, guideConfig)
	want := Config{
		Instance: "default",
		Iface:    "eth1",
		VIP:      netip.MustParseAddr("10.10.10.100"),
		Port:     6443,
		Backends: []BackendSpec{
			{Addr: netip.MustParseAddrPort("10.10.10.50:0"), Weight: 1},
			{Addr: netip.MustParseAddrPort("10.10.10.51:6443"), Weight: 1},
			{Addr: netip.MustParseAddrPort("10.10.10.52:6443"), Weight: 2},
		},
		Check:              health.CheckTLS,
		CheckPath:          "/readyz",
		CheckExpectStatus:  200,
		Inter:              2 * time.Second,
		Rise:               2,
		Fall:               3,
		Hook:               bpf.HookXDP,
		XDPMode:            bpf.XDPAuto,
		MetricsAddr:        "127.0.0.1:9716",
		BPFFS:              "/sys/fs/bpf",
		GCInterval:         10 * time.Second,
		EstablishedTimeout: time.Hour,
		LogFormat:          LogText,
		AllDown:            AllDownOpen,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("ParseConfig() =\n%+v\nwant\n%+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	wantParams := health.Params{Inter: 2 * time.Second, FastInter: 2 * time.Second, DownInter: 2 * time.Second,
		Timeout: time.Second, Rise: 2, Fall: 3}
	if got := cfg.HealthParams(); got != wantParams {
		t.Errorf("HealthParams() = %+v, want HAProxy's defaults %+v", got, wantParams)
	}
	if got := cfg.ResolvedBackends()[0].Addr.String(); got != "10.10.10.50:6443" {
		t.Errorf("backend without a port resolves to %s, want 10.10.10.50:6443", got)
	}
}

func TestParseConfigEveryKey(t *testing.T) {
	cfg := mustParse(t, `
instance: lb-a
iface: eth1
vip: 10.10.10.98
port: 443
backends:
  - address: 10.10.10.50
    weight: 0
  - 10.10.10.51:6443
check: https
check-path: /livez
check-expect-status: 204
check-ca: /var/lib/rancher/k3s/server/tls/server-ca.crt
check-cert: /etc/xdplb/client.crt
check-key: /etc/xdplb/client.key
check-token-file: /etc/xdplb/token
check-server-name: kubernetes
check-source: 10.10.10.97
inter: 3s
fastinter: 1s
downinter: 10s
timeout: 1500ms
rise: 3
fall: 2
hook: tc
xdp-mode: auto
snat-ports: 61000-65535
metrics-addr: ":9716"
bpffs: /run/bpf
gc-interval: 5s
established-timeout: 2h
max-conns: 50000
max-conns-per-client: 2000
sync-peer: 10.10.10.99
sync-key-file: /etc/xdplb/sync.key
all-down: drop
`)
	want := Config{
		Instance: "lb-a", Iface: "eth1", VIP: netip.MustParseAddr("10.10.10.98"), Port: 443,
		Backends: []BackendSpec{
			{Addr: netip.MustParseAddrPort("10.10.10.50:0"), Weight: 0},
			{Addr: netip.MustParseAddrPort("10.10.10.51:6443"), Weight: 1},
		},
		Check: health.CheckHTTPS, CheckPath: "/livez", CheckExpectStatus: 204,
		CheckCA: "/var/lib/rancher/k3s/server/tls/server-ca.crt", CheckCert: "/etc/xdplb/client.crt",
		CheckKey: "/etc/xdplb/client.key", CheckTokenFile: "/etc/xdplb/token", CheckServerName: "kubernetes",
		CheckSource: netip.MustParseAddr("10.10.10.97"),
		Inter:       3 * time.Second, FastInter: time.Second, DownInter: 10 * time.Second, Timeout: 1500 * time.Millisecond,
		Rise: 3, Fall: 2, Hook: bpf.HookTC, XDPMode: bpf.XDPAuto, SNATPorts: PortRange{61000, 65535},
		MetricsAddr: ":9716", BPFFS: "/run/bpf", GCInterval: 5 * time.Second, EstablishedTimeout: 2 * time.Hour,
		MaxConns: 50000, MaxConnsPerClient: 2000, LogFormat: LogText,
		SyncPeer: netip.MustParseAddrPort("10.10.10.99:0"), SyncKeyFile: "/etc/xdplb/sync.key", AllDown: AllDownDrop,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("ParseConfig() =\n%+v\nwant\n%+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	if got := cfg.SyncPeerAddr().String(); got != "10.10.10.99:6450" {
		t.Errorf("sync-peer without a port resolves to %s, want the default port 6450", got)
	}
	if got := cfg.ResolvedBackends()[0].Addr.String(); got != "10.10.10.50:443" {
		t.Errorf("backend without a port resolves to %s, want the frontend port 443", got)
	}
	opts := cfg.CheckOptions(netip.MustParseAddr("10.10.10.98"))
	if !opts.SourceIP.Equal(net.IPv4(10, 10, 10, 97)) {
		t.Errorf("CheckOptions().SourceIP = %v, want check-source 10.10.10.97", opts.SourceIP)
	}
	if opts.Path != "/livez" || opts.ExpectStatus != 204 || opts.TokenFile != "/etc/xdplb/token" || opts.ServerName != "kubernetes" {
		t.Errorf("CheckOptions() = %+v does not carry the check keys", opts)
	}
}

func TestParseConfigNullKeepsDefault(t *testing.T) {
	cfg := mustParse(t, guideConfig+"port:\ninter: ~\n")
	if cfg.Port != 6443 || cfg.Inter != 2*time.Second {
		t.Errorf("null port/inter: got %d, %v, want the defaults", cfg.Port, cfg.Inter)
	}
}

func TestParseConfigEmpty(t *testing.T) {
	cfg := mustParse(t, "")
	err := cfg.Validate()
	for _, want := range []string{"iface: required", "vip: required", "backend: none given"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() of an empty file = %v, want it to contain %q", err, want)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // the whole error
	}{
		{"unknown key, with a suggestion", "iface: eth1\nchek: tls\n",
			`line 2: unknown key "chek": did you mean "check"?`},
		{"unknown key, no close one", "iface: eth1\nfrobnicate: 1\n",
			`line 2: unknown key "frobnicate"`},
		{"two unknown keys", "vipp: 10.0.0.1\nifcae: eth1\n",
			"line 1: unknown key \"vipp\": did you mean \"vip\"?\nline 2: unknown key \"ifcae\": did you mean \"iface\"?"},
		{"not YAML", "iface: [eth1\n",
			"not valid YAML: yaml: line 1: did not find expected ',' or ']'"},
		{"a list at the top", "- iface\n",
			"line 1: want a mapping of keys to values at the top, not a seq"},
		{"two documents", "iface: eth1\n---\niface: eth2\n",
			"more than one YAML document: keep one"},
		{"bad vip", "vip: 10.10.10\n",
			`line 1: vip: "10.10.10" is not an IP address`},
		{"vip as a list", "vip: [10.0.0.1]\n",
			"line 1: vip: want a single value, not a list"},
		{"port not a number", "port: https\n",
			`line 1: port: port "https" is not a number`},
		{"port too big", "port: 70000\n",
			"line 1: port: port 70000 out of range 1-65535"},
		{"port 0", "port: 0\n",
			"line 1: port: port 0 out of range 1-65535"},
		{"bad duration", "iface: eth1\ninter: 2\n",
			`line 2: inter: "2" is not a duration: write it like 2s, 500ms or 1m30s`},
		{"bad rise", "rise: two\n",
			`line 1: rise: "two" is not a whole number`},
		{"bad snat-ports", "snat-ports: 61000\n",
			`line 1: snat-ports: port range "61000": want LO-HI, e.g. 61000-65535`},
		{"backends not a list", "backends: 10.10.10.50\n",
			"line 1: backends: want a list, e.g. [server-1=10.10.10.50:6443, server-2=10.10.10.51:6443]"},
		{"backend host name", "backends:\n  - k3s-1:6443\n",
			`line 2: backends[0]: backend "k3s-1:6443": "k3s-1" is not an IP address (names are not resolved: the table must not change with DNS)`},
		{"backend port 0", "backends: [10.10.10.50:0]\n",
			`line 1: backends[0]: backend "10.10.10.50:0": port 0 out of range 1-65535`},
		{"backend port too big", "backends: [10.10.10.50:65536]\n",
			`line 1: backends[0]: backend "10.10.10.50:65536": port 65536 out of range 1-65535`},
		{"backend unknown key", "backends:\n  - {address: 10.10.10.50, wieght: 2}\n",
			`line 2: backends[0]: unknown key "wieght": a backend has name, address and weight`},
		{"backend without address", "backends:\n  - weight: 2\n",
			"line 2: backends[0]: address: required, e.g. {name: server-1, address: 10.10.10.50:6443, weight: 2}"},
		{"backend bad weight", "backends:\n  - {address: 10.10.10.50, weight: -1}\n",
			`line 2: backends[0]: weight "-1": want a whole number, 0 (drained) to 256`},
		{"backend as a list", "backends:\n  - [10.10.10.50]\n",
			"line 2: backends[0]: want ip, ip:port or {name: n, address: ip:port, weight: n}, not a list"},
		{"errors are all reported", "vip: x\nport: y\n",
			"line 1: vip: \"x\" is not an IP address\nline 2: port: port \"y\" is not a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.yaml))
			if got := errString(err); got != tt.want {
				t.Errorf("ParseConfig() error =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestParseConfigAlias(t *testing.T) {
	cfg := mustParse(t, "iface: &nic eth1\nvip: 10.10.10.100\ncheck-server-name: *nic\nbackends: [10.10.10.50]\n")
	if cfg.CheckServerName != "eth1" {
		t.Errorf("alias not followed: check-server-name = %q", cfg.CheckServerName)
	}
}

func TestLoadConfig(t *testing.T) {
	path := writeFile(t, "xdplb.yaml", []byte(guideConfig))
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("LoadConfig() = %v", err)
	}
	if cfg.Iface != "eth1" || len(cfg.Backends) != 3 {
		t.Errorf("LoadConfig() = %+v", cfg)
	}

	missing := filepath.Join(t.TempDir(), "none.yaml")
	if _, err := LoadConfig(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadConfig(missing) = %v, want an error matching fs.ErrNotExist", err)
	}

	bad := writeFile(t, "bad.yaml", []byte("ifcae: eth1\n"))
	_, err = LoadConfig(bad)
	if want := "config " + bad + `: line 1: unknown key "ifcae": did you mean "iface"?`; errString(err) != want {
		t.Errorf("LoadConfig(bad) = %q, want %q", err, want)
	}

	// A configuration that is a device or a FIFO is refused at once: it
	// would grow the daemon without end or block it for ever.
	fifo := filepath.Join(t.TempDir(), "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/zero", fifo} {
		if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("LoadConfig(%s) = %v, want a refusal", p, err)
		}
	}
}

func TestDefaultConfigBPFFSFromEnv(t *testing.T) {
	env := map[string]string{bpf.BPFFSEnv: "/tmp/bpffs-test"}
	if got := defaultConfig(func(k string) string { return env[k] }).BPFFS; got != "/tmp/bpffs-test" {
		t.Errorf("BPFFS = %q, want $XDPLB_BPFFS", got)
	}
	if got := defaultConfig(func(string) string { return "" }).BPFFS; got != bpf.DefaultBPFFS {
		t.Errorf("BPFFS = %q, want %s", got, bpf.DefaultBPFFS)
	}
}

// TestConfigFlagsAfterFile: the command line sets fields after the file;
// the values derived from them must follow.
func TestConfigFlagsAfterFile(t *testing.T) {
	cfg := mustParse(t, guideConfig)
	cfg.Port = 7443         // --port
	cfg.Inter = time.Second // --inter
	b, err := ParseBackend("10.10.10.53")
	if err != nil {
		t.Fatalf("ParseBackend() = %v", err)
	}
	cfg.Backends = append(cfg.Backends, b) // --backend
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	got := cfg.ResolvedBackends()
	if got[0].Addr.String() != "10.10.10.50:7443" || got[1].Addr.String() != "10.10.10.51:6443" || got[3].Addr.String() != "10.10.10.53:7443" {
		t.Errorf("ResolvedBackends() = %v: port-less backends must take the new frontend port, others keep theirs", got)
	}
	if p := cfg.HealthParams(); p.FastInter != time.Second || p.DownInter != time.Second || p.Timeout != time.Second {
		t.Errorf("HealthParams() = %+v: fastinter, downinter and timeout must follow --inter", p)
	}
}

func TestConfigCheckOptionsSource(t *testing.T) {
	cfg := mustParse(t, guideConfig)
	node := netip.MustParseAddr("10.10.10.97")
	if got := cfg.CheckOptions(node).SourceIP; !got.Equal(net.IPv4(10, 10, 10, 97)) {
		t.Errorf("SourceIP = %v, want the node address", got)
	}
	if got := cfg.CheckOptions(netip.Addr{}).SourceIP; got != nil {
		t.Errorf("SourceIP = %v, want nil (kernel's choice) with no address", got)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
		want   string // a substring of the error
	}{
		{"bad instance", func(c *Config) { c.Instance = "Prod LB" }, `instance "Prod LB": want 1-32 characters`},
		{"empty instance", func(c *Config) { c.Instance = "" }, `instance ""`},
		{"long instance", func(c *Config) { c.Instance = strings.Repeat("a", 33) }, "want 1-32 characters"},
		{"missing iface", func(c *Config) { c.Iface = "" }, "iface: required"},
		{"bad iface", func(c *Config) { c.Iface = "eth1/2" }, `iface "eth1/2": not a valid interface name`},
		{"long iface", func(c *Config) { c.Iface = "averyveryverylongname" }, "not a valid interface name"},
		{"missing vip", func(c *Config) { c.VIP = netip.Addr{} }, "vip: required"},
		{"ipv6 vip", func(c *Config) { c.VIP = netip.MustParseAddr("fd00::1") }, "vip fd00::1: not an IPv4 address"},
		{"unspecified vip", func(c *Config) { c.VIP = netip.MustParseAddr("0.0.0.0") }, "vip 0.0.0.0: unspecified address"},
		{"loopback vip", func(c *Config) { c.VIP = netip.MustParseAddr("127.0.0.1") }, "vip 127.0.0.1: loopback address"},
		{"multicast vip", func(c *Config) { c.VIP = netip.MustParseAddr("224.0.0.18") }, "vip 224.0.0.18: multicast address"},
		{"broadcast vip", func(c *Config) { c.VIP = netip.MustParseAddr("255.255.255.255") }, "broadcast address"},
		{"port 0", func(c *Config) { c.Port = 0 }, "port 0: want the frontend TCP port"},
		{"no backends", func(c *Config) { c.Backends = nil }, "backend: none given"},
		{"duplicate backend", func(c *Config) {
			c.Backends = append(c.Backends, BackendSpec{Addr: netip.MustParseAddrPort("10.10.10.51:6443"), Weight: 1})
		}, "backend 10.10.10.51:6443: listed twice"},
		{"duplicate through the default port", func(c *Config) {
			c.Backends = append(c.Backends, BackendSpec{Addr: netip.MustParseAddrPort("10.10.10.50:6443"), Weight: 1})
		}, "backend 10.10.10.50:6443: listed twice"},
		{"backend is the vip", func(c *Config) {
			c.Backends[0].Addr = netip.MustParseAddrPort("10.10.10.100:7443")
		}, "backend 10.10.10.100:7443: is the vip"},
		{"ipv6 backend", func(c *Config) { c.Backends[0].Addr = netip.MustParseAddrPort("[fd00::5]:6443") }, "backend [fd00::5]:6443: not an IPv4 address"},
		{"loopback backend", func(c *Config) { c.Backends[0].Addr = netip.MustParseAddrPort("127.0.0.1:6443") }, "backend 127.0.0.1:6443: loopback address"},
		{"empty backend", func(c *Config) { c.Backends[0] = BackendSpec{} }, "backend: empty address"},
		{"backend port 0 and frontend port 0", func(c *Config) { c.Port = 0 }, "backend 10.10.10.50: port 0"},
		{"weight too big", func(c *Config) { c.Backends[1].Weight = 257 }, "backend 10.10.10.51:6443: weight 257: want 0 (drained) to 256"},
		{"bad check", func(c *Config) { c.Check = "http" }, `check "http": want tcp, tls or https`},
		{"bad check path", func(c *Config) { c.CheckPath = "readyz" }, `check-path "readyz": must start with /`},
		{"bad expect status", func(c *Config) { c.CheckExpectStatus = 42 }, "check-expect-status 42: want an HTTP status"},
		{"cert without key", func(c *Config) { c.CheckCert = "/c.crt" }, "check-cert and check-key: set both"},
		{"key without cert", func(c *Config) { c.CheckKey = "/c.key" }, "check-cert and check-key: set both"},
		{"ca with tcp check", func(c *Config) { c.Check, c.CheckCA = health.CheckTCP, "/ca.crt" }, "check-ca: used by check tls or https only"},
		{"token with tls check", func(c *Config) { c.CheckTokenFile = "/token" }, "check-token-file: used by check https only, and check is tls"},
		{"check source is the vip", func(c *Config) { c.CheckSource = c.VIP }, "check-source 10.10.10.100: is the vip"},
		{"check source ipv6", func(c *Config) { c.CheckSource = netip.MustParseAddr("::1") }, "check-source ::1: not an IPv4 address"},
		{"zero inter", func(c *Config) { c.Inter = 0 }, "inter 0s: want 100ms to 1h"},
		{"inter 1ns", func(c *Config) { c.Inter = time.Nanosecond }, "inter 1ns: want 100ms to 1h"},
		{"inter a day", func(c *Config) { c.Inter = 24 * time.Hour }, "inter 24h0m0s: want 100ms to 1h"},
		{"negative fastinter", func(c *Config) { c.FastInter = -time.Second }, "fastinter -1s: want 100ms to 1h, or leave it unset to follow inter"},
		{"fastinter 1ns", func(c *Config) { c.FastInter = time.Nanosecond }, "fastinter 1ns: want 100ms to 1h"},
		{"negative downinter", func(c *Config) { c.DownInter = -time.Second }, "downinter -1s"},
		{"downinter 1µs", func(c *Config) { c.DownInter = time.Microsecond }, "downinter 1µs: want 100ms to 1h"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "timeout -1s"},
		{"timeout 1ns", func(c *Config) { c.Timeout = time.Nanosecond }, "timeout 1ns: want 10ms to 1m"},
		{"timeout an hour", func(c *Config) { c.Timeout = time.Hour }, "timeout 1h0m0s: want 10ms to 1m"},
		{"rise 0", func(c *Config) { c.Rise = 0 }, "rise 0: want 1 to 100"},
		{"fall 0", func(c *Config) { c.Fall = 0 }, "fall 0: want 1 to 100"},
		{"fall a million", func(c *Config) { c.Fall = 1e6 }, "fall 1000000: want 1 to 100"},
		{"gc-interval 0", func(c *Config) { c.GCInterval = 0 }, "gc-interval 0s: want 1s to 10m"},
		{"gc-interval 1ns", func(c *Config) { c.GCInterval = 1 }, "gc-interval 1ns: want 1s to 10m"},
		{"established-timeout 0", func(c *Config) { c.EstablishedTimeout = 0 }, "established-timeout 0s"},
		{"established-timeout 1ns", func(c *Config) { c.EstablishedTimeout = time.Nanosecond }, "established-timeout 1ns: want 10s to 168h"},
		{"established-timeout a year", func(c *Config) { c.EstablishedTimeout = 365 * 24 * time.Hour }, "want 10s to 168h"},
		{"max-conns too small", func(c *Config) { c.MaxConns = 4 }, "max-conns 4: want 16 to 4194304, or 0 for the default 131072"},
		{"max-conns too large", func(c *Config) { c.MaxConns = 1 << 30 }, "max-conns 1073741824: want 16 to 4194304"},
		{"per-client cap above the table", func(c *Config) { c.MaxConns, c.MaxConnsPerClient = 1000, 1001 },
			"max-conns-per-client 1001: more than the table holds (max-conns 1000): want 0 (no cap) to 1000"},
		{"bad hook", func(c *Config) { c.Hook = "kprobe" }, `hook "kprobe": want xdp or tc`},
		{"bad xdp mode", func(c *Config) { c.XDPMode = "offload" }, `xdp-mode "offload": want auto, native or generic`},
		{"xdp mode with tc", func(c *Config) { c.Hook, c.XDPMode = bpf.HookTC, bpf.XDPNative }, "xdp-mode native: applies to hook xdp only"},
		{"snat lo > hi", func(c *Config) { c.SNATPorts = PortRange{65000, 61000} }, "snat-ports 65000-61000: 65000 is above 61000"},
		{"snat below 1024", func(c *Config) { c.SNATPorts = PortRange{80, 2000} }, "snat-ports 80-2000: starts below 1024"},
		{"snat contains the frontend port", func(c *Config) { c.SNATPorts = PortRange{1024, 65535} },
			"snat-ports 1024-65535: contains the frontend port 6443: a translated flow would look like a new connection to the frontend; pick a range without it, e.g. 6444-65535"},
		{"bad metrics addr", func(c *Config) { c.MetricsAddr = "localhost" }, `metrics-addr "localhost": want ip:port`},
		{"metrics host name", func(c *Config) { c.MetricsAddr = "localhost:9716" }, `metrics-addr "localhost:9716": "localhost" is not an IP address`},
		{"metrics port 0", func(c *Config) { c.MetricsAddr = "127.0.0.1:0" }, `port "0": want 1-65535`},
		{"relative bpffs", func(c *Config) { c.BPFFS = "sys/fs/bpf" }, `bpffs "sys/fs/bpf": want an absolute path`},
		{"sync peer without a key", func(c *Config) { c.SyncPeer = netip.MustParseAddrPort("10.10.10.99:0") },
			"sync-peer: needs sync-key-file, a file holding the pair's shared secret of at least 32 characters"},
		{"sync key without a peer", func(c *Config) { c.SyncKeyFile = "/etc/xdplb/sync.key" }, "sync-key-file: used only with sync-peer"},
		{"sync peer is the vip", func(c *Config) {
			c.SyncPeer, c.SyncKeyFile = netip.MustParseAddrPort("10.10.10.100:0"), "/k"
		}, "sync-peer 10.10.10.100: is the vip: give the other LB's own address"},
		{"sync peer loopback", func(c *Config) { c.SyncPeer, c.SyncKeyFile = netip.MustParseAddrPort("127.0.0.1:6450"), "/k" }, "sync-peer 127.0.0.1: loopback address"},
		{"bad all-down", func(c *Config) { c.AllDown = "reject" }, `all-down "reject": want open`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, guideConfig)
			tt.modify(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v\nwant an error containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigValidateAccepts(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *Config)
	}{
		{"all drained", func(c *Config) {
			for i := range c.Backends {
				c.Backends[i].Weight = 0
			}
		}},
		{"same ip, two ports", func(c *Config) {
			c.Backends = append(c.Backends, BackendSpec{Addr: netip.MustParseAddrPort("10.10.10.50:7443"), Weight: 1})
		}},
		{"another frontend port", func(c *Config) { c.Port = 443 }},
		{"metrics disabled", func(c *Config) { c.MetricsAddr = "" }},
		{"metrics on all addresses", func(c *Config) { c.MetricsAddr = ":9716" }},
		{"snat range just above the frontend port", func(c *Config) { c.SNATPorts = PortRange{6444, 65535} }},
		{"tc hook", func(c *Config) { c.Hook = bpf.HookTC }},
		{"tcp check", func(c *Config) { c.Check = health.CheckTCP }},
		{"https with everything", func(c *Config) {
			c.Check, c.CheckCA, c.CheckCert, c.CheckKey, c.CheckTokenFile = health.CheckHTTPS, "/ca", "/crt", "/key", "/token"
		}},
		{"rise and fall 1", func(c *Config) { c.Rise, c.Fall = 1, 1 }},
		{"the ends of every duration range", func(c *Config) {
			c.Inter, c.FastInter, c.DownInter, c.Timeout = IntervalRange.Min, IntervalRange.Max, IntervalRange.Min, TimeoutRange.Max
			c.GCInterval, c.EstablishedTimeout = GCIntervalRange.Max, IdleTimeoutRange.Min
		}},
		{"a small table with a per-client cap", func(c *Config) { c.MaxConns, c.MaxConnsPerClient = MinMaxConns, MinMaxConns }},
		{"the largest table", func(c *Config) { c.MaxConns = bpf.MaxConnsLimit }},
		{"flow sync", func(c *Config) {
			c.SyncPeer, c.SyncKeyFile = netip.MustParseAddrPort("10.10.10.99:7000"), "/etc/xdplb/sync.key"
		}},
		{"all down: drop", func(c *Config) { c.AllDown = AllDownDrop }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParse(t, guideConfig)
			tt.modify(&cfg)
			if err := cfg.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestConfigValidateReportsEveryError(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rise = 0
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 4 {
		t.Errorf("Validate() gave %d errors, want 4 (iface, vip, backends, rise):\n%v", len(lines), err)
	}
}

func TestParseBackend(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "10.10.10.50", want: "10.10.10.50"},
		{in: "10.10.10.50:6443", want: "10.10.10.50:6443"},
		{in: " 10.10.10.50:443 ", want: "10.10.10.50:443"},
		{in: "::ffff:10.10.10.50", want: "10.10.10.50"},
		{in: "10.10.10.50:", wantErr: `port "" is not a number`},
		{in: "10.10.10.50:x", wantErr: `port "x" is not a number`},
		{in: "10.10.10.50:1:2", wantErr: "want ip or ip:port"},
		{in: "", wantErr: `"" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			b, err := ParseBackend(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseBackend() = %v, %v, want an error containing %q", b, err, tt.wantErr)
				}
				return
			}
			if err != nil || b.String() != tt.want || b.Weight != 1 {
				t.Fatalf("ParseBackend() = %v (weight %d), %v, want %s weight 1", b, b.Weight, err, tt.want)
			}
		})
	}
}

// errString is err's message, "" for nil.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// writeFile writes data to a file named name in a fresh temp dir.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	return path
}

func TestParseSyncPeer(t *testing.T) {
	for in, want := range map[string]string{
		"10.10.10.99": "10.10.10.99:0", " 10.10.10.99:7000 ": "10.10.10.99:7000", "[fd00::2]:6450": "[fd00::2]:6450", "fd00::2": "[fd00::2]:0",
	} {
		got, err := ParseSyncPeer(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseSyncPeer(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"lb-2", "10.10.10.99:0", "10.10.10.99:x", ""} {
		if _, err := ParseSyncPeer(in); err == nil {
			t.Errorf("ParseSyncPeer(%q) accepted", in)
		}
	}
}
