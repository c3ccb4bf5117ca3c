package main

import (
	"errors"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/daemon"
)

func configCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "work with the configuration",
		Args:  noArgs,
		RunE:  needSubcommand,
	}
	cmd.AddCommand(configCheckCmd(e))
	return cmd
}

const configCheckLong = `Check a configuration as "xdplb run" would take it (the file, then the flags),
without root and without touching the kernel, and print the effective
configuration: every setting, with the defaults and the values that follow
other settings (as comments). It also reads the files the checks use (CA,
certificate, key, token). Like haproxy -c, nginx -t and keepalived -t; the
unit runs it before every start.

Exit status 0 when the configuration is valid, 1 when it is not (each problem
is named, with its line for the file).`

// configReport is what config check prints with --json.
type configReport struct {
	File     string         `json:"file"`
	Valid    bool           `json:"valid"`
	Errors   []string       `json:"errors,omitempty"`
	Warnings []string       `json:"warnings,omitempty"`
	Settings []config.Entry `json:"settings,omitempty"`
	Config   map[string]any `json:"config,omitempty"`
}

func configCheckCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check [--config FILE] [flags]",
		Short: "validate the configuration and print it as the daemon would run it",
		Long:  configCheckLong,
		Args:  noArgs,
	}
	configFlag(cmd.Flags())
	asJSON := jsonFlag(cmd)
	quiet := cmd.Flags().BoolP("quiet", "q", false, "print only problems")
	addSettings(cmd.Flags())
	registerSettingCompletions(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		src := newSources(cmd, e)
		rep := configReport{File: src.path}
		if !src.pathGiven {
			if _, err := os.Stat(src.path); errors.Is(err, fs.ErrNotExist) {
				rep.File = "" // the defaults and the flags only
			}
		}
		cfg, warnings, err := src.loadValid()
		rep.Warnings = append(rep.Warnings, warnings...)
		if err == nil {
			w, ferr := daemon.CheckFiles(cfg, os.Geteuid() == 0)
			rep.Warnings = append(rep.Warnings, w...)
			err = ferr
		}
		if err != nil {
			rep.Errors = splitLines(err.Error())
		} else {
			rep.Valid = true
			rep.Settings = config.Effective(&cfg)
			rep.Config = map[string]any{}
			for _, s := range rep.Settings {
				rep.Config[s.Key] = s.Value
			}
		}
		if *asJSON {
			if err := printJSON(e.stdout, rep); err != nil {
				return err
			}
			if !rep.Valid {
				return &exitError{code: exitFailure, err: errSilent}
			}
			return nil
		}
		for _, w := range rep.Warnings {
			printf(e.stderr, "xdplb: warning: %s\n", w)
		}
		if !rep.Valid {
			return err
		}
		if !*quiet {
			name := rep.File
			if name == "" {
				name = "(no file: defaults and flags)"
			}
			printf(e.stdout, "# xdplb config check: %s: valid\n", name)
			printf(e.stdout, "%s", config.FormatYAML(&cfg))
		}
		return nil
	}
	return cmd
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
