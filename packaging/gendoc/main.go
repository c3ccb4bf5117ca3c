// Command gendoc writes xdplb's man page and bash completion from the CLI's
// own usage text: it runs `xdplb --help` and `xdplb SUBCOMMAND --help` and
// turns the usage lines and pflag's flag lists into troff and a bash
// completion function. `make deb` runs it on the binary it packages.
//
//	go run ./packaging/gendoc -bin bin/xdplb -version V -man DIR/xdplb.8 -bash DIR/xdplb
//
// It is a stopgap for as long as the CLI has no generator of its own: once
// `xdplb completion bash` and a man page generated from the command
// definitions exist, packaging/deb.sh calls those instead.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

func main() {
	bin := flag.String("bin", "bin/xdplb", "the xdplb binary whose --help is read (it must run on this machine)")
	version := flag.String("version", "", "version for the man page footer (default: the first word after xdplb in `xdplb version`)")
	manOut := flag.String("man", "", "write the man page (section 8) here")
	bashOut := flag.String("bash", "", "write the bash completion here")
	flag.Parse()
	if err := run(*bin, *version, *manOut, *bashOut); err != nil {
		fmt.Fprintln(os.Stderr, "gendoc:", err)
		os.Exit(1)
	}
}

func run(bin, version, manOut, bashOut string) error {
	cli, err := readCLI(func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return string(out), err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	if version == "" {
		version = cli.version
	}
	date := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			date = time.Unix(n, 0).UTC()
		}
	}
	if manOut != "" {
		if err := os.WriteFile(manOut, []byte(manPage(cli, version, date)), 0o644); err != nil {
			return err
		}
	}
	if bashOut != "" {
		if err := os.WriteFile(bashOut, []byte(bashCompletion(cli, version)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// cli is what the usage text says.
type cli struct {
	summary  string // "an eBPF/XDP load balancer for the K3s API servers"
	commands []*command
	notes    []string // paragraphs after the usage lines
	version  string
}

type command struct {
	name     string
	synopsis string   // the usage line after "xdplb NAME"
	about    string   // text after the synopsis, if any
	actions  []string // "drain|enable|weight" as the first argument
	flags    []cliFlag
}

type cliFlag struct {
	short, long string
	kind        string // "" for a boolean, else the value's type (string, int, duration, ...)
	usage       string
}

// takesValue says whether the flag needs an argument.
func (f cliFlag) takesValue() bool { return f.kind != "" }

var (
	// "  xdplb check   [--instance NAME]        exit 0 iff ..."
	usageLine = regexp.MustCompile(`^  xdplb ([a-z][a-z-]*)(?:\s+(.*?))?\s*$`)
	// pflag: "  -q, --quiet[=true|false]   print nothing", "      --iface string   interface ..."
	flagLine = regexp.MustCompile(`^\s+(?:-([A-Za-z0-9]), )?--([a-z0-9][a-z0-9-]*)(\[=[^\]]*\])?(?: ([A-Za-z0-9]+))?\s{2,}(.*)$`)
	// "health check: tcp, tls or https (default "tls")"
	choices = regexp.MustCompile(`:\s+([a-z0-9-]+(?:, [a-z0-9-]+)*) or ([a-z0-9-]+)\b`)
)

// readCLI runs the binary for its usage text, each subcommand's flags
// and its version.
func readCLI(runXDPLB func(args ...string) (string, error)) (*cli, error) {
	top, err := runXDPLB("--help")
	if err != nil {
		return nil, fmt.Errorf("--help: %w: %s", err, top)
	}
	c, err := parseUsage(top)
	if err != nil {
		return nil, err
	}
	for _, cmd := range c.commands {
		out, err := runXDPLB(cmd.name, "--help")
		if err != nil {
			return nil, fmt.Errorf("%s --help: %w: %s", cmd.name, err, out)
		}
		cmd.flags = parseFlags(out)
	}
	v, err := runXDPLB("version")
	if err != nil {
		return nil, fmt.Errorf("version: %w: %s", err, v)
	}
	if f := strings.Fields(v); len(f) >= 2 && f[0] == "xdplb" {
		c.version = f[1]
	}
	return c, nil
}

// parseUsage reads `xdplb --help`: a first line "xdplb: SUMMARY", a
// "usage:" block of "  xdplb NAME ARGS   ABOUT" lines, and paragraphs.
func parseUsage(text string) (*cli, error) {
	c := &cli{}
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "xdplb: ") {
		return nil, errors.New(`usage text does not start with "xdplb: "`)
	}
	c.summary = strings.TrimPrefix(lines[0], "xdplb: ")
	var para []string
	inUsage := false
	for _, l := range lines[1:] {
		switch {
		case strings.TrimSpace(l) == "usage:":
			inUsage = true
		case inUsage && usageLine.MatchString(l):
			m := usageLine.FindStringSubmatch(l)
			cmd := &command{name: m[1]}
			rest := m[2]
			// The about text is set off from the arguments by 3+ spaces.
			if i := strings.Index(rest, "   "); i >= 0 {
				cmd.synopsis, cmd.about = strings.TrimSpace(rest[:i]), strings.TrimSpace(rest[i:])
			} else {
				cmd.synopsis = rest
			}
			if f := strings.Fields(cmd.synopsis); len(f) > 0 && strings.Contains(f[0], "|") && !strings.HasPrefix(f[0], "-") && !strings.HasPrefix(f[0], "[") {
				cmd.actions = strings.Split(f[0], "|")
			}
			c.commands = append(c.commands, cmd)
		case strings.TrimSpace(l) == "":
			inUsage = false
			if len(para) > 0 {
				c.notes = append(c.notes, strings.Join(para, " "))
				para = nil
			}
		case !inUsage:
			para = append(para, strings.TrimSpace(l))
		}
	}
	if len(para) > 0 {
		c.notes = append(c.notes, strings.Join(para, " "))
	}
	if len(c.commands) == 0 {
		return nil, errors.New("no subcommands in the usage text")
	}
	return c, nil
}

// parseFlags reads pflag's usage listing.
func parseFlags(text string) []cliFlag {
	var flags []cliFlag
	for _, l := range strings.Split(text, "\n") {
		m := flagLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		f := cliFlag{short: m[1], long: m[2], usage: strings.TrimSpace(m[5])}
		if m[3] == "" {
			f.kind = m[4]
		}
		flags = append(flags, f)
	}
	return flags
}

// valueWords are the values a flag's usage lists ("xdp or tc").
func valueWords(usage string) []string {
	m := choices.FindStringSubmatch(usage)
	if m == nil {
		return nil
	}
	return append(strings.Split(m[1], ", "), m[2])
}

// roff escapes text for troff.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func manPage(c *cli, version string, date time.Time) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p(`.\" Generated by packaging/gendoc from the usage text of xdplb %s. Do not edit.`, version)
	p(`.TH XDPLB 8 "%s" "xdplb %s" "System Administration"`, date.Format("2006-01-02"), roff(version))
	p(".SH NAME")
	p(`xdplb \- %s`, roff(c.summary))
	p(".SH SYNOPSIS")
	p(".nf")
	for _, cmd := range c.commands {
		p(`\fBxdplb %s\fR %s`, cmd.name, roff(cmd.synopsis))
	}
	p(".fi")
	p(".SH DESCRIPTION")
	p("%s.", roff(strings.ToUpper(c.summary[:1])+c.summary[1:]))
	p("It forwards TCP in the kernel's fast path (XDP, or TC where XDP cannot run), keeps connections across restarts and upgrades, and checks the servers the way HAProxy does.")
	for _, n := range c.notes {
		p(".PP")
		p("%s", roff(n))
	}
	p(".SH COMMANDS")
	for _, cmd := range c.commands {
		p(".TP")
		p(`\fBxdplb %s\fR %s`, cmd.name, roff(cmd.synopsis))
		if cmd.about != "" {
			p("%s", roff(cmd.about))
		} else {
			p("See OPTIONS.")
		}
	}
	p(".SH OPTIONS")
	for _, cmd := range c.commands {
		if len(cmd.flags) == 0 {
			continue
		}
		p(".SS xdplb %s", cmd.name)
		for _, f := range cmd.flags {
			p(".TP")
			head := `\fB\-\-` + roff(f.long) + `\fR`
			if f.short != "" {
				head = `\fB\-` + f.short + `\fR, ` + head
			}
			if f.takesValue() {
				head += ` \fI` + f.kind + `\fR`
			}
			p("%s", head)
			p("%s", roff(f.usage))
		}
	}
	p(".SH FILES")
	for _, f := range [][2]string{
		{"/etc/xdplb/xdplb.yaml", "the configuration of `xdplb run`; its keys are the names of the run flags"},
		{"/sys/fs/bpf/xdplb/INSTANCE/", "the pinned maps, program and links of an instance"},
		{"/run/xdplb/INSTANCE.sock", "the control socket of a running daemon"},
		{"/usr/share/doc/xdplb/examples/keepalived.conf", "the guide's keepalived configuration with `xdplb check` as its track script"},
	} {
		p(".TP")
		p(`\fI%s\fR`, roff(f[0]))
		p("%s", roff(f[1]))
	}
	p(".SH SEE ALSO")
	p(`\fBkeepalived\fR(8), \fBbpftool\fR(8), \fBsystemctl\fR(1), /usr/share/doc/xdplb/README.md`)
	return b.String()
}

func bashCompletion(c *cli, version string) string {
	var names []string
	for _, cmd := range c.commands {
		names = append(names, cmd.name)
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("# bash completion for xdplb %s", version)
	p("# Generated by packaging/gendoc from xdplb's usage text. Do not edit.")
	p("_xdplb() {")
	p("\tlocal cur prev sub nargs i")
	p("\tcur=${COMP_WORDS[COMP_CWORD]}")
	p("\tprev=${COMP_WORDS[COMP_CWORD-1]}")
	p("\tsub= nargs=0")
	p("\tfor ((i = 1; i < COMP_CWORD; i++)); do")
	p("\t\tcase ${COMP_WORDS[i]} in")
	// Skip a flag's value when the flag takes one.
	var valued []string
	for _, cmd := range c.commands {
		for _, f := range cmd.flags {
			if f.takesValue() && !slices.Contains(valued, "--"+f.long) {
				valued = append(valued, "--"+f.long)
			}
		}
	}
	if len(valued) > 0 {
		p("\t\t%s) ((i++)) ;;", strings.Join(valued, " | "))
	}
	p("\t\t-*) ;;")
	p("\t\t*) if [[ -z $sub ]]; then sub=${COMP_WORDS[i]}; else ((nargs++)); fi ;;")
	p("\t\tesac")
	p("\tdone")
	p("\tif [[ -z $sub ]]; then")
	p(`		mapfile -t COMPREPLY < <(compgen -W "%s" -- "$cur")`, strings.Join(names, " "))
	p("\t\treturn")
	p("\tfi")
	// Values of the previous flag.
	p("\tcase $prev in")
	done := map[string]bool{}
	for _, cmd := range c.commands {
		for _, f := range cmd.flags {
			if !f.takesValue() || done[f.long] {
				continue
			}
			done[f.long] = true
			switch words := valueWords(f.usage); {
			case len(words) > 0:
				p(`	--%s) mapfile -t COMPREPLY < <(compgen -W "%s" -- "$cur"); return ;;`, f.long, strings.Join(words, " "))
			case strings.Contains(f.usage, "interface"):
				p(`	--%s) mapfile -t COMPREPLY < <(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur"); return ;;`, f.long)
			case f.long == "instance":
				p(`	--%s) mapfile -t COMPREPLY < <(compgen -W "$(ls /sys/fs/bpf/xdplb 2>/dev/null)" -- "$cur"); return ;;`, f.long)
			case strings.Contains(f.usage, "file") || strings.Contains(f.usage, "mount point"):
				p(`	--%s) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;`, f.long)
			default:
				p(`	--%s) COMPREPLY=(); return ;;`, f.long)
			}
		}
	}
	p("\tesac")
	p("\tcase $sub in")
	for _, cmd := range c.commands {
		var fl []string
		for _, f := range cmd.flags {
			fl = append(fl, "--"+f.long)
			if f.short != "" {
				fl = append(fl, "-"+f.short)
			}
		}
		p("\t%s)", cmd.name)
		p("\t\tif [[ $cur == -* ]]; then")
		p(`			mapfile -t COMPREPLY < <(compgen -W "%s" -- "$cur")`, strings.Join(fl, " "))
		if len(cmd.actions) > 0 {
			p("\t\telif ((nargs == 0)); then")
			p(`			mapfile -t COMPREPLY < <(compgen -W "%s" -- "$cur")`, strings.Join(cmd.actions, " "))
		}
		p("\t\tfi")
		p("\t\t;;")
	}
	p("\tesac")
	p("}")
	p("complete -F _xdplb xdplb")
	return b.String()
}
