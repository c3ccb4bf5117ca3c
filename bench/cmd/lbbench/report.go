package main

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"
)

// Report is everything a run measured; results.json holds it whole.
type Report struct {
	Config   config          `json:"config"`
	Machine  Machine         `json:"machine"`
	Network  string          `json:"network_prefix"`
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished"`
	Datapath *DatapathResult `json:"datapath,omitempty"`
	Samples  []Sample        `json:"samples"`
	Summary  []LBSummary     `json:"summary,omitempty"`
	Goals    []Goal          `json:"goals,omitempty"`
	Notable  []Notable       `json:"xdplb_counters_of_note,omitempty"`
	Errors   []string        `json:"errors,omitempty"`
}

// Stat is a metric over the repetitions used.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	N      int       `json:"n"`
	Values []float64 `json:"values"`
}

// LBSummary is one load balancer's medians.
type LBSummary struct {
	LB       string          `json:"lb"`
	Metrics  map[string]Stat `json:"metrics"`
	Reps     []int           `json:"reps_used"`
	Excluded []int           `json:"reps_excluded,omitempty"`
}

type metricDef struct {
	key, label string
	get        func(*Sample) (float64, bool)
}

var metrics = []metricDef{
	{"conn_per_s", "new connections/s (3 agents)", func(s *Sample) (float64, bool) {
		return val(s.ConnRate != nil, func() float64 { return s.ConnRate.ConnPerSec })
	}},
	{"conn_cpu_us", "machine CPU µs per connection", func(s *Sample) (float64, bool) {
		return val(s.ConnRate != nil && s.ConnRate.Ops > 0, func() float64 { return 1e6 * s.ConnRate.CPU.BusyS / float64(s.ConnRate.Ops) })
	}},
	{"connrate_failures", "connrate failures", func(s *Sample) (float64, bool) {
		return val(s.ConnRate != nil, func() float64 { return float64(s.ConnRate.Failures) })
	}},
	{"connrate_p99_us", "connect+rr+close p99 (µs, agent-1)", func(s *Sample) (float64, bool) {
		return val(s.ConnRate != nil, func() float64 { return s.ConnRate.P99US })
	}},
	{"rr_p50_us", "RR p50 (µs)", func(s *Sample) (float64, bool) {
		return val(s.RR != nil, func() float64 { return s.RR.P50US })
	}},
	{"rr_p99_us", "RR p99 (µs)", func(s *Sample) (float64, bool) {
		return val(s.RR != nil, func() float64 { return s.RR.P99US })
	}},
	{"bulk_gbps", "one stream (Gbit/s)", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil, func() float64 { return s.Bulk.Gbps })
	}},
	{"cpu_s_per_gb", "machine CPU-s per GB", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil, func() float64 { return s.Bulk.CPUSPerGB })
	}},
	{"net_cpu_s_per_gb", "machine CPU-s per GB, idle baseline subtracted", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil, func() float64 { return s.Bulk.NetCPUSPerGB })
	}},
	{"bulk_busy_cores", "busy cores during bulk", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil, func() float64 { return s.Bulk.CPU.BusyCores })
	}},
	{"lb_proc_cpu_s_per_gb", "balancer processes' CPU-s per GB", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil && s.Bulk.Bytes > 0, func() float64 { return s.Bulk.LBProcCPUS / (float64(s.Bulk.Bytes) / 1e9) })
	}},
	{"bulk_avg_packet_bytes", "bytes per packet seen by xdplb in bulk", func(s *Sample) (float64, bool) {
		return val(s.Bulk != nil && s.Bulk.AvgPacket > 0, func() float64 { return s.Bulk.AvgPacket })
	}},
	{"gro_bulk_gbps", "one stream, GRO on lb-1 (Gbit/s)", func(s *Sample) (float64, bool) {
		return val(s.BulkGRO != nil, func() float64 { return s.BulkGRO.Gbps })
	}},
	{"gro_cpu_s_per_gb", "machine CPU-s per GB, GRO on lb-1", func(s *Sample) (float64, bool) {
		return val(s.BulkGRO != nil, func() float64 { return s.BulkGRO.CPUSPerGB })
	}},
	{"gro_avg_packet_bytes", "bytes per packet seen by xdplb, GRO on lb-1", func(s *Sample) (float64, bool) {
		return val(s.BulkGRO != nil && s.BulkGRO.AvgPacket > 0, func() float64 { return s.BulkGRO.AvgPacket })
	}},
	{"gro_gso_packets", "GSO packets seen by xdplb TC, GRO on lb-1", func(s *Sample) (float64, bool) {
		return val(s.BulkGRO != nil && s.BulkGRO.Packets > 0, func() float64 { return float64(s.BulkGRO.GSOPackets) })
	}},
	{"flood_failed_pct", "legit connections failed under flood (%)", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return 100 - s.Flood.SuccessPct })
	}},
	{"flood_success_pct", "legit connections OK under flood (%)", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.SuccessPct })
	}},
	{"flood_p50_us", "legit conn p50 under flood (µs)", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.P50US })
	}},
	{"flood_p99_us", "legit conn p99 under flood (µs)", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.P99US })
	}},
	{"flood_legit_conn_per_s", "legit conn/s under flood", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.ConnPerSec })
	}},
	{"flood_p999_us", "legit conn p99.9 under flood (µs)", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.P999US })
	}},
	{"after_flood_success_pct", "legit connections OK after the flood (%)", func(s *Sample) (float64, bool) {
		return val(s.AfterFlood != nil, func() float64 { return s.AfterFlood.SuccessPct })
	}},
	{"after_flood_conn_per_s", "legit conn/s after the flood", func(s *Sample) (float64, bool) {
		return val(s.AfterFlood != nil, func() float64 { return s.AfterFlood.ConnPerSec })
	}},
	{"flood_sent_pps", "flood SYN/s sent", func(s *Sample) (float64, bool) {
		return val(s.Flood != nil, func() float64 { return s.Flood.Flood.AchievedPPS })
	}},
}

func val(ok bool, f func() float64) (float64, bool) {
	if !ok {
		return 0, false
	}
	return f(), true
}

func (r *Report) lbOrder() []string {
	var names []string
	seen := map[string]bool{}
	for _, n := range r.Config.LBs {
		if !seen[n] {
			names = append(names, n)
			seen[n] = true
		}
	}
	return names
}

func (r *Report) summarize() {
	r.Summary = nil
	for _, name := range r.lbOrder() {
		var clean, noisy []*Sample
		for i := range r.Samples {
			s := &r.Samples[i]
			if s.LB != name {
				continue
			}
			if s.Noisy != "" {
				noisy = append(noisy, s)
			} else {
				clean = append(clean, s)
			}
		}
		use := clean
		var excluded []int
		if len(clean) >= 2 || len(clean) >= r.Config.Reps {
			for _, s := range noisy {
				excluded = append(excluded, s.Rep)
			}
		} else {
			use = append(use, noisy...)
		}
		sum := LBSummary{LB: name, Metrics: map[string]Stat{}, Excluded: excluded}
		for _, s := range use {
			sum.Reps = append(sum.Reps, s.Rep)
		}
		sort.Ints(sum.Reps)
		for _, m := range metrics {
			var v []float64
			for _, s := range use {
				if x, ok := m.get(s); ok && !math.IsNaN(x) && !math.IsInf(x, 0) {
					v = append(v, x)
				}
			}
			if len(v) == 0 {
				continue
			}
			st := Stat{Median: median(v), Min: v[0], Max: v[0], N: len(v), Values: v}
			for _, x := range v {
				st.Min, st.Max = min(st.Min, x), max(st.Max, x)
			}
			sum.Metrics[m.key] = st
		}
		r.Summary = append(r.Summary, sum)
	}
	r.Goals = r.goals()
	r.Notable = r.notable()
}

func (r *Report) summary(lb string) *LBSummary {
	for i := range r.Summary {
		if r.Summary[i].LB == lb {
			return &r.Summary[i]
		}
	}
	return nil
}

func (r *Report) med(lb, key string) (float64, bool) {
	s := r.summary(lb)
	if s == nil {
		return 0, false
	}
	st, ok := s.Metrics[key]
	return st.Median, ok
}

// baseline is the name of the load balancer of role ro in this run, ""
// when none ran.
func (r *Report) baseline(ro role) string {
	for _, lb := range r.lbOrder() {
		if infoOf(lb).role == ro {
			return lb
		}
	}
	return ""
}

// Notable is an xdplb counter that says something went wrong in a phase.
type Notable struct {
	LB      string `json:"lb"`
	Phase   string `json:"phase"`
	Counter string `json:"counter"`
	Max     uint64 `json:"max_over_reps"`
	Reps    int    `json:"reps_nonzero"`
}

// Counters of xdplb worth showing when they move: drops, aborts, and
// client segments the kernel had to reset.
var notableCounters = []string{"no_backend", "ports_exhausted", "no_neigh", "backend_reset", "flow_insert", "aborted", "no_flow", "reply_no_flow", "flow_expired"}

func (r *Report) notable() []Notable {
	type key struct{ lb, phase, counter string }
	agg := map[key]*Notable{}
	var order []key
	for _, s := range r.Samples {
		prev := map[string]uint64{}
		// Each phase's counters less those of the snapshot before it.
		for _, p := range phases {
			ph := p.name
			raw, ok := s.Status[ph]
			if !ok {
				continue
			}
			var st struct {
				Counters map[string]uint64 `json:"counters"`
			}
			if json.Unmarshal(raw, &st) != nil || st.Counters == nil {
				continue
			}
			for _, c := range notableCounters {
				d := st.Counters[c] - min(st.Counters[c], prev[c])
				if d == 0 {
					continue
				}
				k := key{s.LB, ph, c}
				n, ok := agg[k]
				if !ok {
					n = &Notable{LB: s.LB, Phase: ph, Counter: c}
					agg[k] = n
					order = append(order, k)
				}
				n.Max = max(n.Max, d)
				n.Reps++
			}
			prev = st.Counters
		}
	}
	var out []Notable
	for _, k := range order {
		out = append(out, *agg[k])
	}
	return out
}

// summaryOnly is summary.json: no raw agent output.
func (r *Report) summaryOnly() any {
	return struct {
		Config   config          `json:"config"`
		Machine  Machine         `json:"machine"`
		Started  time.Time       `json:"started"`
		Finished time.Time       `json:"finished"`
		Summary  []LBSummary     `json:"summary"`
		Goals    []Goal          `json:"goals"`
		Datapath *DatapathResult `json:"datapath,omitempty"`
		Notable  []Notable       `json:"xdplb_counters_of_note,omitempty"`
	}{r.Config, r.Machine, r.Started, r.Finished, r.Summary, r.Goals, r.Datapath, r.Notable}
}

// cell formats a metric as "median [min–max]" ("–" when not measured).
func (r *Report) cell(lb, key, format string) string {
	s := r.summary(lb)
	if s == nil {
		return "–"
	}
	st, ok := s.Metrics[key]
	if !ok {
		return "–"
	}
	m := fmt.Sprintf(format, st.Median)
	if st.N > 1 {
		return fmt.Sprintf("%s [%s–%s]", m, fmt.Sprintf(format, st.Min), fmt.Sprintf(format, st.Max))
	}
	return m
}

// ratio is lb's median of key over ref's median of refKey, and whether
// both were measured (and ref's is not 0).
func (r *Report) ratio(lb, key, ref, refKey string) (float64, bool) {
	v, ok1 := r.med(lb, key)
	d, ok2 := r.med(ref, refKey)
	if !ok1 || !ok2 || d == 0 {
		return 0, false
	}
	return v / d, true
}

// difference is lb's median of key minus ref's.
func (r *Report) difference(lb, key, ref string) (float64, bool) {
	v, ok1 := r.med(lb, key)
	d, ok2 := r.med(ref, key)
	if !ok1 || !ok2 {
		return 0, false
	}
	return v - d, true
}

// metricOf is the definition of the metric key.
func metricOf(key string) (metricDef, bool) {
	for _, m := range metrics {
		if m.key == key {
			return m, true
		}
	}
	return metricDef{}, false
}
