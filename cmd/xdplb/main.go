// Command xdplb is an eBPF/XDP load balancer for the K3s API servers: it
// replaces HAProxy (or the Nginx stream proxy) of the K3s "Cluster Load
// Balancer" guide on lb-1/lb-2. This file only wires the subcommands; the
// work is in control/daemon, control and loader.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// env is what a subcommand may touch, so tests can drive the CLI.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks bad flags or arguments (exit code 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

const usage = `xdplb: an eBPF/XDP load balancer for the K3s API servers

usage:
  xdplb run     --iface eth1 --vip 10.10.10.100 --backend 10.10.10.50 ... [flags]
  xdplb status  [--instance NAME] [--json]
  xdplb check   [--instance NAME] [--backends]
                exit 0 iff the daemon runs and its program is attached (this node forwards);
                --backends: and a backend can take new connections (else says why)
  xdplb backend drain|enable|weight ADDR [N] [--instance NAME]
  xdplb flows   [--instance NAME] [--backend ADDR] [--json]
  xdplb detach  [--instance NAME]        stop the daemon, remove the program, pins and state
  xdplb version

Every subcommand takes --instance (default "default") and --bpffs (default
$XDPLB_BPFFS, else /sys/fs/bpf). "xdplb run --help" lists the run flags.
`

func xdplb(e env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return usageError("no subcommand")
	}
	cmds := map[string]func(env, []string) error{
		"run": cmdRun, "status": cmdStatus, "check": cmdCheck, "backend": cmdBackend,
		"flows": cmdFlows, "detach": cmdDetach, "version": cmdVersion,
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(e.stdout, usage)
		return nil
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprint(e.stderr, usage)
		return usageError("unknown subcommand %q", args[0])
	}
	return cmd(e, args[1:])
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first signal asks for an orderly stop; a second one ends the
		// process at once.
		<-ctx.Done()
		stop()
	}()
	err := xdplb(env{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(os.Stderr, "xdplb: %v\n", err)
	}
	os.Exit(code)
}

// errSilent: the subcommand already said everything.
var errSilent = errors.New("silent")
