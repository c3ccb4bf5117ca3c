package lab

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/xdplb/xdplb/tests/apiserver"
	"github.com/xdplb/xdplb/tests/testnet"
)

// ServerKind is what a server host runs on the API port.
type ServerKind string

const (
	// API is the mock K3s API server over TLS with the lab's certificate,
	// /readyz, /healthz and /livez answered without credentials.
	API ServerKind = "api"
	// Echo is a plain TCP echo sink (bulk data tests, rr/connrate loads).
	Echo ServerKind = "echo"
	// Discard is a plain TCP discard sink (bulk loads).
	Discard ServerKind = "discard"
)

// serverTimeout bounds how long a mock server may take to print its
// "listening" line.
const serverTimeout = 10 * time.Second

// serverArgs is the mockapi command line for kind on host name.
func serverArgs(kind ServerKind, name string, pki *apiserver.PKI) ([]string, error) {
	port := fmt.Sprintf(":%d", testnet.APIPort)
	switch kind {
	case API:
		if pki == nil {
			return nil, errors.New("lab: the API server needs the lab's PKI")
		}
		return []string{"--name", name, "--listen", port,
			"--cert", pki.ServerCert, "--key", pki.ServerKey, "--public-readyz"}, nil
	case Echo:
		return []string{"--name", name, "--listen", "", "--echo-listen", port}, nil
	case Discard:
		return []string{"--name", name, "--listen", "", "--discard-listen", port}, nil
	}
	return nil, fmt.Errorf("lab: unknown server kind %q (want %q, %q or %q)", kind, API, Echo, Discard)
}

// StartServer starts a mock server of kind on server-i (1-based) and
// returns once it listens. A server the lab started there before is
// stopped first, if it still runs.
func (l *Lab) StartServer(i int, kind ServerKind) (*testnet.Process, error) {
	p, err := l.startServer(i, kind)
	if err != nil {
		return nil, err
	}
	return p, waitListening(p)
}

// StartServers starts a mock server of kind on every server host, all
// together, and returns once they all listen.
func (l *Lab) StartServers(kind ServerKind) error {
	var started []*testnet.Process
	for i := range l.Servers {
		p, err := l.startServer(i+1, kind)
		if err != nil {
			return err
		}
		started = append(started, p)
	}
	for _, p := range started {
		if err := waitListening(p); err != nil {
			return err
		}
	}
	return nil
}

// ServerProcess returns the mock server the lab last started on server-i
// (1-based), running or not, or nil.
func (l *Lab) ServerProcess(i int) *testnet.Process {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.servers[i]
}

func (l *Lab) startServer(i int, kind ServerKind) (*testnet.Process, error) {
	h := l.Server(i)
	if h == nil {
		return nil, fmt.Errorf("lab: no server-%d (the network has %d servers)", i, len(l.Servers))
	}
	args, err := serverArgs(kind, h.Name, l.PKI)
	if err != nil {
		return nil, err
	}
	if old := l.ServerProcess(i); old != nil {
		if err := old.Stop(2 * time.Second); err != nil {
			l.logf("lab: stop the old server on %s: %v", h.Name, err)
		}
	}
	argv := append([]string{l.Bin.MockAPI}, args...)
	if l.opts.WrapServer != nil {
		argv = l.opts.WrapServer(argv)
	}
	p, err := h.Start(argv[0], argv[1:]...)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.servers[i] = p
	l.mu.Unlock()
	return p, nil
}

func waitListening(p *testnet.Process) error {
	ctx, cancel := context.WithTimeout(context.Background(), serverTimeout)
	defer cancel()
	if err := p.WaitOutput(ctx, "listening"); err != nil {
		return fmt.Errorf("lab: mock server did not start: %w", err)
	}
	return nil
}
