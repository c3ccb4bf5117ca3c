// Command mockapi is a mock K3s API server for the xdplb tests, demo and
// benchmarks (see tests/apiserver).
//
//	mockapi --name server-1 --cert server.crt --key server.key [--token T] [--ca ca.crt]
//	mockapi --listen "" --echo-listen :6443          # plain TCP echo sink for benchmarks
//	mockapi --gen-pki DIR [--san server-1 --san 10.10.10.50 ...]
//
// It prints one line starting with "listening" to stdout once every listener
// is bound. SIGUSR1 makes /readyz answer 503, SIGUSR2 200 again; SIGTERM or
// SIGINT end it cleanly (exit 0), a second one at once.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)
	err := mockapi(context.Background(), os.Stdout, os.Stderr, os.Args[1:], sigs)
	os.Exit(exitCode(err, os.Stderr))
}

// usageError marks bad command lines (exit status 2).
type usageError struct{ error }

func exitCode(err error, stderr io.Writer) int {
	switch err.(type) {
	case nil:
		return 0
	case usageError:
		fmt.Fprintln(stderr, "mockapi:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "mockapi:", err)
		return 1
	}
}
