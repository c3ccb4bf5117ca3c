package main

import (
	"slices"
	"strings"
	"testing"
)

func TestPhaseTable(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range phases {
		if p.name == "" || seen[p.name] {
			t.Errorf("phase %q: empty or twice", p.name)
		}
		if p.after != "" && !seen[p.after] {
			t.Errorf("phase %q runs after %q, which is not before it", p.name, p.after)
		}
		if p.run == nil || p.needs == "" || p.runs == "" {
			t.Errorf("phase %q: no run, needs or runs", p.name)
		}
		seen[p.name] = true
	}
	// --phases takes these, and runs them all by default.
	if got := phaseFlags(); !slices.Equal(got, []string{"rr", "connrate", "bulk", "flood"}) {
		t.Errorf("phase flags %v", got)
	}
	if err := checkPhases([]string{"rr", "flood"}); err != nil {
		t.Error(err)
	}
	if err := checkPhases([]string{"bulk-gro"}); err == nil {
		t.Error("--phases bulk-gro accepted (bulk-gro goes with bulk)")
	}
	table := phaseTable()
	for _, p := range phases {
		if !strings.Contains(table, "\n| "+p.name+" | ") {
			t.Errorf("--list-phases lacks %s:\n%s", p.name, table)
		}
	}
}

// TestPhaseSelection: which phases each kind of load balancer goes through.
func TestPhaseSelection(t *testing.T) {
	all := config{Phases: phaseFlags(), GROBulk: true}
	for _, tc := range []struct {
		name string
		c    config
		lb   string
		want []string
	}{
		{"balancer", all, "xdp-native", []string{"warm-up", "rr", "connrate", "bulk", "bulk-gro", "flood", "after-flood"}},
		{"direct: no GRO variant", all, "direct", []string{"warm-up", "rr", "connrate", "bulk", "flood", "after-flood"}},
		{"router: no GRO, no flood", all, "router", []string{"warm-up", "rr", "connrate", "bulk"}},
		{"quick runs them all", config{Quick: true, Phases: phaseFlags(), GROBulk: true}, "haproxy",
			[]string{"warm-up", "rr", "connrate", "bulk", "bulk-gro", "flood", "after-flood"}},
		{"--gro-bulk=false", config{Phases: phaseFlags()}, "tc", []string{"warm-up", "rr", "connrate", "bulk", "flood", "after-flood"}},
		{"--phases rr,flood", config{Phases: []string{"rr", "flood"}, GROBulk: true}, "nginx", []string{"warm-up", "rr", "flood", "after-flood"}},
	} {
		var got []string
		for _, p := range plan(tc.c, infoOf(tc.lb)) {
			got = append(got, p.name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestCatalog: every load balancer lbbench can start has its entry, and
// the two baselines are there once each.
func TestCatalog(t *testing.T) {
	for _, name := range allBalancers {
		lb, err := newBalancer(name)
		if err != nil || lb.Name() != name {
			t.Errorf("newBalancer(%q) = %v, %v", name, lb, err)
		}
		if !slices.ContainsFunc(catalog, func(l lbInfo) bool { return l.name == name }) {
			t.Errorf("%s has no catalog entry", name)
		}
	}
	roles := map[role]int{}
	for _, l := range catalog {
		if !slices.Contains(allBalancers, l.name) {
			t.Errorf("catalog entry %s is no load balancer lbbench knows", l.name)
		}
		if !strings.HasPrefix(l.color, "#") {
			t.Errorf("%s: color %q", l.name, l.color)
		}
		roles[l.role]++
	}
	if roles[roleDirect] != 1 || roles[roleRouter] != 1 {
		t.Errorf("baselines in the catalog: %v", roles)
	}
	if infoOf("something-new").role != roleBalancer {
		t.Error("an unknown name is not a balancer under test")
	}
}
