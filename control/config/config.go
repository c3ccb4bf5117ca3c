package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/health"
	flowsync "github.com/xdplb/xdplb/control/sync"
)

// Defaults of the configuration.
const (
	DefaultConfigPath         = "/etc/xdplb/xdplb.yaml"
	DefaultPort               = 6443
	DefaultMetricsAddr        = "127.0.0.1:9716"
	DefaultGCInterval         = 10 * time.Second
	DefaultEstablishedTimeout = time.Hour
	// MaxWeight is HAProxy's highest server weight.
	MaxWeight = 256
)

// Config is the daemon's configuration: DefaultConfig, then the YAML file
// (ParseConfig), then the command line, which sets fields directly. Fields
// whose default depends on others stay zero until used, so that a flag
// changing one still moves the others: see the accessors. Validate checks
// the result.
type Config struct {
	// Instance names this load balancer; its state lives under
	// BPFFS/xdplb/Instance.
	Instance string
	// Iface is the interface the frontend traffic arrives on, e.g. eth1.
	Iface string
	// VIP is the frontend address: a floating VIP or the node's own address.
	VIP netip.Addr
	// Port is the frontend TCP port, and the port of backends given without one.
	Port uint16
	// Backends are the API servers. A zero port means Port.
	Backends []BackendSpec

	// Check is the health check: tcp, tls or https.
	Check health.CheckKind
	// CheckPath and CheckExpectStatus configure the https check.
	CheckPath         string
	CheckExpectStatus int
	// CheckCA, CheckCert and CheckKey are PEM files; CheckTokenFile holds a
	// bearer token; see health.CheckOptions.
	CheckCA, CheckCert, CheckKey, CheckTokenFile string
	// CheckServerName is the TLS server name checks send and verify.
	CheckServerName string
	// CheckSource is the address checks come from; unset: the daemon uses
	// the node's address on Iface. Never the VIP.
	CheckSource netip.Addr

	// HAProxy's check timings. FastInter, DownInter and Timeout zero:
	// equal to Inter.
	Inter, FastInter, DownInter, Timeout time.Duration
	Rise, Fall                           int

	// Hook is where the data plane attaches: xdp, or tc where XDP can't run.
	Hook bpf.Hook
	// XDPMode is auto, native or generic.
	XDPMode bpf.XDPMode
	// SNATPorts are the source ports of translated flows; zero: chosen at
	// start by DefaultSNATPorts.
	SNATPorts PortRange
	// MetricsAddr is the Prometheus listener, "host:port"; empty disables it.
	MetricsAddr string
	// BPFFS is the bpffs mount the state is pinned under.
	BPFFS string
	// GCInterval is how often idle flows are swept from the flow table.
	GCInterval time.Duration
	// EstablishedTimeout is how long an established flow may stay idle
	// before it is swept. API watches are long and quiet, hence an hour.
	EstablishedTimeout time.Duration
	// MaxConns sizes the connection table: established connections it
	// holds (two entries each). 0: bpf.FlowsMax/2. When it is full, new
	// connections are refused with a RST; established ones are never
	// evicted.
	MaxConns uint32
	// MaxConnsPerClient caps the established connections of one client
	// address (0: no cap); the client's next ones are refused with a RST.
	MaxConnsPerClient uint32
	// NoBPFLink attaches through netlink/clsact even where bpf_link exists.
	NoBPFLink bool
	// LogFormat is LogText or LogJSON.
	LogFormat string
	// Verbose logs at debug level, and prints whole verifier logs.
	Verbose bool

	// SyncPeer is the other LB of the pair, its own address on the
	// interface (never the VIP), for flow sync; port 0 means
	// flowsync.DefaultPort. Unset: no flow sync.
	SyncPeer netip.AddrPort
	// SyncKeyFile holds the pair's shared secret (at least
	// flowsync.MinKeyLen characters), read at start.
	SyncKeyFile string
	// AllDown is what new connections get while this node sees no backend
	// up: AllDownOpen (every configured backend, the client reset at once
	// if none takes it) or AllDownDrop.
	AllDown AllDownPolicy
}

// AllDownPolicy is what the data path does when no backend is up.
type AllDownPolicy string

const (
	// AllDownOpen: fail open: new connections go to every configured
	// backend (those that refuse are skipped); when none can take one,
	// the client gets a RST at once.
	AllDownOpen AllDownPolicy = "open"
	// AllDownDrop: new connections are dropped (clients retransmit their
	// SYN until a backend is up again).
	AllDownDrop AllDownPolicy = "drop"
)

// SyncPeerAddr is SyncPeer with its port resolved.
func (c *Config) SyncPeerAddr() netip.AddrPort {
	if c.SyncPeer.IsValid() && c.SyncPeer.Port() == 0 {
		return netip.AddrPortFrom(c.SyncPeer.Addr(), flowsync.DefaultPort)
	}
	return c.SyncPeer
}

// ParseSyncPeer parses "ip" or "ip:port" (IPv6: "[ip]:port").
func ParseSyncPeer(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 0), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want the peer LB's address, ip or ip:port (default port %d)", s, flowsync.DefaultPort)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port 0: give 1-65535 or leave it out for %d", s, flowsync.DefaultPort)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// The ranges a setting must fall in: anything outside is a mistake (an
// interval of 1ns would spin the checks, an idle timeout of 1ns would
// drop every watch), refused with the range in the message.
var (
	IntervalRange    = DurationRange{100 * time.Millisecond, time.Hour}
	TimeoutRange     = DurationRange{10 * time.Millisecond, time.Minute}
	GCIntervalRange  = DurationRange{time.Second, 10 * time.Minute}
	IdleTimeoutRange = DurationRange{10 * time.Second, 7 * 24 * time.Hour}
	// RiseFallMax bounds rise and fall.
	RiseFallMax = 100
	// MinMaxConns is the smallest connection table.
	MinMaxConns = uint32(16)
)

// DurationRange is an inclusive range of durations.
type DurationRange struct{ Min, Max time.Duration }

func (r DurationRange) String() string { return shortDuration(r.Min) + " to " + shortDuration(r.Max) }

// Check reports a duration outside the range, naming the key.
func (r DurationRange) Check(key string, d time.Duration) error {
	if d < r.Min || d > r.Max {
		return fmt.Errorf("%s %v: want %s", key, d, r)
	}
	return nil
}

// shortDuration writes 1h rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// BackendSpec is one backend of the config.
type BackendSpec struct {
	// Name is the operator's name for it (HAProxy's `server NAME ...`),
	// shown in status, flows, logs and metrics; may be empty.
	Name string
	// Addr is the backend's address; port 0 means the frontend port.
	Addr netip.AddrPort
	// Weight is its share of new flows, 0 (drained) to MaxWeight.
	Weight uint32
}

// String returns "ip:port", or "ip" when the port is the frontend's.
func (b BackendSpec) String() string {
	if b.Addr.Port() == 0 {
		return b.Addr.Addr().String()
	}
	return b.Addr.String()
}

// Spec writes the backend as --backend takes it: [name=]ip[:port][,weight=n]
// (the weight left out when it is 1).
func (b BackendSpec) Spec() string {
	s := b.String()
	if b.Name != "" {
		s = b.Name + "=" + s
	}
	if b.Weight != 1 {
		s += ",weight=" + strconv.FormatUint(uint64(b.Weight), 10)
	}
	return s
}

// Label is how logs and status name the backend: "name (ip:port)", or the
// address alone when it has no name.
func (b BackendSpec) Label() string {
	if b.Name == "" {
		return b.String()
	}
	return b.Name + " (" + b.String() + ")"
}

// validName is a backend's name: what HAProxy takes for a server name, and
// safe in a metric label, a log line and a shell completion.
var validName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]{0,62}$`)

// ValidateName checks a backend's name.
func ValidateName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("name %q: want a letter then up to 62 letters, digits, '.', '_' or '-' (e.g. server-1)", name)
	}
	return nil
}

// ParseBackend parses a backend as --backend and a YAML list item give
// it: "[name=]ip[:port][,weight=n]", e.g. "10.10.10.50",
// "server-1=10.10.10.50:6443" or "server-3=10.10.10.52,weight=2". The port
// defaults to the frontend's (0 here), the weight to 1.
func ParseBackend(s string) (BackendSpec, error) {
	s = strings.TrimSpace(s)
	head, rest, _ := strings.Cut(s, ",")
	b := BackendSpec{Weight: 1}
	addr := head
	if name, a, ok := strings.Cut(head, "="); ok {
		if err := ValidateName(name); err != nil {
			return BackendSpec{}, fmt.Errorf("backend %q: %w", s, err)
		}
		b.Name, addr = name, a
	}
	ap, err := parseBackendAddr(addr)
	if err != nil {
		return BackendSpec{}, fmt.Errorf("backend %q: %w", s, err)
	}
	b.Addr = ap
	for rest != "" {
		var opt string
		opt, rest, _ = strings.Cut(rest, ",")
		k, v, _ := strings.Cut(strings.TrimSpace(opt), "=")
		switch k {
		case "weight":
			w, err := parseWeight(v)
			if err != nil {
				return BackendSpec{}, fmt.Errorf("backend %q: %w", s, err)
			}
			b.Weight = w
		default:
			return BackendSpec{}, fmt.Errorf("backend %q: unknown option %q: want [name=]ip[:port][,weight=n]", s, opt)
		}
	}
	return b, nil
}

func parseWeight(v string) (uint32, error) {
	w, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("weight %q: want a whole number, 0 (drained) to %d", v, MaxWeight)
	}
	return uint32(w), nil
}

// parseBackendAddr parses "ip" (port 0: the frontend's) or "ip:port".
func parseBackendAddr(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), 0), nil
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(s, ":") {
			return netip.AddrPort{}, errors.New("want ip or ip:port")
		}
		host = s // no port: report the address
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address (names are not resolved: "+
			"the table must not change with DNS)", host)
	}
	port, err := parsePort(portStr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip.Unmap(), port), nil
}

// DefaultConfig returns the configuration before the file and the flags,
// with the bpffs from $XDPLB_BPFFS if set.
func DefaultConfig() Config {
	return defaultConfig(os.Getenv)
}

// DefaultConfigFrom is DefaultConfig with the environment read through getenv.
func DefaultConfigFrom(getenv func(string) string) Config { return defaultConfig(getenv) }

func defaultConfig(getenv func(string) string) Config {
	bpffs := bpf.DefaultBPFFS
	if v := getenv(bpf.BPFFSEnv); v != "" {
		bpffs = v
	}
	return Config{
		Instance:           bpf.DefaultInstance,
		Port:               DefaultPort,
		Check:              health.CheckTLS,
		CheckPath:          health.DefaultCheckPath,
		CheckExpectStatus:  health.DefaultCheckStatus,
		Inter:              health.DefaultInter,
		Rise:               health.DefaultRise,
		Fall:               health.DefaultFall,
		Hook:               bpf.HookXDP,
		XDPMode:            bpf.XDPAuto,
		MetricsAddr:        DefaultMetricsAddr,
		BPFFS:              bpffs,
		GCInterval:         DefaultGCInterval,
		EstablishedTimeout: DefaultEstablishedTimeout,
		LogFormat:          LogText,
		AllDown:            AllDownOpen,
	}
}

// ResolvedBackends returns the backends with the frontend port filled in
// where none was given.
func (c *Config) ResolvedBackends() []BackendSpec {
	out := make([]BackendSpec, len(c.Backends))
	for i, b := range c.Backends {
		out[i] = c.resolve(b)
	}
	return out
}

func (c *Config) resolve(b BackendSpec) BackendSpec {
	if b.Addr.Port() == 0 {
		b.Addr = netip.AddrPortFrom(b.Addr.Addr(), c.Port)
	}
	return b
}

// health.Params returns the check timings, HAProxy's defaults applied.
func (c *Config) HealthParams() health.Params {
	return health.Params{
		Inter: c.Inter, FastInter: c.FastInter, DownInter: c.DownInter, Timeout: c.Timeout,
		Rise: c.Rise, Fall: c.Fall,
	}.WithDefaults()
}

// health.CheckOptions returns the checker options, with checks sent from source
// (CheckSource if set, else the node's address the daemon found on Iface).
func (c *Config) CheckOptions(source netip.Addr) health.CheckOptions {
	if c.CheckSource.IsValid() {
		source = c.CheckSource
	}
	var ip net.IP
	if source.IsValid() {
		ip = net.IP(source.AsSlice())
	}
	return health.CheckOptions{
		SourceIP: ip, CAFile: c.CheckCA, ServerName: c.CheckServerName,
		CertFile: c.CheckCert, KeyFile: c.CheckKey, TokenFile: c.CheckTokenFile,
		Path: c.CheckPath, ExpectStatus: c.CheckExpectStatus,
	}
}

// Validate reports every setting that cannot work, each error naming the
// key and what to do. It changes nothing.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if err := bpf.ValidateInstance(c.Instance); err != nil {
		errs = append(errs, err)
	}
	switch {
	case c.Iface == "":
		add("iface: required: the interface the frontend traffic arrives on, e.g. eth1")
	case len(c.Iface) > 15 || strings.ContainsAny(c.Iface, "/ \t\n:"):
		add("iface %q: not a valid interface name", c.Iface)
	}
	if !c.VIP.IsValid() {
		add("vip: required: the frontend IPv4 address, a floating VIP or this node's own address")
	} else if err := checkUnicastIPv4(c.VIP); err != nil {
		add("vip %s: %w", c.VIP, err)
	}
	if c.Port == 0 {
		add("port 0: want the frontend TCP port, 1-65535 (default %d)", DefaultPort)
	}
	errs = append(errs, c.validateBackends()...)
	errs = append(errs, c.validateCheck()...)
	errs = append(errs, c.validateTimings()...)

	switch c.Hook {
	case bpf.HookXDP, bpf.HookTC:
	default:
		add("hook %q: want xdp or tc", c.Hook)
	}
	switch c.XDPMode {
	case bpf.XDPAuto, bpf.XDPNative, bpf.XDPGeneric:
		if c.Hook == bpf.HookTC && c.XDPMode != bpf.XDPAuto {
			add("xdp-mode %s: applies to hook xdp only; remove it or set hook: xdp", c.XDPMode)
		}
	default:
		add("xdp-mode %q: want auto, native or generic", c.XDPMode)
	}
	if err := c.validateSNATPorts(); err != nil {
		errs = append(errs, err)
	}
	if err := validateListenAddr(c.MetricsAddr); err != nil {
		add("metrics-addr %q: %w", c.MetricsAddr, err)
	}
	if !filepath.IsAbs(c.BPFFS) {
		add("bpffs %q: want an absolute path to a bpffs mount, e.g. %s", c.BPFFS, bpf.DefaultBPFFS)
	}
	if s, _ := Lookup("log-format"); s.checkChoice(c.LogFormat) != nil {
		errs = append(errs, s.checkChoice(c.LogFormat))
	}
	errs = append(errs, c.validateSync()...)
	switch c.AllDown {
	case AllDownOpen, AllDownDrop:
	default:
		add("all-down %q: want open (new connections try every configured backend; a RST when none takes them) or drop", c.AllDown)
	}
	return errors.Join(errs...)
}

// validateSync checks the flow sync settings; the key file itself is read
// by the daemon at start, before it touches the kernel.
func (c *Config) validateSync() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case c.SyncPeer.IsValid():
		if err := checkUnicastIPv4(c.SyncPeer.Addr()); err != nil {
			add("sync-peer %s: %w", c.SyncPeer.Addr(), err)
		} else if c.SyncPeer.Addr().Unmap() == c.VIP.Unmap() {
			add("sync-peer %s: is the vip: give the other LB's own address on %s (e.g. 10.10.10.99)", c.SyncPeer.Addr(), c.Iface)
		}
		if c.SyncKeyFile == "" {
			add("sync-peer: needs sync-key-file, a file holding the pair's shared secret of at least %d characters (e.g. `openssl rand -hex 32`), the same on both LBs", flowsync.MinKeyLen)
		}
	case c.SyncKeyFile != "":
		add("sync-key-file: used only with sync-peer (the other LB's address): set both or neither")
	}
	return errs
}

func (c *Config) validateBackends() []error {
	if len(c.Backends) == 0 {
		return []error{errors.New("backend: none given: list the API servers (--backend, or backends: in the file), e.g. server-1=10.10.10.50:6443")}
	}
	var errs []error
	seen := map[netip.AddrPort]bool{}
	names := map[string]bool{}
	for _, b := range c.Backends {
		r := c.resolve(b)
		switch {
		case !b.Addr.Addr().IsValid():
			errs = append(errs, errors.New("backend: empty address"))
			continue
		case checkUnicastIPv4(b.Addr.Addr()) != nil:
			errs = append(errs, fmt.Errorf("backend %s: %w", b, checkUnicastIPv4(b.Addr.Addr())))
		case c.VIP.IsValid() && b.Addr.Addr().Unmap() == c.VIP.Unmap():
			errs = append(errs, fmt.Errorf("backend %s: is the vip: the frontend cannot forward to itself", b))
		case r.Addr.Port() == 0:
			errs = append(errs, fmt.Errorf("backend %s: port 0: give ip:port or a frontend port", b))
		}
		if b.Weight > MaxWeight {
			errs = append(errs, fmt.Errorf("backend %s: weight %d: want 0 (drained) to %d", b, b.Weight, MaxWeight))
		}
		if seen[r.Addr] {
			errs = append(errs, fmt.Errorf("backend %s: listed twice", r.Addr))
		}
		seen[r.Addr] = true
		if b.Name != "" {
			if err := ValidateName(b.Name); err != nil {
				errs = append(errs, fmt.Errorf("backend %s: %w", b, err))
			} else if names[b.Name] {
				errs = append(errs, fmt.Errorf("backend %s: name %q given twice: names must be unique", b, b.Name))
			}
			names[b.Name] = true
		}
	}
	return errs
}

func (c *Config) validateCheck() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Check {
	case health.CheckTCP, health.CheckTLS, health.CheckHTTPS:
	default:
		add("check %q: want tcp, tls or https", c.Check)
	}
	if !strings.HasPrefix(c.CheckPath, "/") {
		add("check-path %q: must start with /, e.g. %s", c.CheckPath, health.DefaultCheckPath)
	}
	if c.CheckExpectStatus < 100 || c.CheckExpectStatus > 599 {
		add("check-expect-status %d: want an HTTP status, 100-599", c.CheckExpectStatus)
	}
	if (c.CheckCert == "") != (c.CheckKey == "") {
		add("check-cert and check-key: set both (the client certificate and its key) or neither")
	}
	if c.Check == health.CheckTCP {
		for _, f := range []struct{ key, value string }{
			{"check-ca", c.CheckCA}, {"check-cert", c.CheckCert}, {"check-key", c.CheckKey},
			{"check-server-name", c.CheckServerName},
		} {
			if f.value != "" {
				add("%s: used by check tls or https only, and check is tcp", f.key)
			}
		}
	}
	if c.CheckTokenFile != "" && c.Check != health.CheckHTTPS {
		add("check-token-file: used by check https only, and check is %s", c.Check)
	}
	if c.CheckSource.IsValid() {
		if err := checkUnicastIPv4(c.CheckSource); err != nil {
			add("check-source %s: %w", c.CheckSource, err)
		} else if c.CheckSource.Unmap() == c.VIP.Unmap() {
			add("check-source %s: is the vip: checks must come from the node's own address, "+
				"since only one LB holds the vip", c.CheckSource)
		}
	}
	return errs
}

func (c *Config) validateTimings() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	try := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	try(IntervalRange.Check("inter", c.Inter))
	for _, d := range []struct {
		key   string
		value time.Duration
		r     DurationRange
	}{{"fastinter", c.FastInter, IntervalRange}, {"downinter", c.DownInter, IntervalRange}, {"check-timeout", c.Timeout, TimeoutRange}} {
		if d.value == 0 {
			continue // unset: follows inter
		}
		if err := d.r.Check(d.key, d.value); err != nil {
			add("%w, or leave it unset to follow inter", err)
		}
	}
	if c.Rise < 1 || c.Rise > RiseFallMax {
		add("rise %d: want 1 to %d (default %d)", c.Rise, RiseFallMax, health.DefaultRise)
	}
	if c.Fall < 1 || c.Fall > RiseFallMax {
		add("fall %d: want 1 to %d (default %d)", c.Fall, RiseFallMax, health.DefaultFall)
	}
	try(GCIntervalRange.Check("gc-interval", c.GCInterval))
	try(IdleTimeoutRange.Check("established-timeout", c.EstablishedTimeout))
	if c.MaxConns != 0 && (c.MaxConns < MinMaxConns || c.MaxConns > bpf.MaxConnsLimit) {
		add("max-conns %d: want %d to %d, or 0 for the default %d", c.MaxConns, MinMaxConns, bpf.MaxConnsLimit, bpf.FlowsMax/2)
	}
	if c.MaxConnsPerClient > c.TableConns() {
		add("max-conns-per-client %d: more than the table holds (max-conns %d): want 0 (no cap) to %d", c.MaxConnsPerClient, c.TableConns(), c.TableConns())
	}
	return errs
}

// TableConns is how many established connections the table holds.
func (c *Config) TableConns() uint32 {
	if c.MaxConns == 0 {
		return bpf.FlowsMax / 2
	}
	return c.MaxConns
}

// validateSNATPorts checks a configured range against the frontend port;
// against the kernel's ephemeral range, see ValidateSNATAgainstKernel.
func (c *Config) validateSNATPorts() error {
	r := c.SNATPorts
	switch {
	case r.IsZero():
		return nil
	case r.Lo > r.Hi:
		return fmt.Errorf("snat-ports %s: %d is above %d: write the lower port first", r, r.Lo, r.Hi)
	case r.Lo < minSNATPort:
		return fmt.Errorf("snat-ports %s: starts below %d: keep translated flows off the well-known ports", r, minSNATPort)
	case r.Contains(c.Port):
		return fmt.Errorf("snat-ports %s: contains the frontend port %d: a translated flow would look like a new "+
			"connection to the frontend; pick a range without it, e.g. %s", r, c.Port, DefaultSNATPorts(c.Port, false, PortRange{}))
	}
	return nil
}

// checkUnicastIPv4 accepts the addresses a frontend, a backend or a check
// source can have.
func checkUnicastIPv4(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case !a.Is4():
		return errors.New("not an IPv4 address: xdplb balances IPv4")
	case a.IsUnspecified():
		return errors.New("unspecified address")
	case a.IsLoopback():
		return errors.New("loopback address: traffic to it never reaches the interface")
	case a.IsMulticast():
		return errors.New("multicast address")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("broadcast address")
	}
	return nil
}

// validateListenAddr accepts "", "host:port" with an IP literal host, and
// ":port".
func validateListenAddr(s string) error {
	if s == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want ip:port, e.g. " + DefaultMetricsAddr + ", or empty to disable")
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q is not an IP address", host)
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	return nil
}
