package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
)

// Sample is one load balancer measured once.
type Sample struct {
	LB      string     `json:"lb"`
	Rep     int        `json:"rep"`
	Order   int        `json:"order"` // position within the repetition
	Start   time.Time  `json:"start"`
	LoadAvg [3]float64 `json:"loadavg_at_start"`
	Noisy   string     `json:"noisy,omitempty"` // why this sample is left out of the medians
	// IdleBefore is the machine's busy CPU (cores) just before, with
	// nothing of the benchmark running.
	IdleBefore float64 `json:"idle_before_cores"`
	// ForeignCores is the CPU that processes not of this benchmark used
	// during the sample, in cores.
	ForeignCores float64 `json:"foreign_cores"`

	ConnRate *ConnRateResult `json:"connrate,omitempty"`
	RR       *RRResult       `json:"rr,omitempty"`
	Bulk     *BulkResult     `json:"bulk,omitempty"`
	// BulkGRO is bulk again with GRO on lb-1's eth1 (as on a real NIC):
	// the kernel paths and the TC hook then see aggregated packets.
	BulkGRO *BulkResult  `json:"bulk_gro,omitempty"`
	Flood   *FloodResult `json:"flood,omitempty"`
	// AfterFlood: the same legitimate load, starting 2 s after the flood
	// ended: does the balancer recover?
	AfterFlood *FloodResult `json:"after_flood,omitempty"`

	// Status snapshots of the balancer after each phase (xdplb status
	// --json, nftables conntrack count), by phase.
	Status map[string]json.RawMessage `json:"status,omitempty"`
	Errors []string                   `json:"errors,omitempty"`
}

// ConnRateResult: connect, 64 B request/response, close, from 3 agents.
type ConnRateResult struct {
	ConnPerSec float64            `json:"conn_per_s"`
	Ops        uint64             `json:"ops"`
	Failures   uint64             `json:"failures"`
	P50US      float64            `json:"p50_us"` // agent-1
	P99US      float64            `json:"p99_us"`
	CPU        cpuDelta           `json:"cpu"`
	Agents     []agent.LoadResult `json:"agents"`
}

// RRResult: 64 B round trips on one established connection from agent-1.
type RRResult struct {
	P50US     float64          `json:"p50_us"`
	P90US     float64          `json:"p90_us"`
	P99US     float64          `json:"p99_us"`
	OpsPerSec float64          `json:"ops_per_s"`
	Failures  uint64           `json:"failures"`
	Raw       agent.LoadResult `json:"raw"`
}

// BulkResult: one stream from agent-1 into the discard sinks.
type BulkResult struct {
	Gbps          float64  `json:"gbps"`
	Bytes         uint64   `json:"bytes"`
	CPU           cpuDelta `json:"cpu"`
	CPUSPerGB     float64  `json:"cpu_s_per_gb"`               // machine busy CPU-s / GB sent
	BaselineCores float64  `json:"baseline_cores"`             // machine busy cores right before, idle
	NetCPUSPerGB  float64  `json:"net_cpu_s_per_gb"`           // with the baseline subtracted
	LBProcCPUS    float64  `json:"lb_proc_cpu_s"`              // the userspace balancer's processes
	SinkProcCPUS  float64  `json:"sink_proc_cpu_s"`            // the discard sinks' processes
	AvgPacket     float64  `json:"avg_packet_bytes,omitempty"` // xdplb: bytes/packets seen by the data path
	Packets       uint64   `json:"packets,omitempty"`
	GSOPackets    uint64   `json:"gso_packets,omitempty"`
	// Path: what grew on the way during the run (veth XDP and drop
	// counters of lb-1's eth1 and its switch port, the sender's TCP
	// retransmissions).
	Path map[string]uint64 `json:"path,omitempty"`
	Raw  agent.LoadResult  `json:"raw"`
}

// FloodResult: legitimate connrate from 3 agents during a spoofed SYN flood.
type FloodResult struct {
	Flood      floodStats         `json:"flood"`
	Ops        uint64             `json:"legit_ops"`
	Failures   uint64             `json:"legit_failures"`
	SuccessPct float64            `json:"legit_success_pct"`
	ConnPerSec float64            `json:"legit_conn_per_s"`
	P50US      float64            `json:"legit_p50_us"`
	P99US      float64            `json:"legit_p99_us"`
	P999US     float64            `json:"legit_p999_us"`
	MaxUS      float64            `json:"legit_max_us"`
	Errors     map[string]uint64  `json:"legit_errors,omitempty"`
	Agents     []agent.LoadResult `json:"agents"`
}

func (s *Sample) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.Errors = append(s.Errors, msg)
	logf("    %s: %s", s.LB, msg)
}

func (s *Sample) brief() string {
	var parts []string
	if r := s.ConnRate; r != nil {
		parts = append(parts, fmt.Sprintf("conn/s=%.0f (fail %d)", r.ConnPerSec, r.Failures))
	}
	if r := s.RR; r != nil {
		parts = append(parts, fmt.Sprintf("rr p50=%.0fus p99=%.0fus", r.P50US, r.P99US))
	}
	if r := s.Bulk; r != nil {
		parts = append(parts, fmt.Sprintf("bulk=%.2fGbit/s cpu=%.2fs/GB", r.Gbps, r.CPUSPerGB))
	}
	if r := s.Flood; r != nil {
		parts = append(parts, fmt.Sprintf("flood(%.0fpps) ok=%.2f%% p99=%.0fus", r.Flood.AchievedPPS, r.SuccessPct, r.P99US))
	}
	if s.Noisy != "" {
		parts = append(parts, "NOISY: "+s.Noisy)
	}
	if len(s.Errors) > 0 {
		parts = append(parts, fmt.Sprintf("%d errors", len(s.Errors)))
	}
	return strings.Join(parts, "  ")
}

// measure sets lb up on lb-1, runs every phase against it and tears it down.
func measure(e *env, lb balancer, c config, rep, order int, idle float64) Sample {
	s := Sample{LB: lb.Name(), Rep: rep, Order: order, Start: time.Now(), LoadAvg: loadavg(), IdleBefore: idle,
		Status: map[string]json.RawMessage{}}
	foreign0 := foreignCPU()
	if err := e.setSinks("echo"); err != nil {
		s.errorf("echo sinks: %v", err)
		return s
	}
	if err := lb.Start(e); err != nil {
		s.errorf("start: %v", err)
		if err := lb.Stop(e); err != nil {
			s.errorf("stop: %v", err)
		}
		return s
	}
	defer func() {
		if err := lb.Stop(e); err != nil {
			s.errorf("stop: %v", err)
		}
	}()
	runPhases(&sampleRun{e: e, lb: lb, c: c, s: &s, addr: lb.Frontend().String()})

	if wall := time.Since(s.Start).Seconds(); wall > 0 {
		s.ForeignCores = max(0, foreignCPU()-foreign0) / wall
	}
	if s.ForeignCores > c.ForeignCores {
		s.Noisy = fmt.Sprintf("other processes used %.2f cores meanwhile (> %.2f)", s.ForeignCores, c.ForeignCores)
	}
	if s.Bulk != nil && s.Bulk.CPU.WallS > 0 && s.Bulk.CPU.StealS/s.Bulk.CPU.WallS > 0.1 {
		s.Noisy = strings.TrimPrefix(s.Noisy+"; ", "; ") + fmt.Sprintf("steal %.0f%% of a core during bulk", 100*s.Bulk.CPU.StealS/s.Bulk.CPU.WallS)
	}
	return s
}

// xdplbCounters is the part of `xdplb status --json` bulk needs.
type xdplbCounters struct {
	Backends []struct {
		Packets uint64 `json:"packets"`
		Bytes   uint64 `json:"bytes"`
	} `json:"backends"`
	Counters map[string]uint64 `json:"counters"`
}

func parseXDPLB(raw json.RawMessage) (pk, by, gso uint64, ok bool) {
	var st xdplbCounters
	if raw == nil || json.Unmarshal(raw, &st) != nil || st.Counters == nil {
		return 0, 0, 0, false
	}
	for _, b := range st.Backends {
		pk += b.Packets
		by += b.Bytes
	}
	return pk, by, st.Counters["gso"], true
}

func bulk(e *env, lb balancer, c config, s *Sample, phase string) *BulkResult {
	addr := lb.Frontend().String()
	// Idle baseline: what the machine does with the balancer and sinks up
	// and no load.
	time.Sleep(300 * time.Millisecond)
	b0 := readCPU()
	time.Sleep(time.Second)
	base := b0.to(readCPU())
	before := lb.Status(e)

	lbPIDs := lb.PIDs()
	path0 := e.pathStats()
	lb0, sink0 := procTreeCPU(lbPIDs), procTreeCPU(e.sinkPIDs())
	c0 := readCPU()
	res, err := runAgents(e, e.topo.Agents[:1], "bulk", c.Duration, "--addr", addr, "-c", "1")
	cpu := c0.to(readCPU())
	lb1, sink1 := procTreeCPU(lbPIDs), procTreeCPU(e.sinkPIDs())
	path := path0.diff(e.pathStats())
	if err != nil || len(res) == 0 {
		s.errorf("%s: %v", phase, err)
		return nil
	}
	r := res[0]
	b := &BulkResult{Gbps: r.Gbps, Bytes: r.Bytes, CPU: cpu, BaselineCores: base.BusyCores,
		LBProcCPUS: lb1 - lb0, SinkProcCPUS: sink1 - sink0, Raw: r, Path: path}
	if r.Failures > 0 {
		s.errorf("%s: %d failures: %v %s", phase, r.Failures, r.Errors, r.FirstError)
	}
	if gb := float64(r.Bytes) / 1e9; gb > 0 {
		b.CPUSPerGB = cpu.BusyS / gb
		b.NetCPUSPerGB = max(0, cpu.BusyS-base.BusyCores*cpu.WallS) / gb
	}
	if pk0, by0, g0, ok := parseXDPLB(before); ok {
		if pk1, by1, g1, ok := parseXDPLB(lb.Status(e)); ok && pk1 > pk0 {
			b.Packets = pk1 - pk0
			b.AvgPacket = float64(by1-by0) / float64(pk1-pk0)
			b.GSOPackets = g1 - g0
		}
	}
	return b
}

func flood(e *env, lb balancer, c config, s *Sample) *FloodResult {
	addr := lb.Frontend().String()
	ctx, cancel := context.WithTimeout(context.Background(), c.FloodDuration+5*time.Second)
	defer cancel()
	type out struct {
		st  floodStats
		err error
	}
	done := make(chan out, 1)
	go func() {
		st, err := synFlood(ctx, e.flood, lb.Frontend(), c.FloodPPS, c.FloodDuration)
		done <- out{st, err}
	}()
	// Legitimate clients from half a second in to half a second before
	// the end: the whole window is under flood.
	time.Sleep(500 * time.Millisecond)
	legitDur := c.FloodDuration - time.Second
	res, err := runAgents(e, e.topo.Agents, "connrate", legitDur, "--addr", addr,
		"-c", fmt.Sprint(c.FloodC), "--timeout", c.FloodTimeout.String())
	o := <-done
	if o.err != nil {
		s.errorf("flood: %v", o.err)
		return nil
	}
	if err != nil {
		s.errorf("legit connrate under flood: %v", err)
	}
	if len(res) == 0 {
		return nil
	}
	return legitResult(o.st, res)
}

// legitResult sums the agents' connrate results.
func legitResult(st floodStats, res []agent.LoadResult) *FloodResult {
	f := &FloodResult{Flood: st, Agents: res, Errors: map[string]uint64{}}
	for _, a := range res {
		f.Ops += a.Ops
		f.Failures += a.Failures
		f.ConnPerSec += a.OpsPerSec
		for k, v := range a.Errors {
			f.Errors[k] += v
		}
		// Percentiles across agents: the worst agent's (an upper
		// bound for the merged p99, close to it for p50).
		f.P50US = max(f.P50US, a.Latency.P50US)
		f.P99US = max(f.P99US, a.Latency.P99US)
		f.P999US = max(f.P999US, a.Latency.P999US)
		f.MaxUS = max(f.MaxUS, a.Latency.MaxUS)
	}
	if n := f.Ops + f.Failures; n > 0 {
		f.SuccessPct = 100 * float64(f.Ops) / float64(n)
	}
	return f
}

func (c config) has(phase string) bool {
	for _, p := range c.Phases {
		if p == phase {
			return true
		}
	}
	return false
}
