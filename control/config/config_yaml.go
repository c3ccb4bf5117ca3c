package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/xdplb/xdplb/control/safefile"
)

// fileConfig is the YAML file. Every value is kept as a node so that each
// error can name its line; KnownFields rejects any key not listed here.
type fileConfig struct {
	Instance           yaml.Node `yaml:"instance"`
	Iface              yaml.Node `yaml:"iface"`
	VIP                yaml.Node `yaml:"vip"`
	Port               yaml.Node `yaml:"port"`
	Backends           yaml.Node `yaml:"backends"`
	Check              yaml.Node `yaml:"check"`
	CheckPath          yaml.Node `yaml:"check-path"`
	CheckExpectStatus  yaml.Node `yaml:"check-expect-status"`
	CheckCA            yaml.Node `yaml:"check-ca"`
	CheckCert          yaml.Node `yaml:"check-cert"`
	CheckKey           yaml.Node `yaml:"check-key"`
	CheckTokenFile     yaml.Node `yaml:"check-token-file"`
	CheckServerName    yaml.Node `yaml:"check-server-name"`
	CheckSource        yaml.Node `yaml:"check-source"`
	Inter              yaml.Node `yaml:"inter"`
	FastInter          yaml.Node `yaml:"fastinter"`
	DownInter          yaml.Node `yaml:"downinter"`
	Timeout            yaml.Node `yaml:"timeout"`
	Rise               yaml.Node `yaml:"rise"`
	Fall               yaml.Node `yaml:"fall"`
	Hook               yaml.Node `yaml:"hook"`
	XDPMode            yaml.Node `yaml:"xdp-mode"`
	SNATPorts          yaml.Node `yaml:"snat-ports"`
	MetricsAddr        yaml.Node `yaml:"metrics-addr"`
	BPFFS              yaml.Node `yaml:"bpffs"`
	GCInterval         yaml.Node `yaml:"gc-interval"`
	EstablishedTimeout yaml.Node `yaml:"established-timeout"`
	MaxConns           yaml.Node `yaml:"max-conns"`
	MaxConnsPerClient  yaml.Node `yaml:"max-conns-per-client"`
	SyncPeer           yaml.Node `yaml:"sync-peer"`
	SyncKeyFile        yaml.Node `yaml:"sync-key-file"`
	AllDown            yaml.Node `yaml:"all-down"`
}

// LoadConfig reads the YAML file at path over DefaultConfig. It does not
// validate: the command line may still change fields, then call Validate. A
// missing file gives an error that matches fs.ErrNotExist.
func LoadConfig(path string) (Config, error) {
	data, err := safefile.Read(path, safefile.MaxSize, safefile.Timeout)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses a YAML configuration over DefaultConfig. A key left
// out or set to null keeps its default. Every error names the line and the
// key; unknown keys are errors, so that a typo is never silently ignored.
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, rewriteYAMLError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, errors.New("more than one YAML document: keep one")
	}
	if err := f.apply(&cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// apply sets the fields of cfg that the file sets, and reports every value
// that does not parse.
func (f *fileConfig) apply(cfg *Config) error {
	var errs []error
	try := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	try(setString(&f.Instance, "instance", &cfg.Instance))
	try(setString(&f.Iface, "iface", &cfg.Iface))
	try(setAddr(&f.VIP, "vip", &cfg.VIP))
	try(setPort(&f.Port, "port", &cfg.Port))
	try(setBackends(&f.Backends, &cfg.Backends))
	try(setString(&f.Check, "check", (*string)(&cfg.Check)))
	try(setString(&f.CheckPath, "check-path", &cfg.CheckPath))
	try(setInt(&f.CheckExpectStatus, "check-expect-status", &cfg.CheckExpectStatus))
	try(setString(&f.CheckCA, "check-ca", &cfg.CheckCA))
	try(setString(&f.CheckCert, "check-cert", &cfg.CheckCert))
	try(setString(&f.CheckKey, "check-key", &cfg.CheckKey))
	try(setString(&f.CheckTokenFile, "check-token-file", &cfg.CheckTokenFile))
	try(setString(&f.CheckServerName, "check-server-name", &cfg.CheckServerName))
	try(setAddr(&f.CheckSource, "check-source", &cfg.CheckSource))
	try(setDuration(&f.Inter, "inter", &cfg.Inter))
	try(setDuration(&f.FastInter, "fastinter", &cfg.FastInter))
	try(setDuration(&f.DownInter, "downinter", &cfg.DownInter))
	try(setDuration(&f.Timeout, "timeout", &cfg.Timeout))
	try(setInt(&f.Rise, "rise", &cfg.Rise))
	try(setInt(&f.Fall, "fall", &cfg.Fall))
	try(setString(&f.Hook, "hook", (*string)(&cfg.Hook)))
	try(setString(&f.XDPMode, "xdp-mode", (*string)(&cfg.XDPMode)))
	try(setPortRange(&f.SNATPorts, "snat-ports", &cfg.SNATPorts))
	try(setString(&f.MetricsAddr, "metrics-addr", &cfg.MetricsAddr))
	try(setString(&f.BPFFS, "bpffs", &cfg.BPFFS))
	try(setDuration(&f.GCInterval, "gc-interval", &cfg.GCInterval))
	try(setDuration(&f.EstablishedTimeout, "established-timeout", &cfg.EstablishedTimeout))
	try(setUint32(&f.MaxConns, "max-conns", &cfg.MaxConns))
	try(setUint32(&f.MaxConnsPerClient, "max-conns-per-client", &cfg.MaxConnsPerClient))
	try(setSyncPeer(&f.SyncPeer, "sync-peer", &cfg.SyncPeer))
	try(setString(&f.SyncKeyFile, "sync-key-file", &cfg.SyncKeyFile))
	try(setString(&f.AllDown, "all-down", (*string)(&cfg.AllDown)))
	return errors.Join(errs...)
}

// scalar returns the node's text, and false when the key is absent or null.
func scalar(n *yaml.Node, key string) (string, bool, error) {
	n = deref(n)
	if n.Kind == 0 || n.Tag == "!!null" {
		return "", false, nil
	}
	if n.Kind != yaml.ScalarNode {
		return "", false, fmt.Errorf("line %d: %s: want a single value, not a %s", n.Line, key, kindName(n))
	}
	return n.Value, true, nil
}

func setString(n *yaml.Node, key string, dst *string) error {
	s, ok, err := scalar(n, key)
	if ok {
		*dst = s
	}
	return err
}

func setInt(n *yaml.Node, key string, dst *int) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %q is not a whole number", n.Line, key, s)
	}
	*dst = v
	return nil
}

func setUint32(n *yaml.Node, key string, dst *uint32) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("line %d: %s: %q is not a whole number from 0 to %d", n.Line, key, s, uint32(1<<32-1))
	}
	*dst = uint32(v)
	return nil
}

func setPort(n *yaml.Node, key string, dst *uint16) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	p, err := parsePort(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %w", n.Line, key, err)
	}
	*dst = p
	return nil
}

func setDuration(n *yaml.Node, key string, dst *time.Duration) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %q is not a duration: write it like 2s, 500ms or 1m30s", n.Line, key, s)
	}
	*dst = d
	return nil
}

func setAddr(n *yaml.Node, key string, dst *netip.Addr) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %q is not an IP address", n.Line, key, s)
	}
	*dst = a.Unmap()
	return nil
}

func setPortRange(n *yaml.Node, key string, dst *PortRange) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	r, err := ParsePortRange(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %w", n.Line, key, err)
	}
	*dst = r
	return nil
}

func setSyncPeer(n *yaml.Node, key string, dst *netip.AddrPort) error {
	s, ok, err := scalar(n, key)
	if !ok {
		return err
	}
	ap, err := ParseSyncPeer(s)
	if err != nil {
		return fmt.Errorf("line %d: %s: %w", n.Line, key, err)
	}
	*dst = ap
	return nil
}

// setBackends reads the backends list; each item is "ip", "ip:port" or
// {address: ip[:port], weight: n}.
func setBackends(n *yaml.Node, dst *[]BackendSpec) error {
	n = deref(n)
	if n.Kind == 0 || n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: backends: want a list, e.g. [10.10.10.50:6443, 10.10.10.51:6443]", n.Line)
	}
	var errs []error
	backends := make([]BackendSpec, 0, len(n.Content))
	for i, item := range n.Content {
		item = deref(item)
		b, err := parseBackendNode(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: backends[%d]: %w", item.Line, i, err))
			continue
		}
		backends = append(backends, b)
	}
	*dst = backends
	return errors.Join(errs...)
}

func parseBackendNode(n *yaml.Node) (BackendSpec, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		return ParseBackend(n.Value)
	case yaml.MappingNode:
	default:
		return BackendSpec{}, fmt.Errorf("want ip, ip:port or {address: ip:port, weight: n}, not a %s", kindName(n))
	}
	var (
		b          BackendSpec
		hasAddress bool
		weight     = uint32(1)
	)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if v.Kind != yaml.ScalarNode {
			return BackendSpec{}, fmt.Errorf("%s: want a single value, not a %s", k.Value, kindName(v))
		}
		switch k.Value {
		case "address":
			parsed, err := ParseBackend(v.Value)
			if err != nil {
				return BackendSpec{}, err
			}
			b, hasAddress = parsed, true
		case "weight":
			w, err := strconv.ParseUint(v.Value, 10, 32)
			if err != nil {
				return BackendSpec{}, fmt.Errorf("weight %q: want a whole number, 0 (drained) to %d", v.Value, MaxWeight)
			}
			weight = uint32(w)
		default:
			return BackendSpec{}, fmt.Errorf("unknown key %q: a backend has address and weight", k.Value)
		}
	}
	if !hasAddress {
		return BackendSpec{}, errors.New("address: required, e.g. {address: 10.10.10.50:6443, weight: 2}")
	}
	b.Weight = weight
	return b, nil
}

// deref follows a YAML alias (*name) to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	case yaml.AliasNode:
		return "alias"
	default:
		return "value"
	}
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	notMappingRE   = regexp.MustCompile(`^line (\d+): cannot unmarshal !!(\w+) .*into \S+$`)
)

// rewriteYAMLError turns yaml.v3's messages, which name Go types, into ones
// that name keys, and suggests the key a typo probably meant.
func rewriteYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("not valid YAML: %w", err)
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		switch sub := unknownFieldRE.FindStringSubmatch(m); {
		case sub != nil:
			msgs[i] = fmt.Sprintf("line %s: unknown key %q%s", sub[1], sub[2], suggestKey(sub[2]))
		case notMappingRE.MatchString(m):
			sub := notMappingRE.FindStringSubmatch(m)
			msgs[i] = fmt.Sprintf("line %s: want a mapping of keys to values at the top, not a %s", sub[1], sub[2])
		default:
			msgs[i] = m
		}
	}
	return errors.New(strings.Join(msgs, "; "))
}

// configKeys lists the keys of the file, for suggestions.
var configKeys = func() []string {
	t := reflect.TypeFor[fileConfig]()
	keys := make([]string, t.NumField())
	for i := range keys {
		keys[i] = t.Field(i).Tag.Get("yaml")
	}
	return keys
}()

// suggestKey returns `: did you mean "x"?` for the known key closest to
// key, if it is close enough to be a typo.
func suggestKey(key string) string {
	best, bestDist := "", 3 // a typo is at most 2 edits away
	for _, k := range configKeys {
		if d := editDistance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(": did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
