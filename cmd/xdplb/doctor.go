package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/control/preflight"
)

const doctorLong = `Check this node for xdplb without starting anything: the configuration, the
kernel and its BPF features, bpffs, BTF, the frontend interface (its driver,
native XDP, and on virtio_net what makes native XDP fail or crawl: MTU, LRO,
queues), what --xdp-mode auto would take and why, and keepalived's
configuration. One line per check: pass, warn, fail (with what to change) or
info. As root it also probes the BPF system call. Exit status 1 if a check
fails.

xdplb run logs the same checks at start (the warnings and failures).`

func doctorCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor [--config FILE] [flags] [--json]",
		Short: "check this node for xdplb (kernel, bpffs, interface, XDP mode, keepalived) without starting anything",
		Long:  doctorLong,
		Args:  noArgs,
	}
	configFlag(cmd.Flags())
	asJSON := jsonFlag(cmd)
	addSettings(cmd.Flags())
	registerSettingCompletions(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		src := newSources(cmd, e)
		cfg, warnings, err := src.load()
		var checks []preflight.Check
		switch {
		case err != nil:
			checks = append(checks, preflight.Check{Name: "config", Result: preflight.Fail, Detail: oneLine(err.Error()), Fix: "xdplb config check shows every problem"})
		default:
			if verr := cfg.Validate(); verr != nil {
				checks = append(checks, preflight.Check{Name: "config", Result: preflight.Fail, Detail: oneLine(verr.Error()), Fix: "xdplb config check shows every problem"})
			} else {
				name := src.path
				if !src.pathGiven && len(warnings) == 0 && !fileExists(src.path) {
					name = "defaults and flags"
				}
				checks = append(checks, preflight.Check{Name: "config", Result: preflight.Pass, Detail: name + ": valid"})
			}
			for _, w := range warnings {
				checks = append(checks, preflight.Check{Name: "config", Result: preflight.Warn, Detail: w, Fix: "write the key's current name"})
			}
		}
		checks = append(checks, preflight.Checks(daemon.Facts(cfg))...)
		worst := preflight.Worst(checks)
		if *asJSON {
			printJSON(e.stdout, struct {
				Result preflight.Result  `json:"result"`
				Checks []preflight.Check `json:"checks"`
			}{worst, checks})
		} else {
			for _, c := range checks {
				printf(e.stdout, "%s\n", c)
			}
		}
		if worst == preflight.Fail {
			return &exitError{code: exitFailure, err: errSilent}
		}
		return nil
	}
	return cmd
}

func oneLine(s string) string { return strings.Join(splitLines(s), "; ") }
