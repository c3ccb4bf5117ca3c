package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/tests/agent"
)

type loadFlags struct {
	o      agent.LoadOptions
	asJSON bool
	strict bool
}

func (l *loadFlags) register(fs *pflag.FlagSet, kind string) {
	fs.StringVar(&l.o.Addr, "addr", "10.10.10.100:6443", "sink address host:port (mockapi --echo-listen / --discard-listen)")
	fs.IntVarP(&l.o.Concurrency, "concurrency", "c", 1, "parallel workers (connections)")
	fs.DurationVar(&l.o.Duration, "duration", 10*time.Second, "how long to run (0: only -n bounds it)")
	if kind != "bulk" {
		fs.IntVarP(&l.o.N, "count", "n", 0, "stop after this many operations in total (0: only --duration bounds it)")
		fs.IntVar(&l.o.Size, "size", 64, "request and response size in bytes")
	} else {
		fs.IntVar(&l.o.Size, "size", 64<<10, "write buffer size in bytes")
	}
	fs.DurationVar(&l.o.Timeout, "timeout", agent.DefaultTimeout, "bound on one operation")
	if kind == "connrate" {
		fs.BoolVar(&l.o.ResetClose, "rst-close", false, "close with RST (no TIME_WAIT on the client: long runs do not exhaust ephemeral ports)")
	}
	fs.BoolVar(&l.asJSON, "json", false, "print the result as JSON")
	fs.BoolVar(&l.strict, "strict", false, "exit with status 3 if any operation failed")
}

func runLoadCmd(ctx context.Context, stdout, stderr io.Writer, args []string, kind string,
	f func(context.Context, agent.LoadOptions) (agent.LoadResult, error)) error {
	fs := newFlagSet(kind, stderr)
	var l loadFlags
	l.register(fs, kind)
	if err := parse(fs, args); err != nil {
		return err
	}
	if l.o.Duration < 0 || l.o.N < 0 || l.o.Size <= 0 || l.o.Concurrency <= 0 {
		return usageError{fmt.Errorf("--duration, -n must not be negative; --size, -c must be positive")}
	}
	res, err := f(ctx, l.o)
	if err != nil {
		return usageError{err}
	}
	if l.asJSON {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		printLoad(stdout, res)
	}
	if l.strict && res.Failures > 0 {
		return failedError{fmt.Errorf("%d operations failed", res.Failures)}
	}
	return nil
}

func printLoad(w io.Writer, r agent.LoadResult) {
	fmt.Fprintf(w, "%s addr=%s c=%d elapsed=%v ops=%d failures=%d", r.Kind, r.Addr, r.Concurrency,
		r.Elapsed.Round(time.Millisecond), r.Ops, r.Failures)
	if r.Kind == "bulk" {
		fmt.Fprintf(w, " bytes=%d gbit/s=%.3f", r.Bytes, r.Gbps)
	} else {
		l := r.Latency
		fmt.Fprintf(w, " ops/s=%.0f p50=%.0fus p90=%.0fus p99=%.0fus p99.9=%.0fus max=%.0fus",
			r.OpsPerSec, l.P50US, l.P90US, l.P99US, l.P999US, l.MaxUS)
	}
	if r.Failures > 0 {
		fmt.Fprintf(w, " errors=%v first=%q", r.Errors, r.FirstError)
	}
	fmt.Fprintln(w)
}

func rr(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	return runLoadCmd(ctx, stdout, stderr, args, "rr", agent.RR)
}

func connrate(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	return runLoadCmd(ctx, stdout, stderr, args, "connrate", agent.ConnRate)
}

func bulk(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	return runLoadCmd(ctx, stdout, stderr, args, "bulk", agent.Bulk)
}
