package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/daemon"
)

// allCommands is every runnable command's path under the root, e.g.
// ["run", "config check", "backend drain"].
func allCommands(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		for _, sub := range c.Commands() {
			p := append(append([]string{}, path...), sub.Name())
			out = append(out, p)
			walk(sub, p)
		}
	}
	walk(newRoot(env_(nil, &bytes.Buffer{}, &bytes.Buffer{})), nil)
	return out
}

// TestHelpOnStdout (issue 13 §6): --help of every command prints to
// stdout, nothing to stderr, exit 0.
func TestHelpOnStdout(t *testing.T) {
	cmds := allCommands(t)
	if len(cmds) < 15 {
		t.Fatalf("only %d commands: %v", len(cmds), cmds)
	}
	for _, c := range append(cmds, []string{}) {
		for _, h := range []string{"--help", "-h"} {
			stdout, stderr, code := runCLI(t, nil, append(append([]string{}, c...), h)...)
			if code != 0 || stderr != "" || !strings.Contains(stdout, "Usage:") {
				t.Errorf("xdplb %s %s: exit %d, stdout %.80q, stderr %q", strings.Join(c, " "), h, code, stdout, stderr)
			}
		}
	}
	if stdout, _, code := runCLI(t, nil, "help", "run"); code != 0 || !strings.Contains(stdout, "--check-timeout") {
		t.Errorf("xdplb help run: %d %.100q", code, stdout)
	}
}

// TestSettingsAreFlags (issue 13 §1): every setting of the table is a flag
// of run, config check and doctor, of the same name, with the table's help
// and default; no other flag sets configuration (config, json, quiet and
// help aside).
func TestSettingsAreFlags(t *testing.T) {
	root := newRoot(env_(nil, &bytes.Buffer{}, &bytes.Buffer{}))
	for _, path := range [][]string{{"run"}, {"config", "check"}, {"doctor"}} {
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range config.Settings {
			f := cmd.Flags().Lookup(s.Key)
			if f == nil {
				f = root.PersistentFlags().Lookup(s.Key)
			}
			if f == nil {
				t.Errorf("%v: setting %s has no flag --%s", path, s.Key, s.Key)
				continue
			}
			if !strings.HasPrefix(f.Usage, s.Usage) {
				t.Errorf("--%s help %q is not the table's %q", s.Key, f.Usage, s.Usage)
			}
			if want := s.Default; f.DefValue != want && !(s.Bool && f.DefValue == "false") {
				t.Errorf("--%s default %q, the table says %q", s.Key, f.DefValue, want)
			}
		}
		cmd.Flags().VisitAll(func(f *pflagFlag) {
			switch f.Name {
			case "config", "json", "quiet", "help":
				return
			}
			if _, ok := config.Lookup(f.Name); !ok {
				t.Errorf("%v: flag --%s is not a setting of the table", path, f.Name)
			}
		})
	}
	// The help shows check-timeout's default as the rule the code uses.
	stdout, _, _ := runCLI(t, nil, "run", "--help")
	if !strings.Contains(stdout, "(default min(inter, 1s))") || !strings.Contains(stdout, "--backend [name=]ip[:port][,weight=n]") {
		t.Errorf("run --help:\n%s", stdout)
	}
}

const validConfig = `iface: eth1
vip: 10.10.10.100
backends:
  - {name: server-1, address: 10.10.10.50}
  - server-2=10.10.10.51:6443
  - address: 10.10.10.52
    weight: 2
timeout: 300ms
`

// TestConfigCheck (issue 13 §2): valid or not, without root or the
// kernel; the effective configuration as YAML or JSON; flags over the
// file; problems named with their line; exit 0 or 1.
func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(validConfig), 0o600)
	stdout, stderr, code := runCLI(t, nil, "config", "check", "--config", good, "--inter", "5s")
	if code != 0 {
		t.Fatalf("valid config: exit %d, %s", code, stderr)
	}
	for _, want := range []string{"# xdplb config check: " + good + ": valid", "inter: 5s", "check-timeout: 300ms",
		"fastinter: 5s    # default: inter", "  - {name: server-1, address: 10.10.10.50:6443, weight: 1}", "  - {address: 10.10.10.52:6443, weight: 2}"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("config check output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, `warning: config `+good+`: line 8: "timeout" is deprecated: write "check-timeout"`) {
		t.Errorf("no deprecation warning: %q", stderr)
	}
	// The output is a configuration that checks the same.
	again := filepath.Join(dir, "again.yaml")
	os.WriteFile(again, []byte(stdout), 0o600)
	if out2, stderr, code := runCLI(t, nil, "config", "check", "--config", again); code != 0 || stderr != "" ||
		uncommented(out2) != uncommented(stdout) {
		t.Errorf("config check of its own output: exit %d %q\n%s", code, stderr, out2)
	}

	stdout, _, code = runCLI(t, nil, "config", "check", "--config", good, "--json")
	var rep configReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 0 || !rep.Valid || rep.Config["vip"] != "10.10.10.100" || rep.Config["check-timeout"] != float64(300e6) && rep.Config["check-timeout"] != "300ms" {
		t.Errorf("--json: exit %d, %v, %+v", code, err, rep.Config)
	}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("iface: eth1\nvip: 10.10.10.100\nbakends: [10.10.10.50]\ninter: 5\n"), 0o600)
	shortKey := filepath.Join(dir, "short.key")
	os.WriteFile(shortKey, []byte("short\n"), 0o600)
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := mkfifo(fifo); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--config", bad}, `line 3: unknown key "bakends": did you mean "backends"?`},
		{[]string{"--config", bad}, `line 4: inter: "5" is not a duration`},
		{[]string{"--config", filepath.Join(dir, "missing.yaml")}, "no such file or directory"},
		{[]string{"--config", dir}, "not a regular file (a directory)"},
		{[]string{"--config", fifo}, "not a regular file (a FIFO)"},
		{[]string{"--config", good, "--check", "https", "--check-ca", filepath.Join(dir, "nope.crt")}, "nope.crt"},
		{[]string{"--config", good, "--backend", "server-1=10.10.10.50", "--backend", "server-1=10.10.10.51"}, `name "server-1" given twice`},
		{[]string{"--config", good, "--max-conns", "4"}, "max-conns 4"},
		{[]string{"--config", good, "--sync-peer", "10.10.10.99", "--sync-key-file", shortKey}, "the key is 5 characters; want at least"},
		{[]string{"--config", good, "--sync-peer", "10.10.10.99"}, "sync-peer: needs sync-key-file"},
	}
	for _, c := range cases {
		_, stderr, code := runCLI(t, nil, append([]string{"config", "check"}, c.args...)...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("config check %v: exit %d, %q; want exit 1 and %q", c.args, code, stderr, c.want)
		}
		stdout, _, code := runCLI(t, nil, append([]string{"config", "check", "--json"}, c.args...)...)
		if code != 1 || !strings.Contains(stdout, `"valid": false`) {
			t.Errorf("config check --json %v: exit %d, %s", c.args, code, stdout)
		}
	}
	// A flag's bad value is a usage error (2) naming the flag.
	if _, stderr, code := runCLI(t, nil, "config", "check", "--config", good, "--vip", "ten"); code != 2 || !strings.Contains(stderr, `"--vip"`) {
		t.Errorf("bad flag value: exit %d, %q", code, stderr)
	}
}

// TestVersionJSON (issue 13 §6): --json wherever a command prints data.
func TestVersionJSON(t *testing.T) {
	stdout, _, code := runCLI(t, nil, "version", "--json")
	var v daemon.BuildInfo
	if err := json.Unmarshal([]byte(stdout), &v); err != nil || code != 0 || v.Version == "" || v.GoVersion == "" || len(v.Hooks) != 2 {
		t.Fatalf("version --json: exit %d, %v, %q", code, err, stdout)
	}
	// Every command that prints data takes --json.
	for _, c := range []string{"status", "check", "flows", "version", "reload", "doctor", "config check", "backend drain", "backend weight"} {
		args := append(strings.Fields(c), "--help")
		if stdout, _, _ := runCLI(t, nil, args...); !strings.Contains(stdout, "--json") {
			t.Errorf("xdplb %s has no --json", c)
		}
	}
}

// TestCompletionAndMan (issue 13 §6): completion scripts for bash, zsh,
// fish; a man page from the same definitions that groff reads without a
// warning, naming every command and every setting.
func TestCompletionAndMan(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		stdout, stderr, code := runCLI(t, nil, "completion", sh)
		if code != 0 || stderr != "" || len(stdout) < 1000 || !strings.Contains(stdout, "xdplb") {
			t.Errorf("completion %s: exit %d, %d bytes, %q", sh, code, len(stdout), stderr)
		}
	}
	if _, _, code := runCLI(t, nil, "completion", "powershell"); code != 2 {
		t.Errorf("completion powershell: exit %d, want a usage error", code)
	}
	// Dynamic completion: the flag values of the table.
	stdout, _, _ := runCLI(t, nil, "__complete", "run", "--xdp-mode", "")
	if !strings.Contains(stdout, "auto\nnative\ngeneric\n") {
		t.Errorf("completion of --xdp-mode: %q", stdout)
	}
	stdout, _, _ = runCLI(t, nil, "__complete", "backend", "")
	for _, sub := range []string{"drain", "enable", "weight"} {
		if !strings.Contains(stdout, sub) {
			t.Errorf("completion of backend: %q lacks %s", stdout, sub)
		}
	}

	page, stderr, code := runCLI(t, map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}, "man")
	if code != 0 || stderr != "" || !strings.HasPrefix(page, `.TH XDPLB 8 "2023-11-14"`) {
		t.Fatalf("man: exit %d, %q, %.100q", code, stderr, page)
	}
	for _, c := range allCommands(t) {
		if c[0] == "help" || c[0] == "completion" && len(c) > 1 {
			continue
		}
		if !strings.Contains(page, `.SS "xdplb `+roff(strings.Join(c, " "))) && !strings.Contains(page, ".B xdplb "+roff(c[0])) {
			t.Errorf("man page lacks xdplb %s", strings.Join(c, " "))
		}
	}
	for _, s := range config.Settings {
		if !strings.Contains(page, ".B "+roff(s.Key)+":") {
			t.Errorf("man page lacks setting %s", s.Key)
		}
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("groff not installed: the page is not rendered")
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(page)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("groff -ww: %v\n%s", err, out)
	}
}

// TestJournalLog (issue 13 §5): under systemd a line has no timestamp and
// starts with its syslog priority; text and JSON.
func TestJournalLog(t *testing.T) {
	var b bytes.Buffer
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)
	log := newLogger(&b, config.LogText, true, level)
	log.Debug("d")
	log.Info("backend up", "backend", "server-1 (10.10.10.50:6443)")
	log.With("part", "gc").Warn("w")
	log.Error("e")
	want := "<7>level=DEBUG msg=d\n<6>level=INFO msg=\"backend up\" backend=\"server-1 (10.10.10.50:6443)\"\n<4>level=WARN msg=w part=gc\n<3>level=ERROR msg=e\n"
	if b.String() != want {
		t.Errorf("journal text log:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	newLogger(&b, config.LogJSON, true, level).Warn("w", "n", 1)
	if b.String() != "<4>{\"level\":\"WARN\",\"msg\":\"w\",\"n\":1}\n" {
		t.Errorf("journal json log: %q", b.String())
	}
	b.Reset()
	newLogger(&b, config.LogJSON, false, level).Info("i")
	if !regexp.MustCompile(`^\{"time":"[^"]+","level":"INFO","msg":"i"\}\n$`).MatchString(b.String()) {
		t.Errorf("json log outside the journal: %q", b.String())
	}
	b.Reset()
	newLogger(&b, config.LogText, false, level).Info("i")
	if !strings.HasPrefix(b.String(), "time=") {
		t.Errorf("text log outside the journal: %q", b.String())
	}
	if journalStream("") || journalStream("1:2") || journalStream("x") {
		t.Error("JOURNAL_STREAM that is not stderr taken for the journal")
	}
}

// TestReloadWithoutDaemon: reload says there is no daemon, exit 1.
func TestReloadWithoutDaemon(t *testing.T) {
	_, stderr, code := runCLI(t, nil, "reload", "--instance", "nonexistent-xyz")
	if code != 1 || !strings.Contains(stderr, `no xdplb daemon for instance "nonexistent-xyz"`) {
		t.Errorf("reload: exit %d, %q", code, stderr)
	}
	// --config finds the instance in the file.
	conf := filepath.Join(t.TempDir(), "x.yaml")
	os.WriteFile(conf, []byte("instance: from-file-xyz\n"), 0o600)
	if _, stderr, _ := runCLI(t, nil, "reload", "--config", conf); !strings.Contains(stderr, `"from-file-xyz"`) {
		t.Errorf("reload --config: %q", stderr)
	}
}

type pflagFlag = pflag.Flag

func mkfifo(path string) error { return syscall.Mkfifo(path, 0o600) }

// uncommented drops YAML comments and the blank lines.
func uncommented(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, "#"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimRight(l, " "); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestCompleteBackends (issue 13 §6): backend drain|enable|weight and
// flows --backend complete the names and addresses of the running
// daemon's backends (a fake daemon here, on its control socket).
func TestCompleteBackends(t *testing.T) {
	old := daemon.RunDir
	daemon.RunDir = t.TempDir()
	defer func() { daemon.RunDir = old }()
	ln, err := net.Listen("unix", daemon.SocketPath("compl"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req daemon.Request
			json.NewDecoder(c).Decode(&req)
			json.NewEncoder(c).Encode(daemon.Response{OK: true, Status: &daemon.Status{Backends: []daemon.BackendStatus{
				{Name: "server-1", Addr: "10.10.10.50:6443", State: daemon.StateUp, Weight: 1},
				{Addr: "10.10.10.51:6443", State: daemon.StateDown, Weight: 1},
			}}})
			c.Close()
		}
	}()
	for _, args := range [][]string{{"backend", "drain"}, {"backend", "weight"}, {"flows", "--backend"}} {
		a := append([]string{"__complete"}, args...)
		a = append(a, "--instance", "compl", "")
		if args[0] == "flows" {
			a = []string{"__complete", "flows", "--instance", "compl", "--backend", ""}
		}
		stdout, _, _ := runCLI(t, nil, a...)
		for _, want := range []string{"server-1\t10.10.10.50:6443 UP, weight 1", "10.10.10.50:6443\tserver-1 UP", "10.10.10.51:6443\tunnamed DOWN"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("completion of %v lacks %q:\n%s", args, want, stdout)
			}
		}
	}
	// The second argument of weight is a number: nothing to complete.
	stdout, _, _ := runCLI(t, nil, "__complete", "backend", "weight", "--instance", "compl", "server-1", "")
	if strings.Contains(stdout, "server-1") {
		t.Errorf("completion of weight's N: %q", stdout)
	}
	// The bash script parses.
	script, _, _ := runCLI(t, nil, "completion", "bash")
	if out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Errorf("bash -n: %v %s", err, out)
	}
}

// TestConfigCheckWithoutRoot (issue 13 §2): config check runs as any user;
// a file it may not read is a clear error, exit 1.
func TestConfigCheckWithoutRoot(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if os.Geteuid() != 0 || err != nil {
		t.Skip("needs root and setpriv to run xdplb as nobody")
	}
	dir, err := os.MkdirTemp("", "xdplb-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "xdplb")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	good := filepath.Join(dir, "good.yaml")
	secret := filepath.Join(dir, "secret.yaml")
	os.WriteFile(good, []byte(validConfig), 0o644)
	os.WriteFile(secret, []byte(validConfig), 0o600)
	nobody := func(args ...string) (string, int) {
		cmd := exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := nobody("config", "check", "--config", good); code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("config check as nobody: exit %d\n%s", code, out)
	}
	if out, code := nobody("config", "check", "--config", secret); code != 1 || !strings.Contains(out, "permission denied") || !strings.Contains(out, secret) {
		t.Errorf("config check of an unreadable file: exit %d\n%s", code, out)
	}
}

// TestJournalStreamDetected: JOURNAL_STREAM naming this process's stderr
// is the journal; another device and inode is not.
func TestJournalStreamDetected(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatal(err)
	}
	if !journalStream(fmt.Sprintf("%d:%d", st.Dev, st.Ino)) {
		t.Error("JOURNAL_STREAM of stderr not recognised")
	}
	if journalStream(fmt.Sprintf("%d:%d", st.Dev, st.Ino+1)) {
		t.Error("another inode taken for stderr")
	}
}
