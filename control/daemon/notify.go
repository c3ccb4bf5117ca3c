package daemon

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/xdplb/xdplb/control/health"
)

// The service manager protocol (sd_notify(3)), without libsystemd: one
// datagram of "KEY=value" lines to the socket systemd names in
// $NOTIFY_SOCKET (a path, or an abstract name written "@name"). The unit
// is Type=notify: systemctl start returns, and units ordered after xdplb
// start, once the daemon says READY=1, which it does when its program is
// attached and its control socket serves. STATUS= is the line
// `systemctl status xdplb` shows.

// sdNotifier returns the function that sends states to the service
// manager, or nil when the daemon does not run under one that wants them.
func sdNotifier() func(state string) {
	return newNotifier(os.Getenv("NOTIFY_SOCKET"))
}

func newNotifier(path string) func(state string) {
	if path == "" || path[0] != '/' && path[0] != '@' {
		return nil
	}
	// Go takes a leading '@' as an abstract socket name, as systemd writes it.
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	return func(state string) {
		c, err := net.DialUnix("unixgram", nil, addr)
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(state))
	}
}

func (d *Daemon) sdNotify(state string) {
	if d.parts.notify != nil {
		d.parts.notify(state)
	}
}

// notifyReady tells the service manager the daemon serves, with its state.
func (d *Daemon) notifyReady() { d.sdNotify("READY=1\nSTATUS=" + d.statusLine()) }

// notifyStatus updates the state systemctl status shows.
func (d *Daemon) notifyStatus() { d.sdNotify("STATUS=" + d.statusLine()) }

// statusLine is the daemon's state in one line, e.g. "forwarding
// 10.10.10.100:6443 on eth1 (xdp native via bpf_link): 3/3 backends up".
func (d *Daemon) statusLine() string {
	att := d.attachment()
	up, total, retiring := 0, 0, 0
	for _, b := range d.bal.Backends() {
		if b.Retired {
			retiring++
			continue
		}
		total++
		if b.TakesNew() {
			up++
		}
	}
	s := fmt.Sprintf("forwarding %s on %s (%s %s via %s): %d/%d backends up", d.node.data.Frontend, att.Iface, att.Hook, att.Mode, att.Via, up, total)
	if retiring > 0 {
		s += fmt.Sprintf(", %d retiring", retiring)
	}
	if up == 0 {
		s += "; NO BACKEND TAKES NEW CONNECTIONS"
	}
	return strings.ReplaceAll(s, "\n", " ")
}

// checkStats counts health checks by backend and outcome, and state
// changes by backend and direction, for metrics.
type checkStats struct {
	mu     sync.Mutex
	checks map[string]*[4]uint64 // by health.Outcome
	moves  map[string]*[2]uint64 // to down, to up
}

func (s *checkStats) check(key string, o health.Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checks == nil {
		s.checks = map[string]*[4]uint64{}
	}
	c := s.checks[key]
	if c == nil {
		c = new([4]uint64)
		s.checks[key] = c
	}
	if int(o) < len(c) {
		c[o]++
	}
}

func (s *checkStats) transition(key string, up bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.moves == nil {
		s.moves = map[string]*[2]uint64{}
	}
	m := s.moves[key]
	if m == nil {
		m = new([2]uint64)
		s.moves[key] = m
	}
	if up {
		m[1]++
	} else {
		m[0]++
	}
}

func (s *checkStats) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.checks, key)
	delete(s.moves, key)
}

// snapshot copies the counters of key.
func (s *checkStats) snapshot(key string) (checks [4]uint64, moves [2]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.checks[key]; c != nil {
		checks = *c
	}
	if m := s.moves[key]; m != nil {
		moves = *m
	}
	return checks, moves
}
