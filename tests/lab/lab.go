// Package lab is the one test lab of xdplb, shared by the end-to-end tests
// (tests/e2e), the demo (tests/demo) and the benchmarks (bench/cmd/lbbench):
// the K3s guide's network in namespaces (tests/testnet), the test PKI, mock
// API servers or echo/discard sinks on the servers, and xdplb instances on
// the LBs, each on a private bpffs mount under a unique instance name,
// started, checked for readiness with `xdplb check`, driven with the CLI and
// read through `xdplb status --json`.
//
// It builds the binaries it runs once per process (Build), or takes them
// from $XDPLB_E2E_BIN.
//
// A test calls New, which skips unless root and cleans up with t.Cleanup;
// a program calls Create and must Close the lab (also on a signal), as with
// testnet.New and testnet.Create.
//
// What the lab may touch: the namespaces testnet creates (never the root
// network namespace), the bpffs mounts it makes itself (unmounted by Close),
// the processes it starts (stopped by PID), the directories it creates.
// Pins are removed by `xdplb detach`, never by deleting files.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/apiserver"
	"github.com/xdplb/xdplb/tests/testenv"
	"github.com/xdplb/xdplb/tests/testnet"
)

// Options configure a lab. The zero value is the guide's network with the
// VIP on lb-1.
type Options struct {
	// Spec chooses the hosts; the zero Spec means testnet.Guide.
	Spec testnet.Spec
	// Net configures the network: namespace prefix, logging.
	Net testnet.Options
	// NoVIP leaves the VIP off lb-1 (keepalived places it, or the
	// frontend is a node address).
	NoVIP bool
	// WrapServer, if set, rewrites the command line of every mock server
	// before it starts (e.g. to prepend taskset).
	WrapServer func(argv []string) []string
}

// Binaries are the programs a lab runs.
type Binaries struct {
	XDPLB   string // cmd/xdplb
	MockAPI string // tests/cmd/mockapi
}

// Lab is a network with its servers and xdplb instances.
type Lab struct {
	*testnet.Topology
	// Bin are the binaries the lab runs.
	Bin Binaries
	// PKI is the test PKI: a CA, one server certificate valid for every
	// server, LB and the VIP, a client certificate and a token.
	PKI *apiserver.PKI

	opts Options
	dir  string // the lab's own temporary directory

	mu        sync.Mutex
	servers   map[int]*testnet.Process
	instances []*Instance
	closed    bool
}

// buildTimeout bounds the builds of a lab's binaries.
const buildTimeout = 5 * time.Minute

// Create builds the binaries (or finds them in $XDPLB_E2E_BIN), the
// network and the PKI, and puts the VIP on lb-1. The caller must Close the
// lab: defer it, and call it from a signal handler too.
func Create(o Options) (_ *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root (network namespaces, bpffs mounts, XDP programs)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	bin, err := buildBinaries(ctx)
	if err != nil {
		return nil, err
	}
	topo, err := testnet.CreateTopology(o.Net, o.spec())
	if err != nil {
		return nil, err
	}
	l := newLab(topo, bin, o)
	if err := l.setUp(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// New is Create for tests: it skips tb unless root, fails it on error, and
// closes the lab in tb.Cleanup (after logging the instances' status when
// tb failed).
func New(tb testing.TB, o Options) *Lab {
	tb.Helper()
	testenv.RequireRoot(tb, "creates network namespaces, mounts bpffs, attaches XDP programs")
	if o.Net.Logf == nil {
		o.Net.Logf = tb.Logf
	}
	bin := Binaries{XDPLB: MustBuild(tb, XDPLB), MockAPI: MustBuild(tb, MockAPI)}
	// testnet registers its own Close (and the processes' output on
	// failure) first, so the lab's cleanup below runs before it.
	topo := testnet.NewTopology(tb, o.Net, o.spec())
	l := newLab(topo, bin, o)
	tb.Cleanup(func() {
		if tb.Failed() {
			l.logStatus(tb)
		}
		if err := l.Close(); err != nil {
			tb.Errorf("lab: close: %v", err)
		}
	})
	if err := l.setUp(); err != nil {
		tb.Fatal(err)
	}
	return l
}

func (o Options) spec() testnet.Spec {
	if o.Spec == (testnet.Spec{}) {
		return testnet.Guide
	}
	return o.Spec
}

func buildBinaries(ctx context.Context) (Binaries, error) {
	var b Binaries
	var err error
	if b.XDPLB, err = Build(ctx, XDPLB); err != nil {
		return b, err
	}
	b.MockAPI, err = Build(ctx, MockAPI)
	return b, err
}

func newLab(topo *testnet.Topology, bin Binaries, o Options) *Lab {
	return &Lab{Topology: topo, Bin: bin, opts: o, servers: map[int]*testnet.Process{}}
}

func (l *Lab) setUp() error {
	dir, err := os.MkdirTemp("", "xdplb-lab-"+l.Prefix+"-")
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.mu.Lock()
	l.dir = dir
	l.mu.Unlock()
	if l.PKI, err = apiserver.WritePKI(dir, pkiNames(l.Topology)...); err != nil {
		return fmt.Errorf("lab: write the test PKI: %w", err)
	}
	if !l.opts.NoVIP && len(l.LBs) > 0 {
		if err := l.LB(1).AddAddr(testnet.VIP + "/24"); err != nil {
			return err
		}
	}
	return nil
}

// pkiNames are the names the server certificate is valid for besides
// apiserver.DefaultSANs: every server and LB, by name and address.
func pkiNames(t *testnet.Topology) []string {
	var names []string
	for _, h := range append(append([]*testnet.Host{}, t.Servers...), t.LBs...) {
		names = append(names, h.Name, h.IP().String())
	}
	return names
}

func (l *Lab) logf(format string, args ...any) {
	if l.opts.Net.Logf != nil {
		l.opts.Net.Logf(format, args...)
	}
}

// Frontend is the address agents connect to by default: the VIP on the
// API port.
func Frontend() netip.AddrPort { return netip.AddrPortFrom(testnet.VIPAddr(), testnet.APIPort) }

// Close stops and detaches every instance, unmounts their bpffs, closes the
// network (which stops every process started in it) and removes the lab's
// directory. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	instances := l.instances
	dir := l.dir
	l.mu.Unlock()

	var errs []error
	for i := len(instances) - 1; i >= 0; i-- {
		errs = append(errs, instances[i].Close())
	}
	errs = append(errs, l.Topology.Close())
	// Never walk into a bpffs that is still mounted: remove the directory
	// only when every instance unmounted its own.
	if dir != "" {
		if err := errors.Join(errs...); err != nil {
			errs = append(errs, fmt.Errorf("lab: left %s in place", dir))
		} else if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// logStatus logs what every running instance reports, for a failed test.
func (l *Lab) logStatus(tb testing.TB) {
	l.mu.Lock()
	instances := append([]*Instance(nil), l.instances...)
	l.mu.Unlock()
	for _, in := range instances {
		if p := in.Process(); p == nil || p.Exited() {
			continue
		}
		out, err := in.CLI("status")
		tb.Logf("lab: xdplb status of %s on %s (%v):\n%s", in.Name, in.Host.Name, err, out)
	}
}
