package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"
)

func whoami(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	fs := newFlagSet("whoami", stderr)
	var tf tlsFlags
	tf.register(fs)
	n := fs.IntP("count", "n", 1, "number of requests, each on a new connection")
	c := fs.IntP("concurrency", "c", 1, "requests in flight")
	duration := fs.Duration("duration", 0, "stop after this long even if not all requests were made (0: no limit beyond -n)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	strict := fs.Bool("strict", false, "exit with status 3 if any request failed")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *n <= 0 || *c <= 0 {
		return usageError{fmt.Errorf("-n and -c must be positive")}
	}
	cl, err := tf.client()
	if err != nil {
		return err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	res, err := cl.Balance(ctx, tf.url, *n, *c)
	if err != nil {
		return usageError{err}
	}
	if *asJSON {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		names := make([]string, 0, len(res.Counts))
		for name := range res.Counts {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			fmt.Fprintf(stdout, "%-20s %d\n", name, res.Counts[name])
		}
		fmt.Fprintf(stdout, "%-20s %d", "failures", res.Failures)
		if res.Failures > 0 {
			fmt.Fprintf(stdout, " %v (first: %s)", res.Errors, res.FirstError)
		}
		fmt.Fprintf(stdout, "\n%-20s %d in %v\n", "requests", res.Requests, res.Elapsed.Round(time.Millisecond))
	}
	if *strict && (res.Failures > 0 || res.Requests < *n) {
		return failedError{fmt.Errorf("%d of %d requests failed, %d not made", res.Failures, *n, *n-res.Requests)}
	}
	return nil
}
