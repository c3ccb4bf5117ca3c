package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// xdplb runs the command line args (without the program name).
func xdplb(e env, args []string) error {
	root := newRoot(e)
	root.SetArgs(args)
	if len(args) == 0 {
		root.SetOut(e.stderr)
		root.Usage()
		return usageError("no subcommand")
	}
	_, err := root.ExecuteContextC(e.ctx)
	if err == nil {
		return nil
	}
	var ee *exitError
	if !errors.As(err, &ee) && isUsage(err) {
		return &exitError{code: exitUsage, err: err}
	}
	return err
}

// isUsage recognises cobra's own errors about the command line.
func isUsage(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command") || strings.HasPrefix(msg, "unknown flag") ||
		strings.HasPrefix(msg, "unknown shorthand flag") || strings.Contains(msg, "flag needs an argument") ||
		strings.HasPrefix(msg, "invalid argument")
}

const rootLong = `xdplb forwards the K3s API servers' port (6443) in the kernel's fast path
(XDP, or TC), in front of the servers of the K3s "Cluster Load Balancer" guide:
it takes the place of HAProxy (or the Nginx stream proxy) on lb-1 and lb-2,
keeps connections across restarts and upgrades, resets the clients of a dead
server at once, and checks the servers the way the API server wants.

Every command takes --instance (default "default") and --bpffs (default
$XDPLB_BPFFS, else /sys/fs/bpf). The configuration is /etc/xdplb/xdplb.yaml;
every key of it is also a flag of "xdplb run" and "xdplb config check", of the
same name.`

// newRoot builds the command tree. Help goes to stdout, errors to stderr
// (printed by main, once, as "xdplb: ...").
func newRoot(e env) *cobra.Command {
	root := &cobra.Command{
		Use:           "xdplb",
		Short:         "an eBPF/XDP load balancer for the K3s API servers",
		Long:          rootLong,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          noArgs,
		// The default completion command would offer powershell: ours
		// offers what the package installs.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.RunE = needSubcommand
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	commonFlags(root.PersistentFlags(), e)
	root.RegisterFlagCompletionFunc("instance", completeInstances)
	root.AddCommand(
		runCmd(e), configCmd(e), reloadCmd(e),
		statusCmd(e), checkCmd(e), backendCmd(e), flowsCmd(e), detachCmd(e),
		doctorCmd(e), versionCmd(e), completionCmd(e), manCmd(e),
	)
	for _, c := range root.Commands() {
		c.Flags().SortFlags = false
	}
	return root
}

// needSubcommand is the RunE of a command that only groups others.
func needSubcommand(cmd *cobra.Command, _ []string) error {
	names := []string{}
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return usageError("%s: want a subcommand: %s (see %s --help)", cmd.CommandPath(), strings.Join(names, ", "), cmd.CommandPath())
}

// noArgs refuses arguments, as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		if cmd.HasSubCommands() {
			return usageError("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return usageError("%s takes no arguments, got %q", cmd.Name(), args)
	}
	return nil
}

// exactArgs wants n arguments, as a usage error with the command's use line.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("usage: %s", cmd.UseLine())
		}
		return nil
	}
}

// jsonFlag adds --json to a command that prints data.
func jsonFlag(cmd *cobra.Command) *bool {
	return cmd.Flags().Bool("json", false, "print JSON")
}

// printJSON writes v indented, one document.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }
