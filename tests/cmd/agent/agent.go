package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/tests/agent"
)

// usageError marks bad command lines (exit status 2).
type usageError struct{ error }

// failedError marks a run that completed but saw failures, with --strict
// (exit status 3).
type failedError struct{ error }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "agent:", err)
	var ue usageError
	var fe failedError
	switch {
	case errors.As(err, &ue):
		return 2
	case errors.As(err, &fe):
		return 3
	}
	return 1
}

type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, stdout, stderr io.Writer, args []string) error
}

var subcommands = []subcommand{
	{"whoami", "ask /whoami n times, each on a new TLS connection; count answers per server", whoami},
	{"watch", "hold n /watch streams for a duration; report gaps, hangs and broken streams (JSON)", watch},
	{"rr", "request/response latency over persistent plain TCP connections to an echo sink", rr},
	{"connrate", "new connections per second: connect, write, read, close, against an echo sink", connrate},
	{"bulk", "throughput: write to a discard sink for a duration, report Gbit/s", bulk},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: agent <subcommand> [flags]\n\nsubcommands:")
	for _, s := range subcommands {
		fmt.Fprintf(w, "  %-9s %s\n", s.name, s.summary)
	}
	fmt.Fprintln(w, "\nagent <subcommand> --help shows its flags.")
}

// run dispatches a command line; main only wires it to the process.
func run(ctx context.Context, stdout, stderr io.Writer, args []string) error {
	if len(args) == 0 {
		usage(stderr)
		return usageError{errors.New("no subcommand")}
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return nil
	}
	for _, s := range subcommands {
		if s.name == args[0] {
			err := s.run(ctx, stdout, stderr, args[1:])
			if errors.Is(err, pflag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	usage(stderr)
	return usageError{fmt.Errorf("unknown subcommand %q", args[0])}
}

func newFlagSet(name string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("agent "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	return fs
}

func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	return nil
}

// tlsFlags are shared by the HTTPS subcommands.
type tlsFlags struct {
	url       string
	ca        string
	cert, key string
	insecure  bool
	token     string
	tokenFile string
	timeout   time.Duration
}

func (t *tlsFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&t.url, "url", "https://10.10.10.100:6443", "API server (or load balancer) URL")
	fs.StringVar(&t.ca, "ca", "", "CA PEM to verify the server (default: system roots)")
	fs.StringVar(&t.cert, "cert", "", "client certificate PEM")
	fs.StringVar(&t.key, "key", "", "client key PEM")
	fs.BoolVar(&t.insecure, "insecure", false, "do not verify the server certificate")
	fs.StringVar(&t.token, "token", "", "bearer token")
	fs.StringVar(&t.tokenFile, "token-file", "", "read the bearer token from this file")
	fs.DurationVar(&t.timeout, "timeout", agent.DefaultTimeout, "bound on connect + TLS handshake + response headers")
}

func (t *tlsFlags) client() (*agent.Client, error) {
	cfg, err := agent.TLSConfig(t.ca, t.cert, t.key, t.insecure)
	if err != nil {
		return nil, err
	}
	tok := t.token
	if t.tokenFile != "" {
		if tok != "" {
			return nil, usageError{errors.New("--token and --token-file are exclusive")}
		}
		b, err := os.ReadFile(t.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if t.timeout <= 0 {
		return nil, usageError{errors.New("--timeout must be positive")}
	}
	return &agent.Client{TLS: cfg, Token: tok, Timeout: t.timeout}, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
