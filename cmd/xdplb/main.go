// Command xdplb is an eBPF/XDP load balancer for the K3s API servers: it
// replaces HAProxy (or the Nginx stream proxy) of the K3s "Cluster Load
// Balancer" guide on lb-1/lb-2. This package parses the command line and
// prints; the work is in control/daemon, control and loader.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// env is what a subcommand may touch, so tests can drive the CLI.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// hup delivers SIGHUP (reload) to `xdplb run`; nil: none.
	hup <-chan os.Signal
	// journal: stderr is the systemd journal's stream (JOURNAL_STREAM).
	journal bool
}

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Exit codes: 1 for a failure, 2 for bad flags, arguments or configuration
// (the unit's RestartPreventExitStatus: retrying cannot fix them).
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks bad flags, arguments or configuration (exit code 2).
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// errSilent: the subcommand already said everything.
var errSilent = errors.New("silent")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// The first signal asks for an orderly stop; a second one ends the
		// process at once.
		<-ctx.Done()
		stop()
	}()
	// SIGHUP reloads a running daemon; for any other command it is ignored
	// rather than fatal (a terminal closing under `xdplb status`).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	e := env{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, hup: hup, journal: journalStream(os.Getenv("JOURNAL_STREAM"))}
	err := xdplb(e, os.Args[1:])
	if err == nil {
		return
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(os.Stderr, "xdplb: %v\n", err)
	}
	os.Exit(code)
}

// journalStream says whether stderr is the journal's stream: systemd sets
// JOURNAL_STREAM to its device and inode, and the stream is still stderr
// only if they match (a shell started from the unit inherits the variable
// with another stderr).
func journalStream(v string) bool {
	dev, ino, ok := strings.Cut(v, ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == d && st.Ino == i
}
