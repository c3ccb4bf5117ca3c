package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
)

// settingValue is the flag of one row of the settings table: it checks
// each value as it is given (a bad one is a usage error naming the flag)
// and keeps the texts, applied over the configuration file afterwards.
type settingValue struct {
	s     *config.Setting
	texts []string
}

func (v *settingValue) String() string { return strings.Join(v.texts, ",") }
func (v *settingValue) Type() string   { return v.s.Type }

func (v *settingValue) Set(text string) error {
	scratch := config.DefaultConfig()
	if err := v.s.Parse(&scratch, text); err != nil {
		return err
	}
	if v.s.List {
		v.texts = append(v.texts, text)
	} else {
		v.texts = []string{text}
	}
	return nil
}

// addSetting adds the flag of s to fs, with its help, its default as the
// table states it and, for booleans, a bare --flag meaning true.
func addSetting(fs *pflag.FlagSet, s *config.Setting) {
	f := fs.VarPF(&settingValue{s: s}, s.Key, "", usageOf(s))
	f.DefValue = s.Default
	if s.Bool {
		f.NoOptDefVal = "true"
		f.DefValue = "false"
	}
}

// usageOf is a setting's help line: its text, its choices, and whether a
// reload applies it.
func usageOf(s *config.Setting) string {
	u := s.Usage
	if len(s.Choices) > 0 {
		u += " (" + strings.Join(s.Choices, "|") + ")"
	}
	if s.Reload == config.Restart {
		u += " [restart]"
	}
	return u
}

// addSettings adds a flag for every setting but instance and bpffs, which
// every command takes from the root (see commonFlags).
func addSettings(fs *pflag.FlagSet) {
	for _, s := range config.Settings {
		if s.Key == "instance" || s.Key == "bpffs" {
			continue
		}
		addSetting(fs, s)
	}
}

// commonFlags are the root's flags every subcommand takes: --instance and
// --bpffs, settings of the table too.
func commonFlags(fs *pflag.FlagSet, e env) {
	for _, key := range []string{"instance", "bpffs"} {
		s, _ := config.Lookup(key)
		addSetting(fs, s)
	}
	// The default bpffs follows $XDPLB_BPFFS.
	if v := e.getenv(bpf.BPFFSEnv); v != "" {
		fs.Lookup("bpffs").DefValue = v
	}
}

// applyFlags sets in cfg every setting given on the command line. A list
// flag replaces the file's list.
func applyFlags(fs *pflag.FlagSet, cfg *config.Config) error {
	for _, s := range config.Settings {
		f := fs.Lookup(s.Key)
		if f == nil || !f.Changed {
			continue
		}
		v := f.Value.(*settingValue)
		s.Clear(cfg)
		for _, t := range v.texts {
			if err := s.Parse(cfg, t); err != nil {
				return usageError("--%s: %v", s.Key, err)
			}
		}
	}
	return nil
}

// instanceOf returns the --instance and --bpffs a command was given (or
// their defaults).
func instanceOf(cmd *cobra.Command, e env) (instance, bpffs string) {
	instance, bpffs = bpf.DefaultInstance, bpf.DefaultBPFFS
	if v := e.getenv(bpf.BPFFSEnv); v != "" {
		bpffs = v
	}
	if f := cmd.Flags().Lookup("instance"); f != nil && f.Changed {
		instance = f.Value.String()
	}
	if f := cmd.Flags().Lookup("bpffs"); f != nil && f.Changed {
		bpffs = f.Value.String()
	}
	return instance, bpffs
}

// sources are where a configuration comes from: the file, then the flags
// of the command line. load reads them again at every call, which is what
// a reload does.
type sources struct {
	e         env
	path      string
	pathGiven bool // --config given: the file must exist
	flags     *pflag.FlagSet
}

func newSources(cmd *cobra.Command, e env) sources {
	f := cmd.Flags().Lookup("config")
	return sources{e: e, path: f.Value.String(), pathGiven: f.Changed, flags: cmd.Flags()}
}

// load reads the file (the defaults when the default file is missing) and
// applies the flags. It does not validate.
func (s sources) load() (config.Config, []string, error) {
	cfg, warnings, err := config.LoadFrom(s.path, s.e.getenv)
	if errors.Is(err, fs.ErrNotExist) && !s.pathGiven {
		cfg, warnings, err = config.DefaultConfigFrom(s.e.getenv), nil, nil
	}
	if err != nil {
		return cfg, warnings, err
	}
	if err := applyFlags(s.flags, &cfg); err != nil {
		return cfg, warnings, err
	}
	return cfg, warnings, nil
}

// loadValid is load, then Validate: the configuration a daemon may run.
func (s sources) loadValid() (config.Config, []string, error) {
	cfg, warnings, err := s.load()
	if err != nil {
		return cfg, warnings, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, warnings, fmt.Errorf("invalid configuration: %w", err)
	}
	return cfg, warnings, nil
}

// configFlag adds --config.
func configFlag(fs *pflag.FlagSet) {
	fs.String("config", config.DefaultConfigPath, "YAML configuration file; flags override its keys (the same names). A missing default file is no error")
}

// loadFile reads a configuration file without flags.
func loadFile(path string, e env) (config.Config, []string, error) {
	return config.LoadFrom(path, e.getenv)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
