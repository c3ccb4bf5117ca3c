// Command agent is the client side of the xdplb tests, demo and benchmarks
// (see tests/agent). It plays K3s agents in front of the load balancer:
//
//	agent whoami   --url https://10.10.10.100:6443 -n 300 -c 10 --ca ca.crt
//	agent watch    --url https://10.10.10.100:6443 -n 30 --duration 20s --ca ca.crt
//	agent rr       --addr 10.10.10.100:6443 -c 1 --duration 10s
//	agent connrate --addr 10.10.10.100:6443 -c 16 --duration 10s
//	agent bulk     --addr 10.10.10.100:6443 -c 4 --duration 10s
//
// Every subcommand is bounded by --duration and/or -n and stops by itself;
// SIGINT/SIGTERM stop it early and still print the result. Run it inside an
// agent's network namespace (nsenter --net=/run/netns/NAME agent ...).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Stdout, os.Stderr, os.Args[1:])
	stop()
	os.Exit(exitCode(err, os.Stderr))
}
