package main

import "fmt"

// Goal is one of issue 6's targets, for one load balancer.
type Goal struct {
	LB     string  `json:"lb"`
	Goal   string  `json:"goal"`
	Value  float64 `json:"value"`
	Ref    float64 `json:"reference"`
	Met    bool    `json:"met"`
	Result string  `json:"result"` // e.g. "97% of direct" or "+12 µs"
	Miss   string  `json:"miss,omitempty"`
}

// goalDef is one of issue 6's targets: a figure of a balancer under test,
// what it is compared with, and the bound it must keep.
type goalDef struct {
	name    string
	key     string // the metric whose median is judged (against direct or nothing)
	against reference
	bound   bound
}

// reference is what a goal compares a balancer's figure with.
type reference int

const (
	// againstDirect: the direct baseline's median of the same metric.
	againstDirect reference = iota
	// againstNothing: the figure on its own (a percentage).
	againstNothing
	// againstFloor: the balancer's packet-level program's fastest run
	// against the MAC-swap floor's fastest run: noise only adds time, and
	// the floor, a handful of instructions, is the noisier one.
	againstFloor
)

var (
	goalConnRate   = goalDef{"conn/s ≥ 95% of direct", "conn_per_s", againstDirect, atLeastShare(0.95)}
	goalRR         = goalDef{"RR p50 ≤ direct + 5 µs", "rr_p50_us", againstDirect, atMostPlus(5)}
	goalBulk       = goalDef{"Gbit/s ≥ 90% of direct", "bulk_gbps", againstDirect, atLeastShare(0.90)}
	goalCPU        = goalDef{"CPU/GB ≤ 1.2× direct", "cpu_s_per_gb", againstDirect, atMostTimes(1.2)}
	goalFlood      = goalDef{"≥ 99% legit conns OK under SYN flood", "flood_success_pct", againstNothing, atLeastPct(99, "%.2f")}
	goalPacket     = goalDef{"established ns/packet ≤ 2× MAC-swap floor", "", againstFloor, atMostFloor(2)}
	goalAfterFlood = goalDef{"(extra) ≥ 99% legit conns OK 2 s after the flood", "after_flood_success_pct", againstNothing, atLeastPct(99, "%.1f")}

	// goalDefs in the order of the report's goal table. Goals apply to the
	// balancers under test only, never to the baselines.
	goalDefs = []goalDef{goalConnRate, goalRR, goalBulk, goalCPU, goalFlood, goalPacket, goalAfterFlood}
)

// floorProgram is the packet-level benchmark's MAC-swap XDP_TX program.
const floorProgram = "floor-macswap"

// goals judges every goal for every balancer under test, in run order.
func (r *Report) goals() []Goal {
	var out []Goal
	for _, name := range r.lbOrder() {
		lb := infoOf(name)
		if lb.role.baseline() {
			continue
		}
		for _, d := range goalDefs {
			if g, ok := r.judge(d, lb); ok {
				out = append(out, g)
			}
		}
	}
	return out
}

// judge is goal d for lb; false when a figure it needs was not measured.
func (r *Report) judge(d goalDef, lb lbInfo) (Goal, bool) {
	var v, ref float64
	switch d.against {
	case againstDirect:
		var ok1, ok2 bool
		v, ok1 = r.med(lb.name, d.key)
		ref, ok2 = r.med(r.baseline(roleDirect), d.key)
		if !ok1 || !ok2 || ref == 0 {
			return Goal{}, false
		}
	case againstNothing:
		var ok bool
		if v, ok = r.med(lb.name, d.key); !ok {
			return Goal{}, false
		}
		ref = d.bound.limit(0)
	case againstFloor:
		if r.Datapath == nil || lb.datapath == "" {
			return Goal{}, false
		}
		var okf, okv bool
		ref, okf = r.Datapath.Min(floorProgram)
		v, okv = r.Datapath.Min(lb.datapath)
		if !okf || !okv || ref <= 0 {
			return Goal{}, false
		}
	}
	g := Goal{LB: lb.name, Goal: d.name, Value: v, Ref: ref}
	g.Met, g.Result, g.Miss = d.bound.judge(v, ref)
	return g, true
}

// limit is goal d's bound on its metric's own scale in this run (the chart
// draws it), false when the reference was not measured.
func (r *Report) limit(d goalDef) (float64, bool) {
	switch d.against {
	case againstDirect:
		ref, ok := r.med(r.baseline(roleDirect), d.key)
		return d.bound.limit(ref), ok
	case againstFloor:
		if r.Datapath == nil {
			return 0, false
		}
		ref, ok := r.Datapath.Min(floorProgram)
		return d.bound.limit(ref), ok
	}
	return d.bound.limit(0), true
}

// A bound judges a value against its reference: whether the goal is met,
// the result as the report shows it, and by how much it is missed; limit is
// the bound itself on the value's scale.
type bound struct {
	limit func(ref float64) float64
	judge func(v, ref float64) (met bool, result, miss string)
}

// atLeastShare: v ≥ want × ref, shown as "97% of direct".
func atLeastShare(want float64) bound {
	return bound{
		limit: func(ref float64) float64 { return want * ref },
		judge: func(v, ref float64) (bool, string, string) {
			x := v / ref
			res := fmt.Sprintf("%.0f%% of direct", 100*x)
			if x >= want {
				return true, res, ""
			}
			return false, res, fmt.Sprintf("%.0f points short of %.0f%%", 100*(want-x), 100*want)
		},
	}
}

// atMostTimes: v ≤ k × ref, shown as "1.10× direct".
func atMostTimes(k float64) bound {
	return bound{
		limit: func(ref float64) float64 { return k * ref },
		judge: func(v, ref float64) (bool, string, string) {
			x := v / ref
			res := fmt.Sprintf("%.2f× direct", x)
			if x <= k {
				return true, res, ""
			}
			return false, res, fmt.Sprintf("%.2f× over the %.1f× bound", x-k, k)
		},
	}
}

// atMostPlus: v ≤ ref + slack, shown as "+3 µs".
func atMostPlus(slack float64) bound {
	return bound{
		limit: func(ref float64) float64 { return ref + slack },
		judge: func(v, ref float64) (bool, string, string) {
			d := v - ref
			res := fmt.Sprintf("%+.0f µs", d)
			if d <= slack {
				return true, res, ""
			}
			return false, res, fmt.Sprintf("%.0f µs over", d-slack)
		},
	}
}

// atLeastPct: a percentage v ≥ want, shown with format ("99.95%").
func atLeastPct(want float64, format string) bound {
	return bound{
		limit: func(float64) float64 { return want },
		judge: func(v, _ float64) (bool, string, string) {
			res := fmt.Sprintf(format+"%%", v)
			if v >= want {
				return true, res, ""
			}
			return false, res, fmt.Sprintf(format+" points short", want-v)
		},
	}
}

// atMostFloor: ns/packet v ≤ k × the floor's, shown as
// "1.9× (21.0 vs 11.0 ns, fastest runs)".
func atMostFloor(k float64) bound {
	return bound{
		limit: func(floor float64) float64 { return k * floor },
		judge: func(v, floor float64) (bool, string, string) {
			x := v / floor
			res := fmt.Sprintf("%.1f× (%.1f vs %.1f ns, fastest runs)", x, v, floor)
			if x <= k {
				return true, res, ""
			}
			return false, res, fmt.Sprintf("%.1f× over the %.0f× bound", x-k, k)
		},
	}
}

// goalNames are the goals' names in table order.
func goalNames() []string {
	names := make([]string, len(goalDefs))
	for i, d := range goalDefs {
		names[i] = d.name
	}
	return names
}
