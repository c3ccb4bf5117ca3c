package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/bpf"
)

// common are the flags every subcommand takes.
type common struct {
	instance string
	bpffs    string
}

func newFlagSet(e env, name string, c *common) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	bpffs := bpf.DefaultBPFFS
	if v := e.getenv(bpf.BPFFSEnv); v != "" {
		bpffs = v
	}
	fs.StringVar(&c.instance, "instance", bpf.DefaultInstance, "instance name (pin directory <bpffs>/xdplb/NAME, socket /run/xdplb/NAME.sock)")
	fs.StringVar(&c.bpffs, "bpffs", bpffs, "bpffs mount point ($"+bpf.BPFFSEnv+")")
	return fs
}

// parse parses args, turning pflag's errors into usage errors.
func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelp
		}
		return usageError("%v", err)
	}
	return nil
}

var errHelp = &exitError{code: 0, err: errors.New("help")}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }
