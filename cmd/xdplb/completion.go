package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/daemon"
)

const completionLong = `Print the shell completion script for bash, zsh or fish. It completes
commands, flags, the values of flags that take one of a few (--check, --hook,
--xdp-mode, --log-format), interface names, files, running instances, and the
backends' names and addresses (backend drain|enable|weight, flows --backend)
by asking the running daemon.

  bash:  xdplb completion bash > /usr/share/bash-completion/completions/xdplb
  zsh:   xdplb completion zsh > "${fpath[1]}/_xdplb"
  fish:  xdplb completion fish > ~/.config/fish/completions/xdplb.fish`

func completionCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:       "completion bash|zsh|fish",
		Short:     "print the shell completion script",
		Long:      completionLong,
		Args:      exactArgs(1),
		ValidArgs: []string{"bash", "zsh", "fish"},
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		root := cmd.Root()
		switch args[0] {
		case "bash":
			return root.GenBashCompletionV2(e.stdout, true)
		case "zsh":
			return root.GenZshCompletion(e.stdout)
		case "fish":
			return root.GenFishCompletion(e.stdout, true)
		}
		return usageError("completion %q: want bash, zsh or fish", args[0])
	}
	return cmd
}

// registerSettingCompletions completes the values of the setting flags of
// cmd: their choices, interface names, files.
func registerSettingCompletions(cmd *cobra.Command) {
	for _, s := range config.Settings {
		if cmd.Flags().Lookup(s.Key) == nil {
			continue
		}
		switch {
		case len(s.Choices) > 0:
			cmd.RegisterFlagCompletionFunc(s.Key, cobra.FixedCompletions(s.Choices, cobra.ShellCompDirectiveNoFileComp))
		case s.Key == "iface":
			cmd.RegisterFlagCompletionFunc(s.Key, completeIfaces)
		case s.Type == "file" || s.Type == "path":
			cmd.RegisterFlagCompletionFunc(s.Key, func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
				return nil, cobra.ShellCompDirectiveDefault
			})
		default:
			cmd.RegisterFlagCompletionFunc(s.Key, cobra.NoFileCompletions)
		}
	}
	if cmd.Flags().Lookup("config") != nil {
		cmd.RegisterFlagCompletionFunc("config", cobra.FixedCompletions([]string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt))
	}
}

func completeIfaces(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	entries, _ := os.ReadDir("/sys/class/net")
	var out []cobra.Completion
	for _, e := range entries {
		if e.Name() != "lo" {
			out = append(out, e.Name())
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeInstances lists the instances whose daemon has a socket.
func completeInstances(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	socks, _ := filepath.Glob(filepath.Join(daemon.RunDir, "*.sock"))
	var out []cobra.Completion
	for _, s := range socks {
		out = append(out, strings.TrimSuffix(filepath.Base(s), ".sock"))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeBackends completes a backend's name or address, from the running
// daemon of the instance on the command line, with its state as the
// description; for the first argument only.
func completeBackends(e env) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		instance, _ := instanceOf(cmd, e)
		resp, err := daemon.CallTimeout(instance, daemon.Request{Cmd: "status"}, time.Second)
		if err != nil || resp.Status == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, b := range resp.Status.Backends {
			desc := string(b.State) + ", weight " + strconv.Itoa(int(b.Weight))
			if b.Name != "" {
				out = append(out, cobra.CompletionWithDesc(b.Name, b.Addr+" "+desc))
			}
			out = append(out, cobra.CompletionWithDesc(b.Addr, nameOr(b.Name, "unnamed")+" "+desc))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func nameOr(name, def string) string {
	if name == "" {
		return def
	}
	return name
}
