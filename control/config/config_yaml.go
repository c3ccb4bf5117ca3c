package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/xdplb/xdplb/control/safefile"
)

// LoadConfig reads the YAML file at path over DefaultConfig; see Load.
func LoadConfig(path string) (Config, error) {
	cfg, _, err := Load(path)
	return cfg, err
}

// Load reads the YAML file at path over DefaultConfig, and returns the
// warnings about it (deprecated spellings). It does not validate: the
// command line may still change fields, then call Validate. A missing
// file gives an error that matches fs.ErrNotExist.
func Load(path string) (Config, []string, error) { return LoadFrom(path, os.Getenv) }

// LoadFrom is Load with the environment ($XDPLB_BPFFS) read through getenv.
func LoadFrom(path string, getenv func(string) string) (Config, []string, error) {
	data, err := safefile.Read(path, safefile.MaxSize, safefile.Timeout)
	if err != nil {
		return Config{}, nil, fmt.Errorf("read config: %w", err)
	}
	cfg, warnings, err := parse(data, defaultConfig(getenv))
	for i, w := range warnings {
		warnings[i] = "config " + path + ": " + w
	}
	if err != nil {
		return Config{}, warnings, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, warnings, nil
}

// ParseConfig parses a YAML configuration over DefaultConfig; see Parse.
func ParseConfig(data []byte) (Config, error) {
	cfg, _, err := Parse(data)
	return cfg, err
}

// Parse parses a YAML configuration over DefaultConfig: a mapping of the
// settings table's keys (or their aliases) to values. A key left out or
// set to null keeps its default. Every error names the line and the key;
// unknown keys are errors, with the key a typo probably meant, so that a
// typo is never silently ignored. A deprecated spelling is accepted with
// a warning.
func Parse(data []byte) (Config, []string, error) { return parse(data, DefaultConfig()) }

func parse(data []byte, cfg Config) (Config, []string, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Config{}, nil, errors.New("more than one YAML document: keep one")
	}
	if doc.Kind == 0 {
		return cfg, nil, nil // empty
	}
	top := deref(doc.Content[0])
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return cfg, nil, nil
	}
	if top.Kind != yaml.MappingNode {
		return Config{}, nil, fmt.Errorf("line %d: want a mapping of keys to values at the top, not a %s", top.Line, shortTag(top))
	}
	var errs []error
	var warnings []string
	seen := map[string]int{} // setting -> line
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := deref(top.Content[i]), deref(top.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Errorf("line %d: want a key, not a %s", k.Line, kindName(k)))
			continue
		}
		s, alias := lookupYAML(k.Value)
		if s == nil {
			errs = append(errs, fmt.Errorf("line %d: unknown key %q%s", k.Line, k.Value, suggestKey(k.Value)))
			continue
		}
		if alias != nil && alias.Deprecated {
			warnings = append(warnings, fmt.Sprintf("line %d: %q is deprecated: write %q (same meaning)", k.Line, k.Value, s.Key))
		}
		if line, dup := seen[s.Key]; dup {
			errs = append(errs, fmt.Errorf("line %d: %s: set twice (first on line %d)", k.Line, k.Value, line))
			continue
		}
		seen[s.Key] = k.Line
		if err := setNode(&cfg, s, k.Value, v); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, warnings, err
	}
	return cfg, warnings, nil
}

// setNode sets a setting from its YAML value; key is as written.
func setNode(cfg *Config, s *Setting, key string, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if s.List {
		return setList(cfg, s, key, n)
	}
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: %s: want a single value, not a %s", n.Line, key, kindName(n))
	}
	if err := s.Parse(cfg, n.Value); err != nil {
		return fmt.Errorf("line %d: %s: %w", n.Line, key, err)
	}
	return nil
}

// setList reads a list setting (backends): each item is a string as the
// flag takes it, or, for backends, {name, address, weight}.
func setList(cfg *Config, s *Setting, key string, n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: %s: want a list, e.g. [server-1=10.10.10.50:6443, server-2=10.10.10.51:6443]", n.Line, key)
	}
	s.Clear(cfg)
	var errs []error
	for i, item := range n.Content {
		item = deref(item)
		var err error
		switch {
		case item.Kind == yaml.ScalarNode:
			err = s.Parse(cfg, item.Value)
		case item.Kind == yaml.MappingNode && s.Key == "backend":
			var b BackendSpec
			if b, err = parseBackendNode(item); err == nil {
				cfg.Backends = append(cfg.Backends, b)
			}
		default:
			err = fmt.Errorf("want ip, ip:port or {name: n, address: ip:port, weight: n}, not a %s", kindName(item))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %s[%d]: %w", item.Line, key, i, err))
		}
	}
	return errors.Join(errs...)
}

func parseBackendNode(n *yaml.Node) (BackendSpec, error) {
	var (
		b          = BackendSpec{Weight: 1}
		hasAddress bool
	)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if v.Kind != yaml.ScalarNode {
			return BackendSpec{}, fmt.Errorf("%s: want a single value, not a %s", k.Value, kindName(v))
		}
		switch k.Value {
		case "address":
			ap, err := parseBackendAddr(v.Value)
			if err != nil {
				return BackendSpec{}, fmt.Errorf("backend %q: %w", v.Value, err)
			}
			b.Addr, hasAddress = ap, true
		case "name":
			if err := ValidateName(v.Value); err != nil {
				return BackendSpec{}, err
			}
			b.Name = v.Value
		case "weight":
			w, err := parseWeight(v.Value)
			if err != nil {
				return BackendSpec{}, err
			}
			b.Weight = w
		default:
			return BackendSpec{}, fmt.Errorf("unknown key %q: a backend has name, address and weight", k.Value)
		}
	}
	if !hasAddress {
		return BackendSpec{}, errors.New("address: required, e.g. {name: server-1, address: 10.10.10.50:6443, weight: 2}")
	}
	return b, nil
}

// shortTag is a node's YAML tag without the !!: seq, map, str, ...
func shortTag(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "seq"
	case yaml.MappingNode:
		return "map"
	}
	return strings.TrimPrefix(n.ShortTag(), "!!")
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

// suggestKey returns `: did you mean "x"?` for the known key closest to
// key, if it is close enough to be a typo.
func suggestKey(key string) string {
	best, bestDist := "", 3 // a typo is at most 2 edits away
	for _, k := range allKeys() {
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
