package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/tests/testnet"
)

// InstanceConfig is how an xdplb instance runs. The zero value balances
// the VIP over every server with the daemon's defaults.
type InstanceConfig struct {
	// Tag tells apart instances made one after another on the same LB
	// (1-12 characters of a-z and 0-9); empty for the LB's first.
	Tag string
	// Frontend is --vip; the zero Addr means the VIP.
	Frontend netip.Addr
	// Backends are the --backend addresses; nil means every server.
	Backends []netip.Addr
	// Args are more `xdplb run` flags (--hook, --check, --inter, ...).
	Args []string
	// ConfigFile, if set, is passed as --config, and the backends are
	// left to it (no --backend flags, which a reload would apply again
	// over the file's list).
	ConfigFile string
	// ReadyTimeout bounds how long Start waits for `xdplb check` to
	// pass; zero means 10 s.
	ReadyTimeout time.Duration
	// Wrap, if set, rewrites the daemon's command line (argv[0] is the
	// binary) before it starts, e.g. to prepend prlimit.
	Wrap func(argv []string) []string
}

const (
	defaultReadyTimeout = 10 * time.Second
	// cliTimeout bounds every CLI command the lab runs.
	cliTimeout = 30 * time.Second
	// stopGrace is how long Close waits after SIGTERM.
	stopGrace = 5 * time.Second
)

var validTag = regexp.MustCompile(`^[a-z0-9]{1,12}$`)

// Instance is one xdplb instance on an LB host: a unique instance name, a
// private bpffs mount, and the daemon the lab started for it, if any.
type Instance struct {
	// Host is the LB host the instance runs on.
	Host *testnet.Host
	// Name is the instance name ("<prefix>-lb1[-tag]"), unique on the
	// machine because the network prefix is.
	Name string
	// BPFFS is the private bpffs mount the instance pins under.
	BPFFS string
	// Bin is the xdplb binary Start runs and the CLI uses; StartBin
	// changes it.
	Bin string
	// Config is how the instance runs.
	Config InstanceConfig

	lab    *Lab
	mu     sync.Mutex
	proc   *testnet.Process
	closed bool
}

// NewInstance prepares an instance on lb: it mounts a private bpffs for it
// and registers it with the lab, which closes it. Nothing runs yet.
func (l *Lab) NewInstance(lb *testnet.Host, c InstanceConfig) (*Instance, error) {
	if c.Tag != "" && !validTag.MatchString(c.Tag) {
		return nil, fmt.Errorf("lab: instance tag %q: want 1-12 characters of a-z and 0-9", c.Tag)
	}
	l.mu.Lock()
	closed, dir := l.closed, l.dir
	l.mu.Unlock()
	if closed || dir == "" {
		return nil, errors.New("lab: closed")
	}
	name := instanceName(l.Prefix, lb.Name, c.Tag)
	if err := bpf.ValidateInstance(name); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	mnt, err := os.MkdirTemp(dir, "bpffs-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, ""); err != nil {
		os.Remove(mnt)
		return nil, fmt.Errorf("lab: mount bpffs on %s: %w", mnt, err)
	}
	in := &Instance{Host: lb, Name: name, BPFFS: mnt, Bin: l.Bin.XDPLB, Config: c, lab: l}
	l.mu.Lock()
	l.instances = append(l.instances, in)
	l.mu.Unlock()
	return in, nil
}

// instanceName is "<prefix>-<host without dashes>[-<tag>]".
func instanceName(prefix, host, tag string) string {
	name := prefix + "-" + strings.ReplaceAll(host, "-", "")
	if tag != "" {
		name += "-" + tag
	}
	return name
}

// RunArgs is the `xdplb run` command line of the instance (starting with
// "run"): its instance and bpffs, eth1, the frontend, the backends, no
// metrics listener, then Config.Args.
func (in *Instance) RunArgs() []string {
	return runArgs(in.Name, in.BPFFS, in.Config, in.lab.Servers)
}

func runArgs(name, bpffs string, c InstanceConfig, servers []*testnet.Host) []string {
	front := c.Frontend
	if !front.IsValid() {
		front = testnet.VIPAddr()
	}
	args := []string{"run", "--instance", name, "--bpffs", bpffs,
		"--iface", testnet.HostIface, "--vip", front.String()}
	if c.ConfigFile != "" {
		return append(append(args, "--config", c.ConfigFile), c.Args...)
	}
	args = append(args, "--metrics-addr", "")
	backends := c.Backends
	if backends == nil {
		for _, s := range servers {
			backends = append(backends, s.IP())
		}
	}
	for _, b := range backends {
		args = append(args, "--backend", b.String())
	}
	return append(args, c.Args...)
}

// cliArgs puts the instance's --instance and --bpffs after the subcommand.
func cliArgs(name, bpffs string, args []string) []string {
	out := append([]string{}, args[:min(1, len(args))]...)
	out = append(out, "--instance", name, "--bpffs", bpffs)
	if len(args) > 1 {
		out = append(out, args[1:]...)
	}
	return out
}

// Start starts the daemon with Bin and waits until `xdplb check` passes.
func (in *Instance) Start() error { return in.StartBin(in.Bin) }

// StartBin starts the daemon with the xdplb binary bin (an upgrade: a
// binary other than the last one) and waits until `xdplb check` passes;
// bin becomes the instance's Bin.
func (in *Instance) StartBin(bin string) error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return errors.New("lab: instance closed")
	}
	if in.proc != nil && !in.proc.Exited() {
		in.mu.Unlock()
		return fmt.Errorf("lab: instance %s already runs %s", in.Name, in.proc)
	}
	in.Bin = bin
	in.mu.Unlock()
	argv := append([]string{bin}, in.RunArgs()...)
	if in.Config.Wrap != nil {
		argv = in.Config.Wrap(argv)
	}
	p, err := in.Host.Start(argv[0], argv[1:]...)
	if err != nil {
		return err
	}
	in.mu.Lock()
	in.proc = p
	in.mu.Unlock()
	timeout := in.Config.ReadyTimeout
	if timeout == 0 {
		timeout = defaultReadyTimeout
	}
	return in.WaitReady(timeout)
}

// WaitReady polls `xdplb check --quiet` every 50 ms until it passes, and
// fails when the daemon exits or timeout passes first.
func (in *Instance) WaitReady(timeout time.Duration) error {
	p := in.Process()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := in.CLI("check", "--quiet"); err == nil {
			return nil
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("lab: xdplb %s on %s exited before it was ready: %v\n%s", in.Name, in.Host.Name, p.Wait(), tail(p.Stderr(), 4000))
		}
		if time.Now().After(deadline) {
			stderr := ""
			if p != nil {
				stderr = tail(p.Stderr(), 4000)
			}
			return fmt.Errorf("lab: xdplb %s on %s not ready within %v\n%s", in.Name, in.Host.Name, timeout, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Process returns the daemon the lab last started, running or not, or nil.
func (in *Instance) Process() *testnet.Process {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.proc
}

// Stop sends the daemon SIGTERM and waits up to grace before killing it
// (see testnet.Process.Stop). The data path stays attached.
func (in *Instance) Stop(grace time.Duration) error {
	if p := in.Process(); p != nil {
		return p.Stop(grace)
	}
	return nil
}

// Kill kills the daemon (SIGKILL), as a crash would.
func (in *Instance) Kill() error {
	if p := in.Process(); p != nil {
		return p.Kill()
	}
	return nil
}

// CLI runs `xdplb args...` with Bin in the LB's namespace against this
// instance and returns its combined output.
func (in *Instance) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	return in.CLIContext(ctx, args...)
}

// CLIContext is CLI bounded by ctx.
func (in *Instance) CLIContext(ctx context.Context, args ...string) (string, error) {
	out, err := in.Host.Exec(ctx, in.bin(), cliArgs(in.Name, in.BPFFS, args)...)
	return string(out), err
}

func (in *Instance) bin() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.Bin
}

// StatusJSON is the output of `xdplb status --json`.
func (in *Instance) StatusJSON() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	out, err := in.Host.Output(ctx, in.bin(), cliArgs(in.Name, in.BPFFS, []string{"status", "--json"})...)
	if err != nil {
		return nil, fmt.Errorf("lab: xdplb status: %w", err)
	}
	return out, nil
}

// Status reads `xdplb status --json`.
func (in *Instance) Status() (daemon.Status, error) {
	out, err := in.StatusJSON()
	if err != nil {
		return daemon.Status{}, err
	}
	return parseStatus(out)
}

func parseStatus(b []byte) (daemon.Status, error) {
	var st daemon.Status
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("lab: status json: %w: %s", err, tail(string(b), 500))
	}
	return st, nil
}

// BackendState is the state Status reports for the backend at addr (any
// port), or "" when it lists no such backend.
func BackendState(st daemon.Status, addr netip.Addr) daemon.State {
	for _, b := range st.Backends {
		if strings.HasPrefix(b.Addr, addr.String()+":") {
			return b.State
		}
	}
	return ""
}

// WaitBackend polls the status every 25 ms until the backend at addr is in
// state, and returns how long that took. It fails when limit passes first
// or the status cannot be read.
func (in *Instance) WaitBackend(addr netip.Addr, state daemon.State, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		st, err := in.Status()
		if err != nil {
			return time.Since(start), err
		}
		if BackendState(st, addr) == state {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return time.Since(start), fmt.Errorf("backend %s not %s within %s (status: %+v)", addr, state, limit, st.Backends)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Detach runs `xdplb detach`: it stops a running daemon and removes the
// program, pins and state of the instance.
func (in *Instance) Detach() error {
	if out, err := in.CLI("detach"); err != nil {
		return fmt.Errorf("lab: xdplb detach %s: %w: %s", in.Name, err, out)
	}
	return nil
}

// Close stops the daemon, detaches the instance and unmounts its bpffs.
// Only a failed unmount is an error: the network goes with the lab, and a
// daemon that exits badly or a failed detach is logged, for the test to
// assert on if it cares. It is safe to call more than once.
func (in *Instance) Close() error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil
	}
	in.closed = true
	p := in.proc
	in.mu.Unlock()
	if p != nil {
		if err := p.Stop(stopGrace); err != nil {
			in.lab.logf("lab: stop xdplb %s: %v", in.Name, err)
		}
	}
	if err := in.Detach(); err != nil {
		in.lab.logf("%v", err)
	}
	// EINVAL: nothing is mounted there any more (a test unmounted it).
	if err := unix.Unmount(in.BPFFS, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("lab: unmount %s: %w", in.BPFFS, err)
	}
	if err := os.Remove(in.BPFFS); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	// The daemon's lock file: never removed by a daemon, and this
	// instance's name is used once.
	if err := os.Remove(daemon.LockPath(in.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// PinDir is where the instance pins its objects on its bpffs.
func (in *Instance) PinDir() string {
	dir, _ := bpf.InstanceDir(in.BPFFS, in.Name) // the name was validated by NewInstance
	return dir
}

// SocketPath is the daemon's control socket.
func (in *Instance) SocketPath() string { return daemon.SocketPath(in.Name) }

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
