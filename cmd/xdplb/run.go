package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/xdplb/xdplb/control/daemon"
)

const runLong = `Run the load balancer: check the configuration, load the program with the
frontend compiled in, pin it under <bpffs>/xdplb/<instance>/, attach it to
--iface and check the backends, until SIGTERM. The program stays attached when
the daemon stops (tracked connections keep flowing); a new daemon takes over
without losing one. SIGHUP (systemctl reload xdplb, or xdplb reload) reads the
configuration again and applies backends, weights, names, check settings and
timers live; a setting marked [restart] needs a restart, which loses nothing.

Exit status: 0 after SIGTERM, 2 for bad flags or configuration (systemd does
not retry those), 1 for anything else.`

func runCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "run [--config FILE] [flags]",
		Short:   "run the load balancer (the daemon)",
		Long:    runLong,
		Example: "  xdplb run --iface eth1 --vip 10.10.10.100 --backend server-1=10.10.10.50 --backend server-2=10.10.10.51 --backend server-3=10.10.10.52",
		Args:    noArgs,
	}
	configFlag(cmd.Flags())
	addSettings(cmd.Flags())
	registerSettingCompletions(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		src := newSources(cmd, e)
		cfg, warnings, err := src.loadValid()
		if err != nil {
			return &exitError{code: exitUsage, err: err}
		}
		level := new(slog.LevelVar)
		log := newLogger(e.stderr, cfg.LogFormat, e.journal, level)
		for _, w := range warnings {
			log.Warn(w)
		}
		return daemon.Run(e.ctx, cfg, daemon.Options{
			Logger: log, Level: level, Hup: e.hup, ConfigPath: src.path,
			Reload: src.loadValid,
		})
	}
	return cmd
}
