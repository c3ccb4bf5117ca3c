package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/testnet"
)

// runAgents runs `agent KIND --json ARGS...` on every host at once and
// returns their results. Every run is bounded by its --duration; a run that
// overstays it by 30 s is killed.
func runAgents(e *env, hosts []*testnet.Host, kind string, dur time.Duration, args ...string) ([]agent.LoadResult, error) {
	argv := append([]string{kind, "--json", "--duration", dur.String()}, args...)
	var procs []*testnet.Process
	for _, h := range hosts {
		full := e.pinned(true, e.bins.agent, argv...)
		p, err := h.Start(full[0], full[1:]...)
		if err != nil {
			for _, q := range procs {
				_ = q.Kill()
			}
			return nil, err
		}
		procs = append(procs, p)
	}
	deadline := time.After(dur + 30*time.Second)
	var res []agent.LoadResult
	var errs []string
	for _, p := range procs {
		select {
		case <-p.Done():
		case <-deadline:
			_ = p.Kill()
			errs = append(errs, fmt.Sprintf("%s overstayed its duration, killed", p))
			continue
		}
		var r agent.LoadResult
		if err := json.Unmarshal([]byte(p.Stdout()), &r); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v (exit %v): stdout %q stderr %q", p, err, p.Wait(), tail(p.Stdout(), 300), tail(p.Stderr(), 300)))
			continue
		}
		res = append(res, r)
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return res, nil
}

// cpuStat is the machine-wide "cpu" line of /proc/stat, in clock ticks.
type cpuStat struct {
	at                 time.Time
	busy, idle, steal  uint64
	user, sys, softirq uint64
}

const clockTicks = 100 // USER_HZ on every Linux architecture we run on

func readCPU() cpuStat {
	s := cpuStat{at: time.Now()}
	f, err := os.Open("/proc/stat")
	if err != nil {
		return s
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 9 || fields[0] != "cpu" {
			continue
		}
		v := make([]uint64, len(fields)-1)
		for i := range v {
			v[i], _ = strconv.ParseUint(fields[i+1], 10, 64)
		}
		// user nice system idle iowait irq softirq steal (guest is in user)
		s.user = v[0] + v[1]
		s.sys = v[2] + v[5]
		s.softirq = v[6]
		s.busy = s.user + s.sys + s.softirq
		s.idle = v[3] + v[4]
		s.steal = v[7]
		break
	}
	return s
}

// cpuDelta is the machine's CPU use over an interval.
type cpuDelta struct {
	WallS     float64 `json:"wall_s"`
	BusyS     float64 `json:"busy_s"` // user+nice+system+irq+softirq, all CPUs
	UserS     float64 `json:"user_s"`
	SystemS   float64 `json:"system_s"` // system+irq
	SoftirqS  float64 `json:"softirq_s"`
	StealS    float64 `json:"steal_s"`
	BusyCores float64 `json:"busy_cores"` // BusyS / WallS
}

func (a cpuStat) to(b cpuStat) cpuDelta {
	d := cpuDelta{
		WallS:    b.at.Sub(a.at).Seconds(),
		BusyS:    float64(b.busy-a.busy) / clockTicks,
		UserS:    float64(b.user-a.user) / clockTicks,
		SystemS:  float64(b.sys-a.sys) / clockTicks,
		SoftirqS: float64(b.softirq-a.softirq) / clockTicks,
		StealS:   float64(b.steal-a.steal) / clockTicks,
	}
	if d.WallS > 0 {
		d.BusyCores = d.BusyS / d.WallS
	}
	return d
}

// procTreeCPU returns the CPU seconds (user+system) used so far by the
// processes pids and all their descendants that are still alive.
func procTreeCPU(pids []int) float64 {
	if len(pids) == 0 {
		return 0
	}
	type proc struct {
		ppid int
		cpu  uint64
	}
	all := map[int]proc{}
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range ents {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		all[pid] = proc{ppid, ut + st}
	}
	in := map[int]bool{}
	for _, p := range pids {
		in[p] = true
	}
	// Descendants: iterate until no change (trees are shallow).
	for changed := true; changed; {
		changed = false
		for pid, p := range all {
			if !in[pid] && in[p.ppid] {
				in[pid] = true
				changed = true
			}
		}
	}
	var total uint64
	for pid := range in {
		total += all[pid].cpu
	}
	return float64(total) / clockTicks
}

// loadavg returns the first three fields of /proc/loadavg.
func loadavg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// counters is a set of named counters (interface and TCP statistics).
type counters map[string]uint64

// diff returns the counters that grew from a to b, by how much.
func (a counters) diff(b counters) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range b {
		if v > a[k] {
			out[k] = v - a[k]
		}
	}
	return out
}

// ethtoolStats reads `ethtool -S iface` (veth: per-queue XDP and drop
// counters) through argv (the nsenter prefix of a namespace), keys prefixed.
func ethtoolStats(ctx context.Context, prefix string, argv ...string) counters {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	c := counters{}
	if err != nil {
		return c
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil || strings.TrimSpace(k) == "peer_ifindex" {
			continue
		}
		c[prefix+strings.TrimSpace(k)] = n
	}
	return c
}

// tcpStats reads the Tcp line of /proc/net/snmp as the host's namespace
// sees it (RetransSegs tells a loss).
func tcpStats(h *testnet.Host, prefix string) counters {
	c := counters{}
	_ = h.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "Tcp:" {
				continue
			}
			if names == nil {
				names = f[1:]
				continue
			}
			for i, v := range f[1:] {
				if i < len(names) {
					if n, err := strconv.ParseUint(v, 10, 64); err == nil {
						c[prefix+names[i]] = n
					}
				}
			}
		}
		return nil
	})
	return c
}

// pathStats are the counters that explain a bulk result: losses and XDP
// activity on lb-1's eth1 and its switch port, TCP retransmissions of the
// sender.
func (e *env) pathStats() counters {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := ethtoolStats(ctx, "lb1.eth1.", "nsenter", "--net="+e.lb1.Path(), "--", "ethtool", "-S", testnet.HostIface)
	for k, v := range ethtoolStats(ctx, "sw."+e.lb1.PeerName+".", "nsenter", "--net=/run/netns/"+e.topo.SwitchNS, "--", "ethtool", "-S", e.lb1.PeerName) {
		c[k] = v
	}
	// Backlog drops and squeezes, all CPUs (the per-CPU input queue is
	// global, not per namespace).
	if b, err := os.ReadFile("/proc/net/softnet_stat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 {
				continue
			}
			d, _ := strconv.ParseUint(f[1], 16, 64)
			sq, _ := strconv.ParseUint(f[2], 16, 64)
			c["softnet.dropped"] += d
			c["softnet.time_squeeze"] += sq
		}
	}
	for k, v := range tcpStats(e.topo.Agent(1), "agent1.") {
		if k == "agent1.RetransSegs" || k == "agent1.OutSegs" {
			c[k] = v
		}
	}
	return c
}

// foreignCPU returns the CPU seconds (user+system) used so far by processes
// that are neither this benchmark's (itself and its descendants) nor kernel
// threads (which do the namespaces' packet work): other people's load on a
// shared machine. Only the difference between two calls means something.
func foreignCPU() float64 {
	type proc struct {
		ppid int
		cpu  uint64
	}
	all := map[int]proc{}
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range ents {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		all[pid] = proc{ppid, ut + st}
	}
	// pid 2 is kthreadd: its children are kernel threads.
	ours := map[int]bool{os.Getpid(): true, os.Getppid(): true, 2: true}
	for changed := true; changed; {
		changed = false
		for pid, p := range all {
			if !ours[pid] && ours[p.ppid] {
				ours[pid] = true
				changed = true
			}
		}
	}
	var total uint64
	for pid, p := range all {
		if !ours[pid] {
			total += p.cpu
		}
	}
	return float64(total) / clockTicks
}
