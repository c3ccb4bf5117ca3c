package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/balancer"
	"github.com/xdplb/xdplb/loader"
)

// RunDir holds the control sockets.
var RunDir = "/run/xdplb"

// SocketPath is the control socket of an instance.
func SocketPath(instance string) string { return filepath.Join(RunDir, instance+".sock") }

// Request is one command on the control socket (one JSON object a line).
type Request struct {
	Cmd string `json:"cmd"` // status, check, drain, enable, weight, reload, shutdown
	// Addr names a backend: its name, "ip" (the frontend port) or "ip:port".
	Addr   string `json:"addr,omitempty"`
	Weight uint32 `json:"weight,omitempty"`
	// Backends, with check: also fail when no backend can take new
	// connections (every one down or drained).
	Backends bool `json:"backends,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK     bool          `json:"ok"`
	Error  string        `json:"error,omitempty"`
	Status *Status       `json:"status,omitempty"`
	Reload *ReloadResult `json:"reload,omitempty"`
	// Backend is the backend a drain, enable or weight acted on.
	Backend string `json:"backend,omitempty"`
}

// Status is what `xdplb status` shows.
type Status struct {
	Instance    string            `json:"instance"`
	Version     string            `json:"version"`
	PID         int               `json:"pid"`
	Started     time.Time         `json:"started"`
	Iface       string            `json:"iface"`
	Frontend    string            `json:"frontend"`
	FrontendIs  string            `json:"frontend_is"` // "vip" or "node address"
	SNATPorts   string            `json:"snat_ports"`
	CheckSource string            `json:"check_source"`
	Check       string            `json:"check"`
	Attachment  loader.Attachment `json:"attachment"`
	Attached    bool              `json:"attached"`
	AttachError string            `json:"attach_error,omitempty"`
	Backends    []BackendStatus   `json:"backends"`
	Flows       map[string]int    `json:"flows"` // entries per table, at the last GC
	Counters    map[string]uint64 `json:"counters"`
	// Table is the connection table's load, at the last GC.
	Table TableStatus `json:"table"`
	// LinkUp: the frontend interface is up. While it is not, checks are
	// not counted (LocalFaults counts them).
	LinkUp      bool   `json:"link_up"`
	LocalFaults uint64 `json:"checks_not_counted"`
	// FDs and FDLimit are the daemon's open file descriptors and limit.
	FDs     int    `json:"fds"`
	FDLimit uint64 `json:"fd_limit"`
	// Reload is the last reload, if any.
	Reload *ReloadResult `json:"reload,omitempty"`
	// Config is the configuration file the daemon reads at a reload.
	Config string `json:"config,omitempty"`
	// AllDown is the all-down policy (open or drop); FailingOpen says
	// that no backend can take new connections as far as this node sees
	// and new connections go to every configured backend anyway.
	AllDown     string `json:"all_down"`
	FailingOpen bool   `json:"failing_open"`
	// Sync is flow sync with the peer LB (absent when not configured).
	Sync *SyncStatus `json:"sync,omitempty"`
}

// TableStatus is the connection table's load.
type TableStatus struct {
	balancer.Pressure
	// MaxPerClient is the per-client cap (0: none).
	MaxPerClient uint32 `json:"max_per_client"`
	// ReclaimedTotal counts the connections reclaimed since start.
	ReclaimedTotal int `json:"reclaimed_total"`
}

// State is a backend's state as status shows it.
type State string

const (
	// StateUp: healthy, taking new connections.
	StateUp State = "UP"
	// StateDown: failed its checks; no new connections.
	StateDown State = "DOWN"
	// StateDrain: healthy, but drained by the operator (or weight 0): no
	// new connections, established ones stay.
	StateDrain State = "DRAIN"
	// StateRetiring: removed from the configuration: no new connections;
	// it goes once its established ones have ended.
	StateRetiring State = "RETIRING"
)

// States are the backend states, in the order metrics list them.
var States = []State{StateUp, StateDown, StateDrain, StateRetiring}

// BackendStatus is one backend in Status.
type BackendStatus struct {
	Addr        string  `json:"addr"`
	Name        string  `json:"name,omitempty"`
	ID          uint32  `json:"id"`
	State       State   `json:"state"`
	Weight      uint32  `json:"weight"`
	Health      string  `json:"health"`
	Connections int     `json:"connections"`
	HalfOpen    int     `json:"half_open"`
	Packets     uint64  `json:"packets"`
	Bytes       uint64  `json:"bytes"`
	NewFlows    uint64  `json:"new_flows"`
	CheckMillis float64 `json:"check_ms"`
	NextHop     string  `json:"next_hop"`
	Refused     bool    `json:"refused"`
	// Drained by the operator (weight 0 shows as DRAIN too).
	Drained bool `json:"drained,omitempty"`
	// Unreachable: its last check failed because of this node (out of
	// descriptors, no route, link down): it keeps its state, but this
	// node cannot reach it now.
	Unreachable bool `json:"unreachable,omitempty"`
}

// noBackendWhy says why this node sees no backend that can take a new
// connection, or "" when it sees one: up, not drained, of a weight above
// 0, and reached by its last check (a backend this node cannot reach now,
// its own fault, keeps its state but does not count here: `check
// --backends` then lowers this node's VRRP priority so that a peer that
// reaches the servers takes the VIP).
func noBackendWhy(bs []BackendStatus) string {
	if len(bs) == 0 {
		return "no backend configured"
	}
	var why []string
	for _, b := range bs {
		health := b.Health // "backend ADDR STATE: detail (n/m)"
		if i := strings.Index(health, ": "); i >= 0 {
			health = health[i+2:]
		}
		switch {
		case b.State == StateUp && !b.Unreachable:
			return ""
		case b.State == StateUp:
			why = append(why, fmt.Sprintf("%s UP but not reachable from this node (%s)", b.Addr, health))
		case b.State == StateDown:
			why = append(why, fmt.Sprintf("%s DOWN (%s)", b.Addr, health))
		case b.State == StateRetiring:
			why = append(why, b.Addr+" RETIRING (removed from the configuration)")
		case b.Drained:
			why = append(why, b.Addr+" DRAIN (drained by the operator)")
		default:
			why = append(why, b.Addr+" DRAIN (weight 0)")
		}
	}
	return "no backend can take new connections: " + strings.Join(why, "; ")
}

// controlSocket is the daemon's listener on its control socket, with the
// identity of the file it made, so that it removes that file and never
// one a later daemon made.
type controlSocket struct {
	net.Listener
	path string
	ino  uint64
}

// listenControl makes the instance's control socket. The caller holds the
// instance's lock, so a socket file found there is a dead daemon's.
func listenControl(instance string) (*controlSocket, error) {
	if err := bpf.ValidateInstance(instance); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", RunDir, err)
	}
	path := SocketPath(instance)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove the stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Removal is ours (see close): never an unconditional unlink.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, err
	}
	cs := &controlSocket{Listener: ln, path: path}
	if fi, err := os.Stat(path); err == nil {
		cs.ino = inode(fi)
	}
	return cs, nil
}

// close stops listening and removes the socket file if it is still the one
// this daemon made.
func (cs *controlSocket) close() {
	cs.Listener.Close()
	if fi, err := os.Stat(cs.path); err == nil && inode(fi) == cs.ino && cs.ino != 0 {
		os.Remove(cs.path)
	}
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// Limits of the control socket: what a request may be, how many
// connections are served at once, and how long one may take.
const (
	maxRequest     = 64 << 10
	maxControlConn = 64
	controlTimeout = 10 * time.Second
)

// serveControl answers the control socket until ctx ends. An accept error
// (out of file descriptors, say) never ends it: it waits, from 5 ms up
// to 1 s, and accepts again, so `xdplb check` works again as soon as the
// node has descriptors again (issue 10 §1: it used to stop for good).
func (d *Daemon) serveControl(ctx context.Context, ln net.Listener) {
	var delay time.Duration
	var lastLog time.Time
	slots := make(chan struct{}, maxControlConn)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if time.Since(lastLog) > 10*time.Second {
				d.log.Warn("control socket: accept failed; retrying", "err", err, "in", delay)
				lastLog = time.Now()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		select {
		case slots <- struct{}{}:
		default:
			json.NewEncoder(c).Encode(Response{Error: "busy: too many control connections"})
			c.Close()
			continue
		}
		go func() {
			defer func() { <-slots }()
			d.handleConn(c)
		}()
	}
}

// handleConn answers one request: one JSON object of at most maxRequest
// bytes, within controlTimeout.
func (d *Daemon) handleConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(controlTimeout))
	var req Request
	lr := &io.LimitedReader{R: c, N: maxRequest}
	if err := json.NewDecoder(lr).Decode(&req); err != nil {
		msg := "bad request: " + err.Error()
		if lr.N <= 0 {
			msg = fmt.Sprintf("bad request: larger than %d bytes", maxRequest)
		}
		json.NewEncoder(c).Encode(Response{Error: msg})
		return
	}
	json.NewEncoder(c).Encode(d.handle(req))
}

func (d *Daemon) handle(req Request) Response {
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Cmd {
	case "status":
		st := d.status()
		return Response{OK: true, Status: &st}
	case "check":
		st := d.status()
		if !st.Attached {
			return Response{Error: "program not attached: " + st.AttachError, Status: &st}
		}
		if st.Sync != nil && !st.Sync.GateOpen {
			return Response{Error: st.Sync.GateWhy, Status: &st}
		}
		if req.Backends {
			if why := noBackendWhy(st.Backends); why != "" {
				return Response{Error: why, Status: &st}
			}
		}
		return Response{OK: true, Status: &st}
	case "reload":
		r := d.reload("xdplb reload")
		return Response{OK: r.OK, Error: r.Error, Reload: &r}
	case "drain", "enable", "weight":
		addr, err := d.parseBackend(req.Addr)
		if err != nil {
			return fail(err)
		}
		label := addr.String()
		if b, ok := d.bal.Lookup(addr); ok {
			label = b.Label()
		}
		switch req.Cmd {
		case "drain":
			err = d.bal.SetDrained(addr, true)
		case "enable":
			err = d.bal.SetDrained(addr, false)
		default:
			err = d.bal.SetWeight(addr, req.Weight)
		}
		if err != nil {
			return fail(err)
		}
		if req.Cmd == "weight" {
			d.log.Info("backend weight", "backend", label, "weight", req.Weight)
		} else {
			d.log.Info("backend "+req.Cmd, "backend", label)
		}
		d.notifyStatus()
		return Response{OK: true, Backend: label}
	case "shutdown":
		d.stop()
		return Response{OK: true}
	}
	return fail(fmt.Errorf("unknown command %q", req.Cmd))
}

// parseBackend accepts a backend's name, "ip" (the frontend port) or
// "ip:port".
func (d *Daemon) parseBackend(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	for _, b := range d.bal.Backends() {
		if b.Name != "" && b.Name == s {
			return b.Addr, nil
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("backend %q: no backend of that name; want a name, ip or ip:port", s)
	}
	return netip.AddrPortFrom(a, d.config().Port), nil
}

func (d *Daemon) status() Status {
	cfg := d.config()
	st := Status{
		Instance: cfg.Instance, Version: Version, PID: os.Getpid(), Started: d.started,
		Iface: cfg.Iface, Frontend: d.node.data.Frontend.String(), SNATPorts: d.node.snat.String(),
		CheckSource: d.node.source.String(), Check: string(cfg.Check), Attachment: d.attachment(),
		Counters: map[string]uint64{}, Flows: map[string]int{},
		LinkUp: true, LocalFaults: d.localFaults.Load(),
		Reload: d.lastReloadResult(), Config: d.opts.ConfigPath,
	}
	if d.parts.link != nil {
		st.LinkUp, _, _ = d.parts.link.LinkState()
	}
	st.FDs, st.FDLimit = openFiles()
	st.FrontendIs = "vip"
	if d.node.local {
		st.FrontendIs = "node address"
	}
	if att, err := d.parts.attached(); err != nil {
		st.AttachError = err.Error()
	} else {
		st.Attached = true
		st.Attachment.Mode, st.Attachment.ProgID = att.Mode, att.ProgID
	}
	d.gcMu.Lock()
	gc := d.lastGC
	st.Table = TableStatus{Pressure: gc.Pressure, MaxPerClient: d.node.data.MaxConnsPerClient, ReclaimedTotal: d.reclaimed}
	d.gcMu.Unlock()
	if st.Table.Capacity == 0 { // before the first GC
		st.Table.Capacity = int(d.parts.dp.TableCapacity(bpf.TableEstablished) / 2)
	}
	for t, n := range gc.Entries {
		st.Flows[t.String()] = n
	}
	refused, _ := d.bal.Refused()
	for _, b := range d.bal.Backends() {
		bs := BackendStatus{Addr: b.Addr.String(), Name: b.Name, ID: b.ID, Weight: b.Weight,
			Connections: gc.Connections[b.ID], HalfOpen: gc.HalfOpen[b.ID]}
		switch {
		case !b.Up:
			bs.State = StateDown
		case b.Retired:
			bs.State = StateRetiring
		case !b.TakesNew():
			bs.State = StateDrain
		default:
			bs.State = StateUp
		}
		bs.Drained = b.Drained
		if ms, ok := d.mon.Status(b.Addr.String()); ok {
			bs.Health = ms.Line
			bs.Unreachable = ms.LocalFault
		}
		if c, err := d.parts.dp.BackendCounters(b.ID); err == nil {
			bs.Packets, bs.Bytes, bs.NewFlows = c.Packets, c.Bytes, c.NewFlows
		}
		if v, ok := d.latency.Load(b.Addr.String()); ok {
			bs.CheckMillis = float64(v.(time.Duration).Microseconds()) / 1000
		}
		if b.NextHop != nil {
			bs.NextHop = net.HardwareAddr(b.NextHop.MAC[:]).String() + " if " + strconv.Itoa(int(b.NextHop.Ifindex))
		} else {
			bs.NextHop = "unresolved (bpf_fib_lookup)"
		}
		_, bs.Refused = refused[b.Addr]
		st.Backends = append(st.Backends, bs)
	}
	if stats, err := d.parts.dp.Stats(); err == nil {
		for i, v := range stats {
			st.Counters[bpf.Stat(i).Name()] = v
		}
	}
	st.AllDown = string(cfg.AllDown)
	st.FailingOpen = failingOpen(cfg.AllDown, st.Backends)
	if d.sync != nil {
		ss := d.sync.status()
		st.Sync = &ss
	}
	return st
}

// Call sends one request to an instance's daemon and reads its answer
// within 10 s.
func Call(instance string, req Request) (Response, error) {
	return call(instance, req, controlTimeout)
}

// CallTimeout is Call with another bound (shell completion asks with 1 s).
func CallTimeout(instance string, req Request, timeout time.Duration) (Response, error) {
	return call(instance, req, timeout)
}

func call(instance string, req Request, timeout time.Duration) (Response, error) {
	if err := bpf.ValidateInstance(instance); err != nil {
		return Response{}, err
	}
	path := SocketPath(instance)
	c, err := net.DialTimeout("unix", path, min(timeout, 2*time.Second))
	if err != nil {
		return Response{}, dialError(instance, path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("send to the daemon of instance %q: %w", instance, err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return Response{}, fmt.Errorf("the daemon of instance %q (%s) did not answer within %v: stopped (SIGSTOP) or hung?", instance, holderString(instance), timeout)
		}
		return Response{}, fmt.Errorf("read reply from daemon: %w", err)
	}
	return resp, nil
}

// dialError says why the control socket could not be reached: no daemon,
// or not allowed to (the socket is root's).
func dialError(instance, path string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("permission denied on the control socket %s of instance %q: it is root's only; run xdplb as root (sudo): %w", path, instance, err)
	}
	return fmt.Errorf("no xdplb daemon for instance %q (%s): %w", instance, path, err)
}

func holderString(instance string) string {
	if pid := lockHolder(instance); pid > 0 {
		return "pid " + strconv.Itoa(pid)
	}
	return "pid unknown"
}

// Shutdown asks a running daemon to stop and waits until it has let go
// of its instance.
func Shutdown(instance string, wait time.Duration) error {
	if _, err := Call(instance, Request{Cmd: "shutdown"}); err != nil {
		return err
	}
	l, err := waitUnlocked(instance, wait)
	if err != nil {
		var re *RunningError
		if errors.As(err, &re) {
			return fmt.Errorf("daemon of instance %q did not stop within %s", instance, wait)
		}
		return err
	}
	l.release()
	return nil
}

// detachProbe is how long detach waits for a daemon's answer.
var detachProbe = 5 * time.Second

// Detach stops the instance's daemon if one runs, then removes its
// program from every interface, its pins and its state. It reports
// whether it stopped a daemon.
//
// A daemon is running while it holds the instance's lock. One that holds
// it but does not answer (stopped with SIGSTOP, hung) is not a crash:
// nothing is removed, and the error says so. Detach then holds the lock
// itself while it removes the instance, so no start can race it.
func Detach(bpffs, instance string) (stopped bool, err error) {
	if err := bpf.ValidateInstance(instance); err != nil {
		return false, err
	}
	l, err := lockInstance(instance)
	var re *RunningError
	if errors.As(err, &re) {
		// A harmless question first: a request to a stopped daemon waits
		// in its socket and is answered when it resumes, and a shutdown
		// waiting there would stop it then.
		if _, cerr := call(instance, Request{Cmd: "status"}, detachProbe); cerr != nil {
			return false, fmt.Errorf("the daemon of instance %q (%s) holds its lock but does not answer (%v): nothing was removed; "+
				"resume it (kill -CONT) or stop it (kill) and run detach again", instance, holderString(instance), cerr)
		}
		if _, cerr := call(instance, Request{Cmd: "shutdown"}, detachProbe); cerr != nil {
			return false, fmt.Errorf("stop the daemon of instance %q: %w", instance, cerr)
		}
		if l, err = waitUnlocked(instance, 10*time.Second); err != nil {
			return false, fmt.Errorf("the daemon of instance %q did not stop within 10s: %w", instance, err)
		}
		stopped = true
	} else if err != nil {
		return false, err
	}
	defer l.release()
	// No daemon holds the instance: a socket left is a dead one's.
	if err := os.Remove(SocketPath(instance)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return stopped, err
	}
	return stopped, loader.Detach(bpffs, instance)
}

// IsEvent says whether the counter of that name counts events (verdict
// info) rather than packets: each packet is counted once under its
// verdict's reason, events on top.
func IsEvent(name string) bool {
	for _, s := range bpf.Stats() {
		if s.Name() == name {
			return s.Verdict() == bpf.VerdictInfo
		}
	}
	return false
}

// SortedCounters returns counter names in index order.
func SortedCounters(m map[string]uint64) []string {
	var names []string
	for _, s := range bpf.Stats() {
		if _, ok := m[s.Name()]; ok {
			names = append(names, s.Name())
		}
	}
	return names
}

// openFiles counts the daemon's open file descriptors, and its limit.
func openFiles() (int, uint64) {
	n := -1
	if entries, err := os.ReadDir("/proc/self/fd"); err == nil {
		n = len(entries) - 1 // the directory being read
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return n, lim.Cur
}
