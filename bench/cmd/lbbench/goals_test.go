package main

import (
	"slices"
	"testing"
)

func TestBounds(t *testing.T) {
	for _, tc := range []struct {
		name         string
		b            bound
		v, ref       float64
		met          bool
		result, miss string
		limit        float64
	}{
		{"share met", atLeastShare(0.95), 9700, 10000, true, "97% of direct", "", 9500},
		{"share exactly at the bound", atLeastShare(0.95), 95, 100, true, "95% of direct", "", 95},
		{"share short", atLeastShare(0.95), 5000, 10000, false, "50% of direct", "45 points short of 95%", 9500},
		{"times met", atMostTimes(1.2), 2.3, 2, true, "1.15× direct", "", 2.4},
		{"times over", atMostTimes(1.2), 6, 2, false, "3.00× direct", "1.80× over the 1.2× bound", 2.4},
		{"plus met", atMostPlus(5), 33, 30, true, "+3 µs", "", 35},
		{"plus faster than direct", atMostPlus(5), 20, 30, true, "-10 µs", "", 35},
		{"plus over", atMostPlus(5), 130, 30, false, "+100 µs", "95 µs over", 35},
		{"pct met", atLeastPct(99, "%.2f"), 99.5, 0, true, "99.50%", "", 99},
		{"pct short", atLeastPct(99, "%.2f"), 98.5, 0, false, "98.50%", "0.50 points short", 99},
		{"pct one decimal", atLeastPct(99, "%.1f"), 98, 0, false, "98.0%", "1.0 points short", 99},
		{"floor met", atMostFloor(2), 18, 10, true, "1.8× (18.0 vs 10.0 ns, fastest runs)", "", 20},
		{"floor over", atMostFloor(2), 45, 10, false, "4.5× (45.0 vs 10.0 ns, fastest runs)", "2.5× over the 2× bound", 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			met, result, miss := tc.b.judge(tc.v, tc.ref)
			if met != tc.met || result != tc.result || miss != tc.miss {
				t.Errorf("judge(%v, %v) = %v %q %q, want %v %q %q", tc.v, tc.ref, met, result, miss, tc.met, tc.result, tc.miss)
			}
			if got := tc.b.limit(tc.ref); !near(got, tc.limit) {
				t.Errorf("limit(%v) = %v, want %v", tc.ref, got, tc.limit)
			}
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{7}, 7},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1000}, 10},
	} {
		in := slices.Clone(tc.in)
		if got := median(in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("median reordered its input: %v", in)
		}
	}
}

// TestSummarizeNoisy: noisy samples are left out of the medians while two
// clean ones remain (or as many as the repetitions asked), and used
// otherwise.
func TestSummarizeNoisy(t *testing.T) {
	noisy := func(s Sample) Sample { s.Noisy = "other processes"; return s }
	for _, tc := range []struct {
		name     string
		reps     int
		samples  []Sample
		median   float64
		used     []int
		excluded []int
	}{
		{"two clean, one noisy", 3, []Sample{
			sampleOf("direct", 1, figures{conn: 100}), noisy(sampleOf("direct", 2, figures{conn: 10})), sampleOf("direct", 3, figures{conn: 300}),
		}, 200, []int{1, 3}, []int{2}},
		{"one clean of three: the noisy count", 3, []Sample{
			noisy(sampleOf("direct", 1, figures{conn: 100})), noisy(sampleOf("direct", 2, figures{conn: 10})), sampleOf("direct", 3, figures{conn: 300}),
		}, 100, []int{1, 2, 3}, nil},
		{"one repetition asked, one clean", 1, []Sample{
			sampleOf("direct", 1, figures{conn: 100}), noisy(sampleOf("direct", 2, figures{conn: 10})),
		}, 100, []int{1}, []int{2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Report{Config: config{Reps: tc.reps, LBs: []string{"direct"}}, Samples: tc.samples}
			r.summarize()
			s := r.summary("direct")
			if s == nil {
				t.Fatal("no summary for direct")
			}
			if got := s.Metrics["conn_per_s"].Median; got != tc.median {
				t.Errorf("median conn/s = %v, want %v", got, tc.median)
			}
			if !slices.Equal(s.Reps, tc.used) || !slices.Equal(s.Excluded, tc.excluded) {
				t.Errorf("reps used %v, excluded %v; want %v, %v", s.Reps, s.Excluded, tc.used, tc.excluded)
			}
		})
	}
}

func TestGoals(t *testing.T) {
	r := syntheticReport()
	got := map[[2]string]Goal{}
	for _, g := range r.Goals {
		if infoOf(g.LB).role.baseline() {
			t.Errorf("goal %q judged for the baseline %s", g.Goal, g.LB)
		}
		got[[2]string{g.LB, g.Goal}] = g
	}
	for _, tc := range []struct {
		lb     string
		goal   goalDef
		met    bool
		result string
		value  float64
		ref    float64
	}{
		// xdp-native's noisy third repetition (1000 conn/s) is left out.
		{"xdp-native", goalConnRate, true, "97% of direct", 9700, 10000},
		{"xdp-native", goalRR, true, "+3 µs", 33, 30},
		{"xdp-native", goalBulk, true, "92% of direct", 4.6, 5},
		{"xdp-native", goalCPU, true, "1.15× direct", 2.3, 2},
		{"xdp-native", goalFlood, true, "99.50%", 99.5, 99},
		{"xdp-native", goalAfterFlood, true, "100.0%", 100, 99},
		{"xdp-native", goalPacket, true, "1.8× (18.0 vs 10.0 ns, fastest runs)", 18, 10},
		{"haproxy", goalConnRate, false, "50% of direct", 5000, 10000},
		{"haproxy", goalRR, false, "+100 µs", 130, 30},
		{"haproxy", goalBulk, false, "40% of direct", 2, 5},
		{"haproxy", goalCPU, false, "3.00× direct", 6, 2},
		{"haproxy", goalFlood, false, "98.50%", 98.5, 99},
		{"haproxy", goalAfterFlood, true, "99.0%", 99, 99},
	} {
		g, ok := got[[2]string{tc.lb, tc.goal.name}]
		if !ok {
			t.Errorf("%s: no verdict for %q", tc.lb, tc.goal.name)
			continue
		}
		if g.Met != tc.met || g.Result != tc.result || !near(g.Value, tc.value) || !near(g.Ref, tc.ref) {
			t.Errorf("%s %q = met %v %q (%v vs %v), want met %v %q (%v vs %v)", tc.lb, tc.goal.name,
				g.Met, g.Result, g.Value, g.Ref, tc.met, tc.result, tc.value, tc.ref)
		}
		if g.Met != (g.Miss == "") {
			t.Errorf("%s %q: met %v with miss %q", tc.lb, tc.goal.name, g.Met, g.Miss)
		}
	}
	// haproxy has no packet-level program.
	if _, ok := got[[2]string{"haproxy", goalPacket.name}]; ok {
		t.Error("haproxy got a packet-level verdict")
	}
	if n := len(r.Goals); n != 13 {
		t.Errorf("%d verdicts, want 13", n)
	}
}

// TestGoalsWithoutDirect: nothing compares with direct when direct did not
// run; the absolute goals still do.
func TestGoalsWithoutDirect(t *testing.T) {
	r := syntheticReport()
	r.Config.LBs = []string{"xdp-native", "haproxy"}
	r.summarize()
	for _, g := range r.Goals {
		for _, d := range goalDefs {
			if d.name == g.Goal && d.against == againstDirect {
				t.Errorf("%s: %q judged without direct", g.LB, g.Goal)
			}
		}
	}
	if len(r.Goals) != 5 {
		t.Errorf("%d verdicts, want 5 (flood, after flood, packet level): %+v", len(r.Goals), r.Goals)
	}
}

func TestRatioCells(t *testing.T) {
	v := &mdView{Report: syntheticReport(), Direct: "direct", Router: "router"}
	for _, tc := range []struct{ got, want string }{
		{v.Pct("direct", "conn_per_s", "direct", "conn_per_s"), "100%"},
		{v.Times("direct", "cpu_s_per_gb", "direct", "cpu_s_per_gb"), "1.00×"},
		{v.Delta("direct", "rr_p50_us", "direct"), "+0"},
		{v.Pct("xdp-native", "conn_per_s", "direct", "conn_per_s"), "97%"},
		{v.Pct("xdp-native", "conn_per_s", "router", "conn_per_s"), "108%"},
		{v.Delta("xdp-native", "rr_p50_us", "router"), "+1"},
		{v.Delta("haproxy", "rr_p50_us", "direct"), "+100"},
		{v.Times("haproxy", "cpu_s_per_gb", "direct", "cpu_s_per_gb"), "3.00×"},
		// GRO bulk against direct's plain bulk.
		{v.Pct("xdp-native", "gro_bulk_gbps", "direct", "bulk_gbps"), "120%"},
		// Not measured: the router has no flood phase, direct no GRO.
		{v.Cell("router", "flood_success_pct", "%.2f"), "–"},
		{v.Pct("direct", "gro_bulk_gbps", "direct", "bulk_gbps"), "–"},
		{v.Pct("xdp-native", "conn_per_s", "", "conn_per_s"), "–"},
		{v.Delta("xdp-native", "rr_p50_us", ""), "–"},
		// median [min–max] over the clean repetitions.
		{v.Cell("xdp-native", "conn_per_s", "%.0f"), "9700 [9600–9800]"},
		{v.Cell("direct", "conn_per_s", "%.0f"), "10000"},
		{v.FloodLatency("xdp-native"), "1.00 / 5 / 9"},
		{v.FloodLatency("router"), "–"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
