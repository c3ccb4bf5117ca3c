package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const usageText = `xdplb: an eBPF/XDP load balancer for the K3s API servers

usage:
  xdplb run     --iface eth1 --vip 10.10.10.100 --backend 10.10.10.50 ... [flags]
  xdplb check   [--instance NAME]        exit 0 iff the daemon runs
  xdplb backend drain|enable|weight ADDR [N] [--instance NAME]
  xdplb version

Every subcommand takes --instance (default "default") and --bpffs (default
$XDPLB_BPFFS, else /sys/fs/bpf).
`

var helps = map[string]string{
	"run": `Usage of run:
      --backend stringArray            backend ip[:port] (repeatable; port defaults to --port)
      --check string                   health check: tcp, tls or https (default "tls")
      --config string                  YAML configuration file (flags override it) (default "/etc/xdplb/xdplb.yaml")
      --hook string                    where the data path runs: xdp or tc (default "xdp")
      --iface string                   interface the frontend traffic arrives on (e.g. eth1)
      --instance string                instance name (default "default")
      --verbose[=true|false]           print verifier logs whole, and debug logs
`,
	"check": `Usage of check:
      --instance string      instance name (default "default")
  -q, --quiet[=true|false]   print nothing
`,
	"backend": `Usage of backend:
      --instance string   instance name (default "default")
`,
	"version": "xdplb 1.2.3 (data path: xdp+tc; go1.26 linux/amd64)\n",
}

func fake(args ...string) (string, error) {
	switch {
	case len(args) == 1 && args[0] == "--help":
		return usageText, nil
	case len(args) == 1 && args[0] == "version":
		return helps["version"], nil
	case len(args) == 2 && args[1] == "--help":
		return helps[args[0]], nil
	}
	return "", exec.ErrNotFound
}

func TestReadCLI(t *testing.T) {
	c, err := readCLI(fake)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, cmd := range c.commands {
		names = append(names, cmd.name)
	}
	if !slices.Equal(names, []string{"run", "check", "backend", "version"}) {
		t.Fatalf("commands %q", names)
	}
	if c.version != "1.2.3" || c.summary != "an eBPF/XDP load balancer for the K3s API servers" {
		t.Errorf("version %q summary %q", c.version, c.summary)
	}
	check := c.commands[1]
	if check.synopsis != "[--instance NAME]" || check.about != "exit 0 iff the daemon runs" {
		t.Errorf("check: synopsis %q about %q", check.synopsis, check.about)
	}
	if len(check.flags) != 2 || check.flags[1] != (cliFlag{short: "q", long: "quiet", usage: "print nothing"}) {
		t.Errorf("check flags %+v", check.flags)
	}
	if b := c.commands[2]; !slices.Equal(b.actions, []string{"drain", "enable", "weight"}) {
		t.Errorf("backend actions %q", b.actions)
	}
	run := c.commands[0]
	if len(run.flags) != 7 || run.flags[0].kind != "stringArray" || run.flags[6].takesValue() {
		t.Errorf("run flags %+v", run.flags)
	}
	if got := valueWords(run.flags[1].usage); !slices.Equal(got, []string{"tcp", "tls", "https"}) {
		t.Errorf("check values %q", got)
	}
	if len(c.notes) != 1 || !strings.HasPrefix(c.notes[0], "Every subcommand takes --instance") {
		t.Errorf("notes %q", c.notes)
	}
}

func TestManPage(t *testing.T) {
	c, err := readCLI(fake)
	if err != nil {
		t.Fatal(err)
	}
	m := manPage(c, "1.2.3", time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC))
	for _, want := range []string{
		`.TH XDPLB 8 "2026-11-30" "xdplb 1.2.3"`,
		`xdplb \- an eBPF/XDP load balancer`,
		`\fBxdplb backend\fR drain|enable|weight ADDR [N] [\-\-instance NAME]`,
		`\fB\-q\fR, \fB\-\-quiet\fR`,
		`\fB\-\-backend\fR \fIstringArray\fR`,
		`$XDPLB_BPFFS, else /sys/fs/bpf`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("man page lacks %q:\n%s", want, m)
		}
	}
	if man, err := exec.LookPath("man"); err == nil {
		f := filepath.Join(t.TempDir(), "xdplb.8")
		os.WriteFile(f, []byte(m), 0o644)
		cmd := exec.Command(man, "--warnings", "-l", f)
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=100", "LC_ALL=C.UTF-8")
		out, err := cmd.CombinedOutput()
		text := strings.Join(strings.Fields(string(out)), " ")
		if err != nil || !strings.Contains(text, "Every subcommand takes --instance") || strings.Contains(text, "warning") {
			t.Errorf("man -l: %v\n%s", err, out)
		}
	}
}

// complete runs the generated completion in bash for a command line whose
// last word is being completed.
func complete(t *testing.T, script string, words ...string) []string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "xdplb")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	var q []string
	for _, w := range words {
		q = append(q, "'"+w+"'")
	}
	prog := `source "$1"; COMP_WORDS=(` + strings.Join(q, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _xdplb; printf '%s\n' "${COMPREPLY[@]}"`
	out, err := exec.Command("bash", "-c", prog, "bash", f).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	c, err := readCLI(fake)
	if err != nil {
		t.Fatal(err)
	}
	s := bashCompletion(c, "1.2.3")
	if out, err := exec.Command("bash", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	tests := []struct {
		words []string
		want  []string
	}{
		{[]string{"xdplb", ""}, []string{"run", "check", "backend", "version"}},
		{[]string{"xdplb", "ch"}, []string{"check"}},
		{[]string{"xdplb", "check", "-"}, []string{"--instance", "--quiet", "-q"}},
		{[]string{"xdplb", "run", "--hook", ""}, []string{"xdp", "tc"}},
		{[]string{"xdplb", "run", "--check", "t"}, []string{"tcp", "tls"}},
		{[]string{"xdplb", "run", "--iface", "lo"}, []string{"lo"}},
		{[]string{"xdplb", "backend", ""}, []string{"drain", "enable", "weight"}},
		{[]string{"xdplb", "--instance", "x", "backend", "d"}, []string{"drain"}},
		{[]string{"xdplb", "backend", "drain", ""}, nil},
		{[]string{"xdplb", "run", "--backend", "10.0.0.1", "--v"}, []string{"--verbose"}},
	}
	for _, tc := range tests {
		got := complete(t, s, tc.words...)
		if !slices.Equal(got, tc.want) {
			t.Errorf("complete %q = %q, want %q", tc.words, got, tc.want)
		}
	}
}
