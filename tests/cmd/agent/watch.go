package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
)

func watch(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	fs := newFlagSet("watch", stderr)
	var tf tlsFlags
	tf.register(fs)
	n := fs.IntP("streams", "n", 1, "number of watch streams, each on its own connection")
	duration := fs.Duration("duration", 10*time.Second, "how long to hold the streams")
	hungAfter := fs.Duration("hung-after", agent.DefaultHungAfter, "silence after which a stream counts as hung")
	heartbeat := fs.Duration("heartbeat", 0, "ask the server for this heartbeat interval (0: server default)")
	progress := fs.Duration("progress", 0, "print a one-line summary to stderr at this interval (0: never)")
	details := fs.Bool("details", true, "include every stream in the report")
	strict := fs.Bool("strict", false, "exit with status 3 if any stream broke or hung")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *n <= 0 || *duration <= 0 {
		return usageError{fmt.Errorf("-n and --duration must be positive")}
	}
	cl, err := tf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	ws, err := cl.StartWatch(ctx, tf.url, agent.WatchOptions{Streams: *n, HungAfter: *hungAfter, Heartbeat: *heartbeat})
	if err != nil {
		return usageError{err}
	}
	var tick <-chan time.Time
	if *progress > 0 {
		t := time.NewTicker(*progress)
		defer t.Stop()
		tick = t.C
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick:
			r := ws.Report()
			fmt.Fprintf(stderr, "watch: open=%d hung=%d broken=%d (reset=%d eof=%d errors=%d) max_gap=%.0fms per_server=%v\n",
				r.Open, r.Hung, r.Broken, r.Reset, r.EOF, r.Errors, r.MaxGapMS, r.PerServer)
		}
	}
	rep := ws.Stop()
	if !*details {
		rep.Details = nil
	}
	if err := printJSON(stdout, rep); err != nil {
		return err
	}
	if *strict && (rep.Broken > 0 || rep.Hung > 0) {
		return failedError{fmt.Errorf("%d streams broke and %d hung", rep.Broken, rep.Hung)}
	}
	return nil
}
