package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// A phase is one measurement of a sample. measure starts the balancer
// under test on lb-1 with the echo sinks up, runs the phases of this table
// in order, and stops it. (The packet-level benchmark is not a phase: it
// runs once, before the network is built; --skip-datapath leaves it out.)
type phase struct {
	name string // also the key of the status snapshot taken after it
	// flag is the --phases entry that selects it; "" always runs.
	flag string
	// needs and runs say, for --list-phases, what the phase needs besides
	// its flag and how it runs.
	needs, runs string
	// quick: --quick runs it too (with its shorter durations).
	quick bool
	// when is what it needs of the configuration and of the balancer
	// (nil: nothing more).
	when func(c config, lb lbInfo) bool
	// after: it runs only if that phase ran.
	after string
	// prepare readies the network for it; an error is the sample's and
	// skips this phase (and what runs after it).
	prepare func(m *sampleRun) error
	run     func(m *sampleRun)
	// snapshot: keep the balancer's status after it (xdplb status --json,
	// conntrack count), under the phase's name.
	snapshot bool
	// finish runs after the snapshot.
	finish func(m *sampleRun)
}

// sampleRun is what a phase works with.
type sampleRun struct {
	e    *env
	lb   balancer
	c    config
	s    *Sample
	addr string // the balancer's frontend
}

var phases = []phase{
	{
		name: "warm-up", quick: true,
		needs: "echo sinks",
		runs:  "connrate from agents 1-3, 1 worker each, for --warmup: neighbour entries, health state, code paths",
		run: func(m *sampleRun) {
			if _, err := runAgents(m.e, m.e.topo.Agents, "connrate", m.c.Warmup, "--addr", m.addr, "-c", "1"); err != nil {
				m.s.errorf("warm-up: %v", err)
			}
		},
	},
	{
		name: "rr", flag: "rr", quick: true,
		needs: "echo sinks",
		runs:  "agent-1 keeps one connection and does 64 B request/response round trips for --duration: p50/p90/p99",
		run: func(m *sampleRun) {
			res, err := runAgents(m.e, m.e.topo.Agents[:1], "rr", m.c.Duration, "--addr", m.addr, "-c", "1")
			if err != nil || len(res) == 0 {
				m.s.errorf("rr: %v", err)
				return
			}
			r := res[0]
			m.s.RR = &RRResult{P50US: r.Latency.P50US, P90US: r.Latency.P90US, P99US: r.Latency.P99US,
				OpsPerSec: r.OpsPerSec, Failures: r.Failures, Raw: r}
		},
	},
	{
		name: "connrate", flag: "connrate", quick: true, snapshot: true,
		needs: "echo sinks",
		runs:  "agents 1-3 × --conn-c workers: connect, 64 B echo, close (FIN, or RST with --rst-close) for --duration; the machine's CPU meanwhile",
		run:   connrate,
	},
	{
		name: "bulk", flag: "bulk", quick: true, snapshot: true,
		needs: "discard sinks",
		runs:  "one stream from agent-1 for --duration: Gbit/s, the machine's CPU per GB (after 1 s of idle baseline), the balancer's process CPU",
		prepare: func(m *sampleRun) error {
			if err := m.e.setSinks("discard"); err != nil {
				return fmt.Errorf("discard sinks: %w", err)
			}
			return nil
		},
		run: func(m *sampleRun) { m.s.Bulk = bulk(m.e, m.lb, m.c, m.s, "bulk") },
	},
	{
		name: "bulk-gro", flag: "bulk", quick: true, snapshot: true, after: "bulk",
		needs: "--gro-bulk; a balancer under test (not a baseline); discard sinks",
		runs:  "bulk again with GRO on lb-1's eth1, as a NIC would aggregate",
		when:  func(c config, lb lbInfo) bool { return c.GROBulk && !lb.role.baseline() },
		prepare: func(m *sampleRun) error {
			if err := m.e.setGRO(true); err != nil {
				return fmt.Errorf("gro on: %w", err)
			}
			return nil
		},
		run: func(m *sampleRun) {
			m.s.BulkGRO = bulk(m.e, m.lb, m.c, m.s, "bulk-gro")
			if err := m.e.setGRO(false); err != nil {
				m.s.errorf("gro off: %v", err)
			}
		},
	},
	{
		name: "flood", flag: "flood", quick: true, snapshot: true,
		needs: "not the router baseline (its frontend is server-1: the flood would measure direct again); echo sinks; the frontend answering",
		runs:  "--flood-pps spoofed SYN/s to the frontend for --flood-duration while agents 1-3 × --flood-c run connrate with --flood-timeout",
		when:  func(_ config, lb lbInfo) bool { return lb.role != roleRouter },
		prepare: func(m *sampleRun) error {
			if err := m.e.setSinks("echo"); err != nil {
				return fmt.Errorf("echo sinks: %w", err)
			}
			if err := m.e.waitDial(m.addr, 10*time.Second); err != nil {
				return fmt.Errorf("before flood: %w", err)
			}
			return nil
		},
		run: func(m *sampleRun) { m.s.Flood = flood(m.e, m.lb, m.c, m.s) },
	},
	{
		name: "after-flood", flag: "flood", quick: true, snapshot: true, after: "flood",
		needs: "the flood phase",
		runs:  "2 s after the flood, the same legit load for --after-flood; then the sinks restart (their SYN queues hold the spoofed half-open connections)",
		run: func(m *sampleRun) {
			time.Sleep(2 * time.Second)
			res, err := runAgents(m.e, m.e.topo.Agents, "connrate", m.c.AfterFlood, "--addr", m.addr,
				"-c", fmt.Sprint(m.c.FloodC), "--timeout", m.c.FloodTimeout.String())
			if err != nil && len(res) == 0 {
				m.s.errorf("legit connrate after flood: %v", err)
				return
			}
			m.s.AfterFlood = legitResult(floodStats{}, res)
		},
		// The servers keep retransmitting SYN-ACKs for the spoofed
		// half-open connections in their SYN queues for a minute; they
		// would reach the next balancer as stray replies. Restarting the
		// sinks closes the listeners, which frees those queues.
		finish: func(m *sampleRun) {
			m.e.mode = ""
			if err := m.e.setSinks("echo"); err != nil {
				m.s.errorf("restart sinks after flood: %v", err)
			}
		},
	},
}

// connrate: new connections per second from the three agents, and the
// machine's CPU per connection.
func connrate(m *sampleRun) {
	args := []string{"--addr", m.addr, "-c", fmt.Sprint(m.c.ConnC)}
	if m.c.RSTClose {
		args = append(args, "--rst-close")
	}
	c0 := readCPU()
	res, err := runAgents(m.e, m.e.topo.Agents, "connrate", m.c.Duration, args...)
	cpu := c0.to(readCPU())
	if err != nil {
		m.s.errorf("connrate: %v", err)
	}
	if len(res) == 0 {
		return
	}
	r := &ConnRateResult{CPU: cpu, Agents: res, P50US: res[0].Latency.P50US, P99US: res[0].Latency.P99US}
	for _, a := range res {
		r.ConnPerSec += a.OpsPerSec
		r.Ops += a.Ops
		r.Failures += a.Failures
	}
	m.s.ConnRate = r
}

// selected: c selects the phase, and lb is one it applies to.
func (p phase) selected(c config, lb lbInfo) bool {
	if p.flag != "" && !c.has(p.flag) || c.Quick && !p.quick {
		return false
	}
	return p.when == nil || p.when(c, lb)
}

// plan is the phases lb goes through under c, in order: those selected
// whose "after" phase is in the plan too.
func plan(c config, lb lbInfo) []phase {
	var out []phase
	for _, p := range phases {
		if p.selected(c, lb) && (p.after == "" || slices.ContainsFunc(out, func(q phase) bool { return q.name == p.after })) {
			out = append(out, p)
		}
	}
	return out
}

// runPhases runs m's plan; a phase whose preparation fails is skipped, and
// so are those that run after it.
func runPhases(m *sampleRun) {
	ran := map[string]bool{}
	for _, p := range plan(m.c, infoOf(m.lb.Name())) {
		if p.after != "" && !ran[p.after] {
			continue
		}
		if p.prepare != nil {
			if err := p.prepare(m); err != nil {
				m.s.errorf("%v", err)
				continue
			}
		}
		ran[p.name] = true
		p.run(m)
		if p.snapshot {
			if st := m.lb.Status(m.e); st != nil {
				m.s.Status[p.name] = st
			}
		}
		if p.finish != nil {
			p.finish(m)
		}
	}
}

// phaseFlags are the values --phases takes, in order.
func phaseFlags() []string {
	var out []string
	for _, p := range phases {
		if p.flag != "" && !slices.Contains(out, p.flag) {
			out = append(out, p.flag)
		}
	}
	return out
}

// checkPhases: every --phases entry names phases.
func checkPhases(names []string) error {
	known := phaseFlags()
	for _, n := range names {
		if !slices.Contains(known, n) {
			return fmt.Errorf("unknown phase %q (have %s)", n, strings.Join(known, ", "))
		}
	}
	return nil
}

// phaseTable is the phases as a Markdown table, for --list-phases.
func phaseTable() string {
	var b strings.Builder
	b.WriteString("| phase | selected by | needs | runs | --quick |\n|---|---|---|---|---|\n")
	for _, p := range phases {
		flag := "always"
		if p.flag != "" {
			flag = "--phases " + p.flag
		}
		quick := "no"
		if p.quick {
			quick = "yes, shorter"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", p.name, flag, p.needs, p.runs, quick)
	}
	return b.String()
}
