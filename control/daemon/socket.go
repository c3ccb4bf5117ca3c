package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/loader"
)

// RunDir holds the control sockets.
var RunDir = "/run/xdplb"

// SocketPath is the control socket of an instance.
func SocketPath(instance string) string { return filepath.Join(RunDir, instance+".sock") }

// listener is the control socket's listener.
type listener = net.Listener

// Request is one command on the control socket (one JSON object a line).
type Request struct {
	Cmd    string `json:"cmd"` // status, check, drain, enable, weight, shutdown
	Addr   string `json:"addr,omitempty"`
	Weight uint32 `json:"weight,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
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
)

// BackendStatus is one backend in Status.
type BackendStatus struct {
	Addr        string  `json:"addr"`
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
}

func listenControl(instance string) (net.Listener, error) {
	if err := os.MkdirAll(RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", RunDir, err)
	}
	path := SocketPath(instance)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("instance %q already has a running daemon (%s answers): stop it first", instance, path)
	}
	os.Remove(path) // stale, from a crashed daemon
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func (d *Daemon) serveControl(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go d.handleConn(c)
	}
}

func (d *Daemon) handleConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(Response{Error: "bad request: " + err.Error()})
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
		for _, b := range st.Backends {
			if b.State == StateUp || b.State == StateDrain {
				return Response{OK: true, Status: &st}
			}
		}
		return Response{Error: "no backend is up", Status: &st}
	case "drain", "enable", "weight":
		addr, err := d.parseBackend(req.Addr)
		if err != nil {
			return fail(err)
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
		d.log.Info("backend "+req.Cmd, "backend", addr.String(), "weight", req.Weight)
		return Response{OK: true}
	case "shutdown":
		d.stop()
		return Response{OK: true}
	}
	return fail(fmt.Errorf("unknown command %q", req.Cmd))
}

// parseBackend accepts "ip" (the frontend port) or "ip:port".
func (d *Daemon) parseBackend(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("backend %q: want ip or ip:port", s)
	}
	return netip.AddrPortFrom(a, d.cfg.Port), nil
}

func (d *Daemon) status() Status {
	cfg := d.cfg
	st := Status{
		Instance: cfg.Instance, Version: Version, PID: os.Getpid(), Started: d.started,
		Iface: cfg.Iface, Frontend: d.node.data.Frontend.String(), SNATPorts: d.node.snat.String(),
		CheckSource: d.node.source.String(), Check: string(cfg.Check), Attachment: d.att,
		Counters: map[string]uint64{}, Flows: map[string]int{},
	}
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
	d.gcMu.Unlock()
	for t, n := range gc.Entries {
		st.Flows[t.String()] = n
	}
	refused, _ := d.bal.Refused()
	for _, b := range d.bal.Backends() {
		bs := BackendStatus{Addr: b.Addr.String(), ID: b.ID, Weight: b.Weight,
			Connections: gc.Connections[b.ID], HalfOpen: gc.HalfOpen[b.ID]}
		switch {
		case !b.Up:
			bs.State = StateDown
		case b.Drained || b.Weight == 0:
			bs.State = StateDrain
		default:
			bs.State = StateUp
		}
		if ms, ok := d.mon.Status(b.Addr.String()); ok {
			bs.Health = ms.Line
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
	return st
}

// Call sends one request to an instance's daemon.
func Call(instance string, req Request) (Response, error) {
	path := SocketPath(instance)
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return Response{}, fmt.Errorf("no xdplb daemon for instance %q (%s): %w", instance, path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, err
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read reply from daemon: %w", err)
	}
	return resp, nil
}

// Shutdown asks a running daemon to stop and waits for it to go.
func Shutdown(instance string, wait time.Duration) error {
	if _, err := Call(instance, Request{Cmd: "shutdown"}); err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(SocketPath(instance)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("daemon of instance %q did not stop within %s", instance, wait)
}

// Detach stops the instance's daemon if one runs, then removes its
// program from every interface, its pins and its state. It reports
// whether it stopped a daemon.
func Detach(bpffs, instance string) (stopped bool, err error) {
	if err := bpf.ValidateInstance(instance); err != nil {
		return false, err
	}
	if _, err := Call(instance, Request{Cmd: "status"}); err == nil {
		if err := Shutdown(instance, 10*time.Second); err != nil {
			return false, err
		}
		stopped = true
	} else {
		os.Remove(SocketPath(instance)) // left by a crashed daemon
	}
	return stopped, loader.Detach(bpffs, instance)
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
