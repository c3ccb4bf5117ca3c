package config

import (
	"errors"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/health"
)

// samples is a value other than the default for every setting, as a flag
// would give it, and the text the setting then shows.
var samples = map[string][2]string{
	"instance":             {"lb-a", "lb-a"},
	"bpffs":                {"/run/bpf", "/run/bpf"},
	"iface":                {"eth2", "eth2"},
	"vip":                  {"10.10.10.98", "10.10.10.98"},
	"port":                 {"7443", "7443"},
	"backend":              {"server-1=10.10.10.50,weight=2", "server-1=10.10.10.50:7443,weight=2"},
	"check":                {"https", "https"},
	"check-path":           {"/livez", "/livez"},
	"check-expect-status":  {"204", "204"},
	"check-ca":             {"/etc/xdplb/ca.crt", "/etc/xdplb/ca.crt"},
	"check-cert":           {"/etc/xdplb/c.crt", "/etc/xdplb/c.crt"},
	"check-key":            {"/etc/xdplb/c.key", "/etc/xdplb/c.key"},
	"check-token-file":     {"/etc/xdplb/token", "/etc/xdplb/token"},
	"check-server-name":    {"kubernetes", "kubernetes"},
	"check-source":         {"10.10.10.97", "10.10.10.97"},
	"inter":                {"3s", "3s"},
	"fastinter":            {"500ms", "500ms"},
	"downinter":            {"1m30s", "1m30s"},
	"check-timeout":        {"1500ms", "1.5s"},
	"rise":                 {"4", "4"},
	"fall":                 {"5", "5"},
	"hook":                 {"tc", "tc"},
	"xdp-mode":             {"generic", "generic"},
	"snat-ports":           {"61000-65535", "61000-65535"},
	"max-conns":            {"5000", "5000"},
	"max-conns-per-client": {"20", "20"},
	"established-timeout":  {"2h", "2h"},
	"gc-interval":          {"5s", "5s"},
	"no-bpf-link":          {"true", "true"},
	"sync-peer":            {"10.10.10.99", "10.10.10.99:6450"},
	"sync-key-file":        {"/etc/xdplb/sync.key", "/etc/xdplb/sync.key"},
	"all-down":             {"drop", "drop"},
	"metrics-addr":         {"", ""},
	"log-format":           {"json", "json"},
	"verbose":              {"true", "true"},
}

func defaults(t *testing.T) Config {
	t.Helper()
	t.Setenv(bpf.BPFFSEnv, "")
	return DefaultConfig()
}

// TestSettingsTable walks the table: one name per setting (the flag and
// the YAML key), every field of Config reached by exactly one setting,
// flags and YAML giving the same configuration, help text and defaults
// that say what the code does.
func TestSettingsTable(t *testing.T) {
	keyRE := regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	names := map[string]string{}
	for _, s := range Settings {
		if !keyRE.MatchString(s.Key) {
			t.Errorf("key %q: want lower-case words joined by dashes (it is both --%s and %s:)", s.Key, s.Key, s.Key)
		}
		for _, n := range append([]string{s.Key}, aliasKeys(s)...) {
			if other, dup := names[n]; dup {
				t.Errorf("%q names both %s and %s", n, other, s.Key)
			}
			names[n] = s.Key
		}
		if len(s.Usage) < 20 || s.Type == "" || !slices.Contains(Groups, s.Group) {
			t.Errorf("%s: usage %q, type %q, group %q: every setting says what it is", s.Key, s.Usage, s.Type, s.Group)
		}
		if s.Reload == Restart && s.Why == "" {
			t.Errorf("%s: needs a restart but does not say why (the refused reload tells the operator)", s.Key)
		}
		if s.Bool != (s.Type == "bool") {
			t.Errorf("%s: Bool %v but type %q", s.Key, s.Bool, s.Type)
		}
		if _, ok := samples[s.Key]; !ok {
			t.Errorf("%s: no sample value in this test", s.Key)
		}
	}
	for k := range samples {
		if _, ok := Lookup(k); !ok {
			t.Errorf("sample for %q, which is not a setting", k)
		}
	}

	// Every field of Config is set by exactly one setting, and a flag and
	// the YAML key give the same result.
	byField := map[string][]string{}
	for _, s := range Settings {
		def := defaults(t)
		// The frontend port changes how backends resolve: compare with it set.
		flag := def
		if s.List {
			s.Clear(&flag)
		}
		if err := s.Parse(&flag, samples[s.Key][0]); err != nil {
			t.Errorf("--%s %q: %v", s.Key, samples[s.Key][0], err)
			continue
		}
		if s.Key == "backend" {
			flag.Port, def.Port = 7443, 7443
		}
		if got := s.Text(&flag); got != samples[s.Key][1] {
			t.Errorf("--%s %q shows %q, want %q", s.Key, samples[s.Key][0], got, samples[s.Key][1])
		}
		changed := changedFields(def, flag)
		if len(changed) != 1 {
			t.Errorf("--%s changes fields %v of Config, want exactly one", s.Key, changed)
		}
		for _, f := range changed {
			byField[f] = append(byField[f], s.Key)
		}
		// Changes names the setting, and the settings whose rule follows it.
		cs := Changes(&def, &flag)
		if !slices.ContainsFunc(cs, func(c Change) bool { return c.Key == s.Key }) {
			t.Errorf("Changes() after --%s = %v, want that setting", s.Key, cs)
		}
		for _, c := range cs {
			if o, _ := Lookup(c.Key); c.Key != s.Key && !o.Defaulted(&flag) {
				t.Errorf("Changes() after --%s = %v: %s is neither it nor follows it", s.Key, cs, c.Key)
			}
		}
		// The YAML key, and every alias, give the same configuration.
		for _, key := range append([]string{s.Key}, aliasKeys(s)...) {
			doc := key + ": " + yamlScalar(samples[s.Key][0]) + "\n"
			if s.List {
				doc = key + ":\n  - " + yamlScalar(samples[s.Key][0]) + "\n"
			}
			if s.Key == "backend" {
				doc += "port: 7443\n"
			}
			y, warnings, err := Parse([]byte(doc))
			if err != nil {
				t.Errorf("YAML %q: %v", doc, err)
				continue
			}
			if !reflect.DeepEqual(y, flag) {
				t.Errorf("YAML %q = %+v, the flag gives %+v", doc, y, flag)
			}
			deprecated := slices.ContainsFunc(s.Aliases, func(a Alias) bool { return a.Key == key && a.Deprecated })
			if deprecated != (len(warnings) == 1) || deprecated && !strings.Contains(warnings[0], `write "`+s.Key+`"`) {
				t.Errorf("YAML %q: warnings %q (deprecated spelling: %v)", doc, warnings, deprecated)
			}
		}
	}
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Config]()) {
		if len(byField[f.Name]) != 1 {
			t.Errorf("Config.%s is set by settings %v: want exactly one (every field is a flag and a YAML key)", f.Name, byField[f.Name])
		}
	}
}

func aliasKeys(s *Setting) []string {
	var out []string
	for _, a := range s.Aliases {
		out = append(out, a.Key)
	}
	return out
}

func changedFields(a, b Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := range va.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, va.Type().Field(i).Name)
		}
	}
	return out
}

// TestSettingsDefaultsAreTrue: the default help shows is the value the
// configuration has when nothing sets it; for a default that is a rule,
// the rule gives what the code uses.
func TestSettingsDefaultsAreTrue(t *testing.T) {
	cfg := defaults(t)
	for _, s := range Settings {
		if s.Derived {
			continue
		}
		if got := s.Text(&cfg); got != s.Default {
			t.Errorf("--%s: help says default %q, the configuration has %q", s.Key, s.Default, got)
		}
	}
	rules := []struct {
		key   string
		set   func(*Config)
		value string
	}{
		{"fastinter", func(c *Config) { c.Inter = 5 * time.Second }, "5s"},
		{"downinter", func(c *Config) { c.Inter = 5 * time.Second }, "5s"},
		{"check-timeout", func(c *Config) {}, "1s"},                                      // inter 2s: min(2s, 1s)
		{"check-timeout", func(c *Config) { c.Inter = 300 * time.Millisecond }, "300ms"}, // min(300ms, 1s)
		{"check-timeout", func(c *Config) { c.Inter = time.Minute }, "1s"},
		{"snat-ports", func(c *Config) {}, "auto"},
		{"check-source", func(c *Config) {}, ""},
	}
	for _, r := range rules {
		c := defaults(t)
		r.set(&c)
		s, _ := Lookup(r.key)
		if got := s.Text(&c); got != r.value || !s.Defaulted(&c) {
			t.Errorf("%s with %+v: %q (defaulted %v), want %q by the rule %q", r.key, c.HealthParams(), got, s.Defaulted(&c), r.value, s.Default)
		}
		// The health monitor runs with the same value.
		if r.key == "check-timeout" && shortDuration(c.HealthParams().WithDefaults().Timeout) != r.value {
			t.Errorf("health params timeout %v, the table says %s", c.HealthParams().Timeout, r.value)
		}
	}
	// The rule check-timeout's help states is health's.
	if p := (health.Params{Inter: 10 * time.Second}).WithDefaults(); p.Timeout != health.DefaultMaxTimeout {
		t.Errorf("health's default timeout for inter 10s is %v, the table says min(inter, %v)", p.Timeout, health.DefaultMaxTimeout)
	}
}

// TestFormatYAMLReadsBack: what config check prints is a configuration
// file giving the same effective settings.
func TestFormatYAMLReadsBack(t *testing.T) {
	for _, doc := range []string{guideConfig, guideConfig + "metrics-addr: \"\"\nsnat-ports: 61000-65535\ncheck-source: 10.10.10.97\n",
		"iface: eth1\nvip: 10.10.10.100\nbackends:\n  - {name: server-1, address: 10.10.10.50, weight: 0}\n  - server-2=10.10.10.51:443\ntimeout: 300ms\n"} {
		cfg := mustParse(t, doc)
		out := FormatYAML(&cfg)
		again, warnings, err := Parse([]byte(out))
		if err != nil || len(warnings) > 0 {
			t.Fatalf("FormatYAML() does not read back: %v %v\n%s", err, warnings, out)
		}
		if a, b := Effective(&cfg), Effective(&again); !reflect.DeepEqual(stripRules(a), stripRules(b)) {
			t.Errorf("read back\n%s\ngives %+v\nwant %+v", out, b, a)
		}
	}
	cfg := mustParse(t, guideConfig)
	out := FormatYAML(&cfg)
	for _, want := range []string{"check-timeout: 1s    # default: min(inter, 1s)", "fastinter: 2s    # default: inter",
		"# snat-ports: decided at start", "  - {address: 10.10.10.52:6443, weight: 2}", "metrics-addr: 127.0.0.1:9716"} {
		if !strings.Contains(out, want) {
			t.Errorf("FormatYAML() lacks %q:\n%s", want, out)
		}
	}
}

func stripRules(es []Entry) []Entry {
	out := slices.Clone(es)
	for i := range out {
		out[i].Rule = ""
	}
	return out
}

func TestParseDeprecatedAndDuplicateKeys(t *testing.T) {
	_, warnings, err := Parse([]byte("timeout: 2s\n"))
	if err != nil || len(warnings) != 1 || warnings[0] != `line 1: "timeout" is deprecated: write "check-timeout" (same meaning)` {
		t.Errorf("timeout: %v %q", err, warnings)
	}
	_, _, err = Parse([]byte("check-timeout: 1s\ntimeout: 2s\n"))
	if got := errString(err); got != "line 2: timeout: set twice (first on line 1)" {
		t.Errorf("both spellings: %q", got)
	}
	_, _, err = Parse([]byte("backends: [10.10.10.50]\nbackend: [10.10.10.51]\n"))
	if got := errString(err); got != "line 2: backend: set twice (first on line 1)" {
		t.Errorf("backend and backends: %q", got)
	}
	_, _, err = Parse([]byte("check-timout: 1s\n"))
	if got := errString(err); got != `line 1: unknown key "check-timout": did you mean "check-timeout"?` {
		t.Errorf("typo: %q", got)
	}
}

func TestParseBackendNames(t *testing.T) {
	tests := []struct {
		in, spec, label, err string
	}{
		{in: "server-1=10.10.10.50:6443", spec: "server-1=10.10.10.50:6443", label: "server-1 (10.10.10.50:6443)"},
		{in: "server-1=10.10.10.50,weight=0", spec: "server-1=10.10.10.50,weight=0", label: "server-1 (10.10.10.50)"},
		{in: "10.10.10.50,weight=3", spec: "10.10.10.50,weight=3", label: "10.10.10.50"},
		{in: "1abc=10.10.10.50", err: `name "1abc": want a letter`},
		{in: "=10.10.10.50", err: `name "": want a letter`},
		{in: "a b=10.10.10.50", err: `name "a b"`},
		{in: "s1=10.10.10.50,weight=x", err: `weight "x": want a whole number`},
		{in: "s1=10.10.10.50,wieght=2", err: `unknown option "wieght=2"`},
		{in: "s1=k3s-1:6443", err: `"k3s-1" is not an IP address`},
	}
	for _, tt := range tests {
		b, err := ParseBackend(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseBackend(%q) = %v, %v; want an error with %q", tt.in, b, err, tt.err)
			}
			continue
		}
		if err != nil || b.Spec() != tt.spec || b.Label() != tt.label {
			t.Errorf("ParseBackend(%q) = %q %q, %v; want %q %q", tt.in, b.Spec(), b.Label(), err, tt.spec, tt.label)
		}
	}
	cfg := mustParse(t, guideConfig)
	cfg.Backends[0].Name, cfg.Backends[1].Name = "server-1", "server-1"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `name "server-1" given twice`) {
		t.Errorf("Validate() with a name twice = %v", err)
	}
}

func TestPlanReload(t *testing.T) {
	old := mustParse(t, guideConfig)
	live := old
	live.Backends = append(slices.Clone(old.Backends), BackendSpec{Name: "server-4", Addr: netip.MustParseAddrPort("10.10.10.53:6443"), Weight: 1})
	live.Inter, live.Rise = 5*time.Second, 3
	changes, err := PlanReload(&old, &live)
	if err != nil || len(changes) != 5 { // backend, inter (fastinter, downinter follow), rise
		t.Fatalf("PlanReload(live changes) = %v, %v", changes, err)
	}
	if changes[0].Key != "backend" || !strings.Contains(changes[0].New, "server-4=10.10.10.53:6443") {
		t.Errorf("changes[0] = %+v", changes[0])
	}
	restart := live
	restart.VIP, restart.SNATPorts, restart.Hook = netip.MustParseAddr("10.10.10.101"), PortRange{61000, 65535}, bpf.HookTC
	_, err = PlanReload(&old, &restart)
	var re *RestartError
	if !errors.As(err, &re) || len(re.Changes) != 3 {
		t.Fatalf("PlanReload(vip, snat, hook) = %v", err)
	}
	for _, want := range []string{"reload refused, nothing changed", "vip: 10.10.10.100 -> 10.10.10.101 (the frontend address is compiled into the program)",
		"hook: xdp -> tc", "snat-ports: auto -> 61000-65535", "restart to apply", "no connection is lost"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q lacks %q", err, want)
		}
	}
}
