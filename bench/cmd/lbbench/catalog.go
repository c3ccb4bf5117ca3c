package main

// What the report needs to know about each thing measured, beyond its name:
// whether it is a load balancer under test or one of the two baselines the
// others are measured against, its colour in the chart and the program of
// the packet-level benchmark that runs its fast path. The report works from
// results.json (--render needs no root and starts nothing), so it looks
// these up by the name a sample carries; newBalancer (lbs.go) starts them.

// role says what a measured thing is to the report.
type role int

const (
	// roleBalancer is a load balancer under test: the goals apply to it.
	roleBalancer role = iota
	// roleDirect is the baseline without any balancer (the agents connect
	// to server-1): the ceiling every "vs direct" figure and goal divides by.
	roleDirect
	// roleRouter is the baseline with lb-1 as a plain IP router: the cost
	// of the extra hop every balancer adds, without balancing or NAT.
	roleRouter
)

// baseline: measured for reference, no goal applies, no GRO variant.
func (r role) baseline() bool { return r != roleBalancer }

// lbInfo describes one entry of --lb.
type lbInfo struct {
	name string
	role role
	// color of its bars in the chart (SVG colour).
	color string
	// datapath is the BenchmarkDataPath program its established flows
	// run through, for the ns/packet goal ("" none).
	datapath string
}

// Colours the packet-level panel of the chart shares with the catalog.
const (
	directColor = "#787878" // direct, and the MAC-swap floor
	xdplbColor  = "#00783c" // xdp-native, and xdplb's programs
)

var catalog = []lbInfo{
	{name: "direct", role: roleDirect, color: directColor},
	{name: "router", role: roleRouter, color: "#afafaf"},
	{name: "xdp-native", color: xdplbColor, datapath: "xdp-established"},
	{name: "xdp-generic", color: "#3caa5a", datapath: "xdp-established"},
	{name: "tc", color: "#0096a0", datapath: "tc-established"},
	{name: "nftables", color: "#e68c14"},
	{name: "haproxy", color: "#285abe"},
	{name: "nginx", color: "#8246aa"},
}

// infoOf is the catalog entry of name; a name it does not know (from an
// older results.json) is a balancer under test drawn in grey.
func infoOf(name string) lbInfo {
	for _, l := range catalog {
		if l.name == name {
			return l
		}
	}
	return lbInfo{name: name, color: "#969696"}
}
