package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/health"
	flowsync "github.com/xdplb/xdplb/control/sync"
)

// The settings table: every setting of xdplb once, with the one name that
// is both its command-line flag (--name) and its YAML key (name:), what it
// means, its default as help shows it, how its value is written, and
// whether a reload may change it. The flags of `xdplb run` and `xdplb
// config check`, the YAML parser, the help text, the man page, shell
// completion, `config check`'s output and the reload's diff all come from
// it; TestSettingsTable walks it.

// Reload says what a reload does with a changed setting.
type Reload int

const (
	// Live: a reload applies it at once; no flow is touched.
	Live Reload = iota
	// Restart: it is compiled into the program, sizes its maps, names the
	// instance or opens a listener. A reload that changes it is refused;
	// a restart applies it, and a restart keeps every connection.
	Restart
)

func (r Reload) String() string {
	if r == Live {
		return "live"
	}
	return "restart"
}

// Group is the part of xdplb a setting belongs to, for help and docs.
type Group string

// The groups, in the order help lists them.
const (
	GroupFrontend Group = "frontend"
	GroupCheck    Group = "health checks"
	GroupDataPath Group = "data path"
	GroupHA       Group = "high availability"
	GroupDaemon   Group = "daemon"
)

// Groups lists the groups in order.
var Groups = []Group{GroupFrontend, GroupCheck, GroupDataPath, GroupHA, GroupDaemon}

// Alias is another YAML spelling of a setting.
type Alias struct {
	Key string
	// Deprecated: accepted with a warning naming the key to write
	// instead. Otherwise a plain synonym (backends for backend).
	Deprecated bool
}

// Setting is one row of the table.
type Setting struct {
	// Key is the flag's name and the YAML key.
	Key string
	// Aliases are other YAML spellings.
	Aliases []Alias
	// Type names the value in help: ip, port, duration, LO-HI, ...
	Type string
	// Default is the default as help shows it: the value itself, or
	// (Derived) the rule that gives it.
	Default string
	// Derived: Default is a rule over other settings (Effective shows
	// the value it gives).
	Derived bool
	// Usage is the help text.
	Usage string
	// Choices are the values it accepts, when they are a short list.
	Choices []string
	// List: the flag repeats (each one adds an item) and the YAML value
	// is a list; a flag replaces the file's whole list.
	List bool
	// Bool: a flag without a value means true.
	Bool  bool
	Group Group
	// Reload says whether a reload may change it.
	Reload Reload
	// Why says, for a Restart setting, why a reload cannot apply it.
	Why string

	// parse sets the value from its text (a flag, a YAML scalar); for a
	// List it adds one item.
	parse func(c *Config, s string) error
	// clear empties a List before its items are added.
	clear func(c *Config)
	// value is the setting's value in c, for display and comparison
	// (defaults and derivations applied).
	value func(c *Config) any
	// isSet says whether c sets it, for a Derived setting (unset: the
	// rule applies).
	isSet func(c *Config) bool
}

// Parse sets the setting in c from text, as a flag or a YAML scalar gives
// it. The error does not name the key: the caller does (--key, line N: key).
func (s *Setting) Parse(c *Config, text string) error { return s.parse(c, text) }

// Clear empties a List setting, before a flag's items replace the file's.
func (s *Setting) Clear(c *Config) {
	if s.clear != nil {
		s.clear(c)
	}
}

// Value is the setting's effective value in c: a string, a number, a bool,
// or for backend a list of BackendSpec.
func (s *Setting) Value(c *Config) any { return s.value(c) }

// Text is the setting's effective value as one line of text (lists: one
// item a line is Effective's job; here they are joined by ", ").
func (s *Setting) Text(c *Config) string { return valueText(s.value(c)) }

// Defaulted says whether the value comes from a Derived rule (the setting
// is not set).
func (s *Setting) Defaulted(c *Config) bool { return s.Derived && s.isSet != nil && !s.isSet(c) }

func valueText(v any) string {
	switch v := v.(type) {
	case []BackendSpec:
		parts := make([]string, len(v))
		for i, b := range v {
			parts[i] = b.Spec()
		}
		return strings.Join(parts, ", ")
	case time.Duration:
		return shortDuration(v)
	}
	return fmt.Sprint(v)
}

// Settings is the table, in the order help lists it.
var Settings = []*Setting{
	// Frontend and instance.
	{Key: "instance", Type: "name", Default: bpf.DefaultInstance, Group: GroupFrontend, Reload: Restart,
		Why:   "it names the instance: another name is another load balancer",
		Usage: "instance name: state under <bpffs>/xdplb/NAME, control socket /run/xdplb/NAME.sock",
		parse: func(c *Config, s string) error { c.Instance = s; return nil },
		value: func(c *Config) any { return c.Instance }},
	{Key: "bpffs", Type: "path", Default: bpf.DefaultBPFFS, Group: GroupFrontend, Reload: Restart,
		Why:   "the instance's pinned state lives there",
		Usage: "bpffs mount the instance is pinned under ($" + bpf.BPFFSEnv + " changes the default)",
		parse: func(c *Config, s string) error { c.BPFFS = s; return nil },
		value: func(c *Config) any { return c.BPFFS }},
	{Key: "iface", Type: "name", Group: GroupFrontend, Reload: Restart,
		Why:   "the program is attached to it",
		Usage: "interface the frontend traffic arrives on, e.g. eth1",
		parse: func(c *Config, s string) error { c.Iface = s; return nil },
		value: func(c *Config) any { return c.Iface }},
	{Key: "vip", Type: "ip", Group: GroupFrontend, Reload: Restart,
		Why:   "the frontend address is compiled into the program",
		Usage: "frontend address: the VRRP VIP, or this node's own address",
		parse: func(c *Config, s string) error { return parseAddr(s, &c.VIP) },
		value: func(c *Config) any { return addrText(c.VIP) }},
	{Key: "port", Type: "port", Default: strconv.Itoa(DefaultPort), Group: GroupFrontend, Reload: Restart,
		Why:   "the frontend port is compiled into the program",
		Usage: "frontend TCP port, and the port of backends given without one",
		parse: func(c *Config, s string) error {
			p, err := parsePort(s)
			c.Port = p
			return err
		},
		value: func(c *Config) any { return int(c.Port) }},
	{Key: "backend", Aliases: []Alias{{Key: "backends"}}, Type: "[name=]ip[:port][,weight=n]", List: true, Group: GroupFrontend, Reload: Live,
		Usage: "an API server (repeat for each); the port defaults to --port, the weight to 1 (0: drained). " +
			"YAML: a list of the same strings or of {name, address, weight}",
		parse: func(c *Config, s string) error {
			b, err := ParseBackend(s)
			if err == nil {
				c.Backends = append(c.Backends, b)
			}
			return err
		},
		clear: func(c *Config) { c.Backends = nil },
		value: func(c *Config) any { return c.ResolvedBackends() }},

	// Health checks.
	{Key: "check", Type: "kind", Default: string(health.CheckTLS), Choices: []string{string(health.CheckTCP), string(health.CheckTLS), string(health.CheckHTTPS)},
		Group: GroupCheck, Reload: Live,
		Usage: "health check: tcp connect, tls handshake (a hung API server accepts TCP but never finishes TLS), or https GET of check-path",
		parse: func(c *Config, s string) error { c.Check = health.CheckKind(s); return nil },
		value: func(c *Config) any { return string(c.Check) }},
	{Key: "check-path", Type: "path", Default: health.DefaultCheckPath, Group: GroupCheck, Reload: Live,
		Usage: "https check: the path to GET (K3s answers 401 to anonymous requests: give check-token-file or check-cert)",
		parse: func(c *Config, s string) error { c.CheckPath = s; return nil },
		value: func(c *Config) any { return c.CheckPath }},
	{Key: "check-expect-status", Type: "status", Default: strconv.Itoa(health.DefaultCheckStatus), Group: GroupCheck, Reload: Live,
		Usage: "https check: the HTTP status that means healthy",
		parse: func(c *Config, s string) error { return parseInt(s, &c.CheckExpectStatus) },
		value: func(c *Config) any { return c.CheckExpectStatus }},
	{Key: "check-ca", Type: "file", Group: GroupCheck, Reload: Live,
		Usage: "tls/https checks: PEM CA to verify the servers with (unset: not verified)",
		parse: func(c *Config, s string) error { c.CheckCA = s; return nil },
		value: func(c *Config) any { return c.CheckCA }},
	{Key: "check-cert", Type: "file", Group: GroupCheck, Reload: Live,
		Usage: "tls/https checks: PEM client certificate (with check-key)",
		parse: func(c *Config, s string) error { c.CheckCert = s; return nil },
		value: func(c *Config) any { return c.CheckCert }},
	{Key: "check-key", Type: "file", Group: GroupCheck, Reload: Live,
		Usage: "tls/https checks: PEM key of check-cert",
		parse: func(c *Config, s string) error { c.CheckKey = s; return nil },
		value: func(c *Config) any { return c.CheckKey }},
	{Key: "check-token-file", Type: "file", Group: GroupCheck, Reload: Live,
		Usage: "https check: file holding a bearer token (read again at every check)",
		parse: func(c *Config, s string) error { c.CheckTokenFile = s; return nil },
		value: func(c *Config) any { return c.CheckTokenFile }},
	{Key: "check-server-name", Type: "name", Group: GroupCheck, Reload: Live,
		Usage: "tls/https checks: the server name sent and verified (unset: the backend's address)",
		parse: func(c *Config, s string) error { c.CheckServerName = s; return nil },
		value: func(c *Config) any { return c.CheckServerName }},
	{Key: "check-source", Type: "ip", Default: "the node's address on iface", Derived: true, Group: GroupCheck, Reload: Live,
		Usage: "address health checks are sent from (never the VIP)",
		parse: func(c *Config, s string) error { return parseAddr(s, &c.CheckSource) },
		value: func(c *Config) any { return addrText(c.CheckSource) },
		isSet: func(c *Config) bool { return c.CheckSource.IsValid() }},
	{Key: "inter", Type: "duration", Default: shortDuration(health.DefaultInter), Group: GroupCheck, Reload: Live,
		Usage: "HAProxy inter: check interval while up, start to start; " + IntervalRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.Inter) },
		value: func(c *Config) any { return c.Inter }},
	{Key: "fastinter", Type: "duration", Default: "inter", Derived: true, Group: GroupCheck, Reload: Live,
		Usage: "HAProxy fastinter: check interval while a change of state is being counted; " + IntervalRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.FastInter) },
		value: func(c *Config) any { return c.HealthParams().FastInter },
		isSet: func(c *Config) bool { return c.FastInter != 0 }},
	{Key: "downinter", Type: "duration", Default: "inter", Derived: true, Group: GroupCheck, Reload: Live,
		Usage: "HAProxy downinter: check interval while down; " + IntervalRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.DownInter) },
		value: func(c *Config) any { return c.HealthParams().DownInter },
		isSet: func(c *Config) bool { return c.DownInter != 0 }},
	{Key: "check-timeout", Aliases: []Alias{{Key: "timeout", Deprecated: true}}, Type: "duration",
		Default: "min(inter, " + shortDuration(health.DefaultMaxTimeout) + ")", Derived: true, Group: GroupCheck, Reload: Live,
		Usage: "time one check may take, so a dead server is down within fall × inter + timeout; " + TimeoutRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.Timeout) },
		value: func(c *Config) any { return c.HealthParams().Timeout },
		isSet: func(c *Config) bool { return c.Timeout != 0 }},
	{Key: "rise", Type: "n", Default: strconv.Itoa(health.DefaultRise), Group: GroupCheck, Reload: Live,
		Usage: "consecutive successful checks that bring a backend up; 1 to " + strconv.Itoa(RiseFallMax),
		parse: func(c *Config, s string) error { return parseInt(s, &c.Rise) },
		value: func(c *Config) any { return c.Rise }},
	{Key: "fall", Type: "n", Default: strconv.Itoa(health.DefaultFall), Group: GroupCheck, Reload: Live,
		Usage: "consecutive failed checks that take a backend down; 1 to " + strconv.Itoa(RiseFallMax),
		parse: func(c *Config, s string) error { return parseInt(s, &c.Fall) },
		value: func(c *Config) any { return c.Fall }},

	// Data path.
	{Key: "hook", Type: "hook", Default: string(bpf.HookXDP), Choices: []string{string(bpf.HookXDP), string(bpf.HookTC)},
		Group: GroupDataPath, Reload: Restart, Why: "another hook is another program",
		Usage: "where the data path runs: xdp, or tc (clsact/tcx ingress) where XDP cannot run",
		parse: func(c *Config, s string) error { c.Hook = bpf.Hook(s); return nil },
		value: func(c *Config) any { return string(c.Hook) }},
	{Key: "xdp-mode", Type: "mode", Default: string(bpf.XDPAuto), Choices: []string{string(bpf.XDPAuto), string(bpf.XDPNative), string(bpf.XDPGeneric)},
		Group: GroupDataPath, Reload: Restart, Why: "the program is attached in its mode",
		Usage: "XDP mode: native, generic, or auto (native where the interface forwards with it, else generic; says why at start)",
		parse: func(c *Config, s string) error { c.XDPMode = bpf.XDPMode(s); return nil },
		value: func(c *Config) any { return string(c.XDPMode) }},
	{Key: "snat-ports", Type: "LO-HI", Default: "6444-65535 for a VIP, 61000-65535 for the node's own address", Derived: true,
		Group: GroupDataPath, Reload: Restart, Why: "the SNAT range is compiled into the program",
		Usage: "source ports of translated connections: also how many connections each server can take",
		parse: func(c *Config, s string) error {
			r, err := ParsePortRange(s)
			c.SNATPorts = r
			return err
		},
		value: func(c *Config) any {
			if c.SNATPorts.IsZero() {
				return "auto"
			}
			return c.SNATPorts.String()
		},
		isSet: func(c *Config) bool { return !c.SNATPorts.IsZero() }},
	{Key: "max-conns", Type: "n", Default: strconv.Itoa(int(bpf.FlowsMax / 2)), Group: GroupDataPath, Reload: Restart,
		Why:   "it sizes the pinned connection table (changing it needs `xdplb detach`, which drops connections)",
		Usage: fmt.Sprintf("connections the connection table holds, %d to %d; when full, new ones get a RST (established ones are never evicted)", MinMaxConns, bpf.MaxConnsLimit),
		parse: func(c *Config, s string) error { return parseUint32(s, &c.MaxConns) },
		value: func(c *Config) any { return int(c.TableConns()) }},
	{Key: "max-conns-per-client", Type: "n", Default: "0", Group: GroupDataPath, Reload: Restart,
		Why:   "the limit is compiled into the program",
		Usage: "established connections one client address may hold (0: no cap); its next ones get a RST",
		parse: func(c *Config, s string) error { return parseUint32(s, &c.MaxConnsPerClient) },
		value: func(c *Config) any { return int(c.MaxConnsPerClient) }},
	{Key: "established-timeout", Type: "duration", Default: shortDuration(DefaultEstablishedTimeout), Group: GroupDataPath, Reload: Restart,
		Why:   "the timeout is compiled into the program",
		Usage: "idle timeout of an established connection (K3s watches sit idle for minutes); " + IdleTimeoutRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.EstablishedTimeout) },
		value: func(c *Config) any { return c.EstablishedTimeout }},
	{Key: "gc-interval", Type: "duration", Default: shortDuration(DefaultGCInterval), Group: GroupDataPath, Reload: Live,
		Usage: "how often ended and idle connections are swept from the tables (sooner while the table is under pressure); " + GCIntervalRange.String(),
		parse: func(c *Config, s string) error { return parseDuration(s, &c.GCInterval) },
		value: func(c *Config) any { return c.GCInterval }},
	{Key: "no-bpf-link", Type: "bool", Bool: true, Default: "false", Group: GroupDataPath, Reload: Restart,
		Why:   "the program is attached at start",
		Usage: "attach through netlink (XDP) or clsact (TC) even where the kernel has bpf_link",
		parse: func(c *Config, s string) error { return parseBool(s, &c.NoBPFLink) },
		value: func(c *Config) any { return c.NoBPFLink }},

	// High availability.
	{Key: "sync-peer", Type: "ip[:port]", Group: GroupHA, Reload: Restart,
		Why:   "the sync session with the peer is set up at start",
		Usage: fmt.Sprintf("the other LB's own address (never the VIP), port %d by default: stream flows to it so connections survive a failover (with sync-key-file)", flowsync.DefaultPort),
		parse: func(c *Config, s string) error {
			if strings.TrimSpace(s) == "" {
				c.SyncPeer = netip.AddrPort{}
				return nil
			}
			ap, err := ParseSyncPeer(s)
			c.SyncPeer = ap
			return err
		},
		value: func(c *Config) any {
			if !c.SyncPeer.IsValid() {
				return ""
			}
			return c.SyncPeerAddr().String()
		}},
	{Key: "sync-key-file", Type: "file", Group: GroupHA, Reload: Restart,
		Why:   "the key is read at start",
		Usage: fmt.Sprintf("file with the pair's shared secret for flow sync, at least %d characters, the same on both LBs (e.g. openssl rand -hex 32)", flowsync.MinKeyLen),
		parse: func(c *Config, s string) error { c.SyncKeyFile = s; return nil },
		value: func(c *Config) any { return c.SyncKeyFile }},
	{Key: "all-down", Type: "policy", Default: string(AllDownOpen), Choices: []string{string(AllDownOpen), string(AllDownDrop)},
		Group: GroupHA, Reload: Restart, Why: "the policy is compiled into the program",
		Usage: "new connections while no backend is up: open (try every configured backend; a RST when none takes them) or drop",
		parse: func(c *Config, s string) error { c.AllDown = AllDownPolicy(s); return nil },
		value: func(c *Config) any { return string(c.AllDown) }},

	// Daemon.
	{Key: "metrics-addr", Type: "ip:port", Default: DefaultMetricsAddr, Group: GroupDaemon, Reload: Restart,
		Why:   "the listener is opened at start",
		Usage: "Prometheus metrics listener; empty: none",
		parse: func(c *Config, s string) error { c.MetricsAddr = s; return nil },
		value: func(c *Config) any { return c.MetricsAddr }},
	{Key: "log-format", Type: "format", Default: LogText, Choices: []string{LogText, LogJSON}, Group: GroupDaemon, Reload: Restart,
		Why:   "the log is set up at start",
		Usage: "log lines as text (key=value) or json; under systemd (JOURNAL_STREAM) without timestamps and with a <priority> prefix for journalctl -p",
		parse: func(c *Config, s string) error { c.LogFormat = s; return nil },
		value: func(c *Config) any { return c.LogFormat }},
	{Key: "verbose", Type: "bool", Bool: true, Default: "false", Group: GroupDaemon, Reload: Live,
		Usage: "debug logs, and whole verifier logs when a program is refused",
		parse: func(c *Config, s string) error { return parseBool(s, &c.Verbose) },
		value: func(c *Config) any { return c.Verbose }},
}

// Log formats.
const (
	LogText = "text"
	LogJSON = "json"
)

// Lookup finds a setting by its key.
func Lookup(key string) (*Setting, bool) {
	for _, s := range Settings {
		if s.Key == key {
			return s, true
		}
	}
	return nil, false
}

// lookupYAML finds a setting by a key written in the file: its own key or
// an alias. alias is set when the key is an alias.
func lookupYAML(key string) (s *Setting, alias *Alias) {
	for _, s := range Settings {
		if s.Key == key {
			return s, nil
		}
		for i := range s.Aliases {
			if s.Aliases[i].Key == key {
				return s, &s.Aliases[i]
			}
		}
	}
	return nil, nil
}

// allKeys are every key and alias, for suggestions.
func allKeys() []string {
	var keys []string
	for _, s := range Settings {
		keys = append(keys, s.Key)
		for _, a := range s.Aliases {
			keys = append(keys, a.Key)
		}
	}
	return keys
}

// Change is one setting that differs between two configurations.
type Change struct {
	Key      string `json:"key"`
	Old      string `json:"old"`
	New      string `json:"new"`
	Reload   Reload `json:"-"`
	Why      string `json:"-"`
	Restarts bool   `json:"needs_restart,omitempty"`
}

func (c Change) String() string {
	return fmt.Sprintf("%s: %s -> %s", c.Key, quoteEmpty(c.Old), quoteEmpty(c.New))
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// Changes lists the settings whose effective value differs between old
// and new, in table order.
func Changes(old, new *Config) []Change {
	var out []Change
	for _, s := range Settings {
		o, n := s.Text(old), s.Text(new)
		if o == n {
			continue
		}
		out = append(out, Change{Key: s.Key, Old: o, New: n, Reload: s.Reload, Why: s.Why, Restarts: s.Reload == Restart})
	}
	return out
}

// RestartError is a reload refused because a setting that only a restart
// applies changed.
type RestartError struct{ Changes []Change }

func (e *RestartError) Error() string {
	parts := make([]string, len(e.Changes))
	for i, c := range e.Changes {
		parts[i] = c.String() + " (" + c.Why + ")"
	}
	return "reload refused, nothing changed: " + strings.Join(parts, "; ") +
		": restart to apply (systemctl restart xdplb: the new daemon takes over the pinned connection table, no connection is lost)"
}

// PlanReload decides whether a reload from old to new can be applied
// live. It returns the changes, or a *RestartError naming those that need
// a restart (then nothing may be applied).
func PlanReload(old, new *Config) ([]Change, error) {
	changes := Changes(old, new)
	var restart []Change
	for _, c := range changes {
		if c.Reload == Restart {
			restart = append(restart, c)
		}
	}
	if len(restart) > 0 {
		return changes, &RestartError{Changes: restart}
	}
	return changes, nil
}

// Entry is one setting's effective value, as `xdplb config check` prints it.
type Entry struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
	// Rule is the default's rule when the value comes from it.
	Rule string `json:"default_rule,omitempty"`
}

// Effective lists every setting's effective value in c, in table order.
func Effective(c *Config) []Entry {
	out := make([]Entry, 0, len(Settings))
	for _, s := range Settings {
		e := Entry{Key: s.Key, Value: s.Value(c)}
		if bs, ok := e.Value.([]BackendSpec); ok {
			e.Value = backendValues(bs)
		}
		if s.Defaulted(c) {
			e.Rule = s.Default
		}
		out = append(out, e)
	}
	return out
}

// BackendValue is a backend as config check prints it (the YAML mapping form).
type BackendValue struct {
	Name    string `json:"name,omitempty" yaml:"name,omitempty"`
	Address string `json:"address" yaml:"address"`
	Weight  uint32 `json:"weight" yaml:"weight"`
}

func backendValues(bs []BackendSpec) []BackendValue {
	out := make([]BackendValue, len(bs))
	for i, b := range bs {
		out[i] = BackendValue{Name: b.Name, Address: b.Addr.String(), Weight: b.Weight}
	}
	return out
}

// The value parsers: each error says what is wrong with the text, and
// the caller names the key.

func parseAddr(s string, dst *netip.Addr) error {
	if s == "" {
		*dst = netip.Addr{}
		return nil
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	*dst = a.Unmap()
	return nil
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func parseInt(s string, dst *int) error {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	*dst = v
	return nil
}

func parseUint32(s string, dst *uint32) error {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return fmt.Errorf("%q is not a whole number from 0 to %d", s, uint32(1<<32-1))
	}
	*dst = uint32(v)
	return nil
}

func parseDuration(s string, dst *time.Duration) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a duration: write it like 2s, 500ms or 1m30s", s)
	}
	*dst = d
	return nil
}

func parseBool(s string, dst *bool) error {
	v, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q: want true or false", s)
	}
	*dst = v
	return nil
}

// checkChoice reports a value outside a setting's choices.
func (s *Setting) checkChoice(v string) error {
	if len(s.Choices) == 0 || slices.Contains(s.Choices, v) {
		return nil
	}
	return fmt.Errorf("%s %q: want %s", s.Key, v, orList(s.Choices))
}

// orList writes "a, b or c".
func orList(xs []string) string {
	if len(xs) < 2 {
		return strings.Join(xs, "")
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

// FormatYAML writes the effective configuration as a YAML file that Parse
// reads back to the same settings: every key in table order, values that
// come from a rule with the rule in a comment, and the SNAT range, when
// it is decided at start, as a comment.
func FormatYAML(c *Config) string {
	var b strings.Builder
	group := Group("")
	for _, s := range Settings {
		if s.Group != group {
			if group != "" {
				b.WriteString("\n")
			}
			group = s.Group
			fmt.Fprintf(&b, "# %s\n", group)
		}
		v := s.Value(c)
		switch {
		case s.Key == "snat-ports" && c.SNATPorts.IsZero():
			fmt.Fprintf(&b, "# snat-ports: decided at start: %s\n", s.Default)
		case s.Key == "check-source" && !c.CheckSource.IsValid():
			fmt.Fprintf(&b, "# check-source: %s\n", s.Default)
		case s.List:
			bs := v.([]BackendSpec)
			if len(bs) == 0 {
				fmt.Fprintf(&b, "%s: []\n", s.Key)
				continue
			}
			fmt.Fprintf(&b, "%s:\n", s.Key)
			for _, be := range bs {
				b.WriteString("  - {")
				if be.Name != "" {
					fmt.Fprintf(&b, "name: %s, ", yamlScalar(be.Name))
				}
				fmt.Fprintf(&b, "address: %s, weight: %d}\n", be.Addr, be.Weight)
			}
		default:
			line := s.Key + ": " + yamlValue(v)
			if s.Defaulted(c) {
				line += "    # default: " + s.Default
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// yamlValue writes a setting's value as a YAML scalar.
func yamlValue(v any) string {
	switch v := v.(type) {
	case string:
		return yamlScalar(v)
	case time.Duration:
		return shortDuration(v)
	}
	return fmt.Sprint(v)
}

// yamlScalar writes s as a YAML scalar that reads back as the string s.
func yamlScalar(s string) string {
	out, err := yaml.Marshal(s)
	if err != nil {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(string(out), "\n")
}
