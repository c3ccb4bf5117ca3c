package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/daemon"
)

func manCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "man",
		Short: "print the manual page xdplb(8), in roff (man -l <(xdplb man))",
		Long: `Print the manual page xdplb(8) in roff, made from the same definitions as the
help and the completion: every command with its flags, and every setting of
the configuration file. The package installs it as
/usr/share/man/man8/xdplb.8.gz (xdplb man | gzip -9n).`,
		Args: noArgs,
	}
	date := cmd.Flags().String("date", "", "the date the page carries, YYYY-MM-DD (default: today; $SOURCE_DATE_EPOCH when set)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		d := *date
		if d == "" {
			d = manDate(e.getenv("SOURCE_DATE_EPOCH"))
		}
		writeMan(e.stdout, cmd.Root(), d)
		return nil
	}
	return cmd
}

func manDate(epoch string) string {
	t := time.Now()
	var sec int64
	if _, err := fmt.Sscan(epoch, &sec); err == nil && epoch != "" {
		t = time.Unix(sec, 0)
	}
	return t.UTC().Format("2006-01-02")
}

// roff escapes text for a roff line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	var u strings.Builder
	for _, r := range s {
		if r > 127 {
			fmt.Fprintf(&u, `\[u%04X]`, r)
			continue
		}
		u.WriteRune(r)
	}
	s = u.String()
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			line = `\&` + line
		}
		b.WriteString(line + "\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// paragraphs writes text as roff paragraphs: blank lines separate them,
// indented lines are kept as they are (examples).
func paragraphs(w io.Writer, text string) {
	for _, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if strings.HasPrefix(p, "  ") {
			fmt.Fprintf(w, ".PP\n.nf\n.RS 4\n%s\n.RE\n.fi\n", roff(p))
			continue
		}
		fmt.Fprintf(w, ".PP\n%s\n", roff(strings.Join(strings.Fields(p), " ")))
	}
}

func writeMan(w io.Writer, root *cobra.Command, date string) {
	fmt.Fprintf(w, ".TH XDPLB 8 %q %q \"System Administration\"\n", date, "xdplb "+daemon.Version)
	fmt.Fprintf(w, ".SH NAME\nxdplb \\- %s\n", roff(root.Short))
	fmt.Fprintf(w, ".SH SYNOPSIS\n")
	leaves := manLeaves(root)
	for _, c := range leaves {
		fmt.Fprintf(w, ".B %s\n", roff(c.CommandPath()))
		if rest := strings.TrimSpace(strings.TrimPrefix(c.Use, c.Name())); rest != "" {
			fmt.Fprintf(w, "%s\n", roff(rest))
		}
		fmt.Fprintf(w, ".br\n")
	}
	fmt.Fprintf(w, ".SH DESCRIPTION\n")
	paragraphs(w, root.Long)
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, c := range leaves {
		title := c.CommandPath()
		if rest := strings.TrimSpace(strings.TrimPrefix(c.Use, c.Name())); rest != "" {
			title += " " + rest
		}
		fmt.Fprintf(w, ".SS \"%s\"\n", roff(title))
		text := c.Long
		if text == "" {
			text = c.Short
		}
		paragraphs(w, text)
		if c.Example != "" {
			fmt.Fprintf(w, ".PP\nExample:\n.nf\n.RS 4\n%s\n.RE\n.fi\n", roff(strings.TrimSpace(c.Example)))
		}
		manFlags(w, c, root)
	}
	fmt.Fprintf(w, ".SS \"Every command\"\n")
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) { manFlag(w, f) })

	fmt.Fprintf(w, ".SH CONFIGURATION\n")
	paragraphs(w, `/etc/xdplb/xdplb.yaml is a YAML mapping of the keys below; each is also a flag of
xdplb run and xdplb config check, of the same name, and a flag overrides the
file. A key marked restart is one a reload cannot change (it is compiled into the
program, sizes its maps, names the instance or opens a listener): a reload that
changes it is refused, and a restart, which keeps every connection, applies it.
Unknown keys are errors, with the key a typo probably meant.`)
	for _, g := range config.Groups {
		fmt.Fprintf(w, ".SS \"%s\"\n", roff(string(g)))
		for _, s := range config.Settings {
			if s.Group != g {
				continue
			}
			fmt.Fprintf(w, ".TP\n.B %s: \\fI%s\\fR\n", roff(s.Key), roff(s.Type))
			text := s.Usage
			if s.Default != "" {
				text += ". Default: " + s.Default
			}
			text += ". Reload: " + s.Reload.String()
			for _, a := range s.Aliases {
				if a.Deprecated {
					text += ". Formerly " + a.Key + " (still read, with a warning)"
				} else {
					text += ". Also written " + a.Key
				}
			}
			fmt.Fprintf(w, "%s.\n", roff(text))
		}
	}
	fmt.Fprintf(w, ".SH SIGNALS\n")
	fmt.Fprintf(w, ".TP\n.B SIGTERM\n%s\n", roff("xdplb run stops; the program stays attached and keeps forwarding tracked connections. A second SIGTERM ends it at once."))
	fmt.Fprintf(w, ".TP\n.B SIGHUP\n%s\n", roff("xdplb run reads its configuration again and applies it live (see xdplb reload)."))
	fmt.Fprintf(w, ".SH EXIT STATUS\n")
	paragraphs(w, "0: success. 1: failure (xdplb check: this node does not forward). 2: bad flags, arguments or configuration of xdplb run: the unit does not restart the daemon for those (RestartPreventExitStatus=2).")
	fmt.Fprintf(w, ".SH ENVIRONMENT\n.TP\n.B XDPLB_BPFFS\n%s\n", roff("the default of --bpffs."))
	fmt.Fprintf(w, ".TP\n.B JOURNAL_STREAM\n%s\n", roff("set by systemd: log lines then carry no timestamp and start with their syslog priority, for journalctl -p."))
	fmt.Fprintf(w, ".TP\n.B NOTIFY_SOCKET\n%s\n", roff("set by systemd (Type=notify): the daemon says READY=1 once its program is attached and serving, and its state in STATUS=."))
	fmt.Fprintf(w, ".SH FILES\n")
	for _, f := range [][2]string{
		{"/etc/xdplb/xdplb.yaml", "the configuration"},
		{"/sys/fs/bpf/xdplb/INSTANCE/", "the instance's pinned maps, program and link"},
		{"/run/xdplb/INSTANCE.sock", "the daemon's control socket (status, check, backend, reload)"},
		{"/run/xdplb/INSTANCE.lock", "held by the daemon for its whole life"},
	} {
		fmt.Fprintf(w, ".TP\n.I %s\n%s\n", roff(f[0]), roff(f[1]))
	}
	fmt.Fprintf(w, ".SH SEE ALSO\n.BR keepalived (8),\n.BR bpftool (8),\n.BR systemctl (1),\n.BR journalctl (1)\n")
}

// manLeaves are the commands that do something, in the order help lists
// them (help itself aside).
func manLeaves(root *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || !sub.IsAvailableCommand() || sub.Name() == "help" {
				continue
			}
			if sub.HasSubCommands() {
				walk(sub)
				continue
			}
			out = append(out, sub)
		}
	}
	walk(root)
	return out
}

// manFlags lists a command's flags, those every command takes aside.
func manFlags(w io.Writer, c, root *cobra.Command) {
	common := root.PersistentFlags()
	seen := map[string]bool{}
	visit := func(f *pflag.Flag) {
		if f.Name == "help" || f.Hidden || common.Lookup(f.Name) != nil || seen[f.Name] {
			return
		}
		seen[f.Name] = true
		manFlag(w, f)
	}
	c.LocalFlags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
}

func manFlag(w io.Writer, f *pflag.Flag) {
	name := "\\-\\-" + roff(f.Name)
	if f.Shorthand != "" {
		name = "\\-" + f.Shorthand + ", " + name
	}
	if t := f.Value.Type(); t != "bool" {
		name += " \\fI" + roff(t) + "\\fR"
	}
	usage := f.Usage
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
		usage += " (default " + f.DefValue + ")"
	}
	fmt.Fprintf(w, ".TP\n.B %s\n%s\n", name, roff(usage))
}
