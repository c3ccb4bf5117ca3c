package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// figures are the medians a synthetic sample reports.
type figures struct {
	conn, rrP50, gbps, cpuGB float64
	groGbps                  float64 // 0: no GRO phase
	floodOK, afterOK         float64 // 0: no flood phase
}

func sampleOf(lb string, rep int, f figures) Sample {
	s := Sample{LB: lb, Rep: rep, Order: 1, Status: map[string]json.RawMessage{}}
	s.ConnRate = &ConnRateResult{ConnPerSec: f.conn, Ops: uint64(2 * f.conn)}
	s.RR = &RRResult{P50US: f.rrP50, P99US: 3 * f.rrP50}
	s.Bulk = &BulkResult{Gbps: f.gbps, CPUSPerGB: f.cpuGB, Bytes: 1e9, BaselineCores: 0.05}
	if f.groGbps > 0 {
		s.BulkGRO = &BulkResult{Gbps: f.groGbps, CPUSPerGB: f.cpuGB}
	}
	if f.floodOK > 0 {
		s.Flood = &FloodResult{SuccessPct: f.floodOK, P50US: 1000, P99US: 5000, P999US: 9000}
		s.AfterFlood = &FloodResult{SuccessPct: f.afterOK}
	}
	return s
}

// syntheticReport: direct and router baselines, xdp-native meeting every
// goal (its third repetition noisy and left out), haproxy missing most.
func syntheticReport() *Report {
	started := time.Date(2026, 11, 25, 21, 38, 0, 0, time.UTC)
	r := &Report{
		Config: config{Reps: 2, LBs: []string{"direct", "router", "xdp-native", "haproxy"}, GROBulk: true,
			DurationS: 4, ConnC: 4, FloodPPS: 20000, FloodDurationS: 10, FloodC: 2, FloodTimeoutS: 1, AfterFloodS: 3,
			DatapathCount: 3, ForeignCores: 0.15},
		Machine:  Machine{CPUModel: "Test CPU", Cores: 2, Kernel: "6.1.0", MemoryMB: 4096, GoVersion: "go1.26"},
		Started:  started,
		Finished: started.Add(14*time.Minute + 10*time.Second),
		Datapath: &DatapathResult{
			Command: "go test -bench DataPath ./bpf/",
			Runs: map[string][]float64{"floor-macswap": {10, 11, 12}, "xdp-established": {18, 20, 22},
				"tc-established": {30, 31, 32}},
			Median: map[string]float64{"floor-macswap": 11, "xdp-established": 20, "tc-established": 31},
			Order:  []string{"floor-macswap", "xdp-established", "tc-established"},
		},
	}
	noisy := sampleOf("xdp-native", 3, figures{conn: 1000, rrP50: 90, gbps: 1, cpuGB: 9, groGbps: 1, floodOK: 90, afterOK: 90})
	noisy.Noisy = "other processes used 0.50 cores meanwhile (> 0.15)"
	failed := sampleOf("haproxy", 3, figures{conn: 5000, rrP50: 130, gbps: 2, cpuGB: 6, groGbps: 2.2, floodOK: 98.5, afterOK: 99})
	failed.Errors = []string{"stop: haproxy | exit 1"}
	r.Samples = []Sample{
		sampleOf("direct", 1, figures{conn: 10000, rrP50: 30, gbps: 5, cpuGB: 2, floodOK: 99.99, afterOK: 100}),
		sampleOf("router", 1, figures{conn: 9000, rrP50: 32, gbps: 4, cpuGB: 2.5}),
		sampleOf("xdp-native", 1, figures{conn: 9600, rrP50: 33, gbps: 4.6, cpuGB: 2.3, groGbps: 6, floodOK: 99.5, afterOK: 100}),
		sampleOf("haproxy", 1, figures{conn: 5000, rrP50: 130, gbps: 2, cpuGB: 6, groGbps: 2.2, floodOK: 98.5, afterOK: 99}),
		sampleOf("xdp-native", 2, figures{conn: 9800, rrP50: 33, gbps: 4.6, cpuGB: 2.3, groGbps: 6, floodOK: 99.5, afterOK: 100}),
		noisy,
		failed,
	}
	r.summarize()
	return r
}

func TestMarkdown(t *testing.T) {
	r := syntheticReport()
	md, err := r.markdown("results/chart.svg", "results")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"## Results of 2026-11-25 21:38 UTC\n\n",
		"Machine: **Test CPU, 2 cores, Linux 6.1.0**, 4096 MB, go1.26. full run: 2 repetition(s), load balancers interleaved (each repetition rotates the order), took 14m10s.\n\n",
		"Phases: 4 s each (rr: 1 connection from agent-1; connrate: 3 agents × 4, FIN close;",
		// The main table: medians, ratios and differences against direct.
		"| direct | 10000 | 100% | 30 | +0 | 90 | 5.00 | 100% | 2.00 | 1.00× | 99.99 | 1.00 / 5 / 9 | 100.0 |\n",
		"| router | 9000 | 90% | 32 | +2 | 96 | 4.00 | 80% | 2.50 | 1.25× | – | – | – |\n",
		"| xdp-native | 9700 [9600–9800] | 97% | 33 [33–33] | +3 | 99 [99–99] | 4.60 [4.60–4.60] | 92% | 2.30 [2.30–2.30] | 1.15× | 99.50 [99.50–99.50] | 1.00 / 5 / 9 | 100.0 [100.0–100.0] |\n",
		"\n![chart](results/chart.svg)\n\n",
		// Goals: a column per balancer under test, none for the baselines.
		"| goal | xdp-native | haproxy |\n|---|---|---|\n",
		"| conn/s ≥ 95% of direct | ✅ 97% of direct | ❌ 50% of direct |\n",
		"| RR p50 ≤ direct + 5 µs | ✅ +3 µs | ❌ +100 µs |\n",
		"| CPU/GB ≤ 1.2× direct | ✅ 1.15× direct | ❌ 3.00× direct |\n",
		"| ≥ 99% legit conns OK under SYN flood | ✅ 99.50% | ❌ 98.50% |\n",
		"| established ns/packet ≤ 2× MAC-swap floor | ✅ 1.8× (18.0 vs 10.0 ns, fastest runs) | n/a |\n",
		"| (extra) ≥ 99% legit conns OK 2 s after the flood | ✅ 100.0% | ✅ 99.0% |\n\n### Against the router hop\n",
		// Against the router: every load balancer but the router.
		"| direct | 111% | -2 | 125% | 0.80× | +0 |\n",
		"| xdp-native | 108% | +1 | 115% | 0.92× | +0 |\n",
		"### Packet level\n\n`go test -bench DataPath ./bpf/` (BPF_PROG_TEST_RUN, time inside the program per packet; median of 3):\n",
		"| xdp-established | 20.0 | 18.0–22.0 | 1.8× | 1.8× |\n",
		// GRO: balancers under test only, against direct's plain bulk.
		"| xdp-native | 6.00 [6.00–6.00] | 120% | 2.30 [2.30–2.30] | 1.15× | – | – |\n| haproxy | 2.20 [2.20–2.20] | 44% |",
		// Every repetition, the noisy one and the failed one with their notes.
		"| 3 | 1 | xdp-native | 1000 | 90 | 1.00 | 9.00 | 0.00 | 0.05 | 90.00 | 90.0 | other processes used 0.50 cores meanwhile (> 0.15) |\n",
		"| 3 | 1 | haproxy | 5000 | 130 | 2.00 | 6.00 | 0.00 | 0.05 | 98.50 | 99.0 | stop: haproxy / exit 1 |\n",
		"above 0.15 the sample is noisy and left out of the medians while two clean ones remain. Repetition 3 holds make-up samples",
		"Raw data: `results/results.json` (every agent's output, xdplb status after each phase), `summary.json`, `datapath.txt`.\n\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	for _, unwanted := range []string{"| goal | direct", "| router | 100%", "<no value>", "%!"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("markdown has %q", unwanted)
		}
	}
	if t.Failed() {
		t.Log(md)
	}
}

// TestMarkdownWithoutBaselines: a run of xdplb alone has no ratios, no goal
// that needs direct, no router section.
func TestMarkdownWithoutBaselines(t *testing.T) {
	r := syntheticReport()
	r.Config.LBs = []string{"xdp-native"}
	r.Datapath = nil
	r.summarize()
	md, err := r.markdown("chart.svg", ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| xdp-native | 9700 [9600–9800] | – | 33 [33–33] | – |",
		"| goal | xdp-native |\n|---|---|\n| ≥ 99% legit conns OK under SYN flood | ✅ 99.50% |\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	for _, unwanted := range []string{"### Against the router hop", "### Packet level", "conn/s ≥ 95% of direct"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("markdown has %q", unwanted)
		}
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := syntheticReport()
	dir := t.TempDir()
	out := filepath.Join(dir, "bench", "results")
	path := filepath.Join(dir, "BENCHMARKS.md")

	// A missing file is created, with a title.
	if err := writeMarkdown(path, r, out); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "# Benchmarks\n\n"+mdBegin+"\n## Results of") || !strings.HasSuffix(string(b), mdEnd+"\n") {
		t.Errorf("new file:\n%s", b)
	}
	if !strings.Contains(string(b), "![chart](bench/results/chart.svg)") {
		t.Error("chart link not relative to the Markdown file")
	}

	// What is written around the markers stays.
	hand := "# Benchmarks\n\nWritten by hand.\n\n" + mdBegin + "\nold results\n" + mdEnd + "\n\n## Notes\n\nAlso by hand.\n"
	if err := os.WriteFile(path, []byte(hand), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(path, r, out); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	s := string(b)
	if !strings.HasPrefix(s, "# Benchmarks\n\nWritten by hand.\n\n"+mdBegin+"\n## Results of") ||
		!strings.HasSuffix(s, mdEnd+"\n\n## Notes\n\nAlso by hand.\n") || strings.Contains(s, "old results") {
		t.Errorf("rewritten file:\n%s", s)
	}

	// A file without the markers gets the section appended.
	if err := os.WriteFile(path, []byte("# Other\n\ntext\n\n\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(path, r, out); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.HasPrefix(string(b), "# Other\n\ntext\n\n"+mdBegin+"\n") {
		t.Errorf("appended file:\n%s", b)
	}
}

// svgText is every <text> of an SVG, in order; it fails the test when the
// document is not well-formed XML with an <svg> root.
func svgText(t *testing.T, doc []byte) []string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	var texts []string
	var in []string
	var cur strings.Builder
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
				if tok.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", tok.Name.Space)
				}
			}
			in = append(in, tok.Name.Local)
			cur.Reset()
		case xml.CharData:
			cur.Write(tok)
		case xml.EndElement:
			if tok.Name.Local == "text" {
				texts = append(texts, cur.String())
			}
			in = in[:len(in)-1]
		}
	}
	if root != "svg" || len(in) != 0 {
		t.Fatalf("root <%s>, %d elements left open", root, len(in))
	}
	return texts
}

func TestChart(t *testing.T) {
	r := syntheticReport()
	doc := r.chart()
	texts := svgText(t, doc)
	// Every load balancer's name is a label of its own, whole, once per
	// panel of load balancers (seven), and nothing is cut short.
	for _, lb := range r.Config.LBs {
		if n := count(texts, lb); n != 7 {
			t.Errorf("label %q appears %d times, want 7", lb, n)
		}
		for _, s := range texts {
			if s != lb && strings.HasPrefix(lb, s) && len(s) >= 2 {
				t.Errorf("label %q cut short to %q", lb, s)
			}
		}
	}
	for _, want := range []string{
		"xdplb vs HAProxy, Nginx, nftables, direct (median, whiskers min–max, 2 repetitions)",
		"New connections/s", "RR latency p50 (µs)", "Throughput (Gbit/s)", "Packet level (ns/packet)",
		"floor-macswap", "xdp-established", "tc-established",
		"9700", "4.60", "n/a",
		"20000 SYN/s spoofed; goal ≤ 1%",
		"Test CPU, 2 cores, Linux 6.1.0, 2026-11-25 21:38 UTC. Red dashed line: the goal.",
	} {
		if !slices.Contains(texts, want) {
			t.Errorf("chart lacks the text %q", want)
		}
	}
	// The goals as dashed lines: conn/s, RR, flood, after flood, bulk,
	// CPU, GRO bulk, packet level.
	if n := bytes.Count(doc, []byte(`stroke="`+goalColor+`"`)); n != 8 {
		t.Errorf("%d goal lines, want 8", n)
	}
	// Quick runs say so.
	r.Config.Quick = true
	if texts := svgText(t, r.chart()); !strings.HasSuffix(texts[0], "QUICK RUN, not for conclusions") {
		t.Errorf("quick chart title %q", texts[0])
	}
}

func count(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// TestChartGoalLines: the panels draw the same bounds the goals judge by.
func TestChartGoalLines(t *testing.T) {
	r := syntheticReport()
	want := map[string]float64{
		"New connections/s":         9500, // 95% of direct's 10000
		"RR latency p50 (µs)":       35,   // direct's 30 + 5
		"SYN flood: legit failed %": 1,    // 100 - 99
		"After flood: legit OK %":   99,
		"Throughput (Gbit/s)":       4.5, // 90% of 5
		"CPU-s per GB":              2.4, // 1.2 × 2
		"Gbit/s, GRO on lb-1":       4.5,
		"Packet level (ns/packet)":  20, // 2 × the fastest floor run
	}
	panels := r.chartPanels()
	if len(panels) != len(want) {
		t.Fatalf("%d panels, want %d", len(panels), len(want))
	}
	for _, p := range panels {
		if w, ok := want[p.title]; !ok || !near(p.goal, w) {
			t.Errorf("panel %q: goal %v, want %v", p.title, p.goal, w)
		}
	}
	// GRO: direct has no GRO phase; its bar is its plain bulk.
	gro := panels[6].bars
	if gro[0].label != "direct" || !gro[0].ok || gro[0].v != 5 || gro[1].ok {
		t.Errorf("GRO panel bars: %+v", gro)
	}
}

func TestAxis(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		ceil float64
		axis string
	}{
		{0, 1, "0"},
		{0.9, 1, "0.9"},
		{1.12, 1.2, "1.12"},
		{7672, 8000, "7672"},
		{11200, 12000, "11.2k"},
		{250, 300, "250"},
		{140, 160, "140"},
		{0.3, 0.3, "0.3"},
	} {
		if got := niceCeil(tc.v); !near(got, tc.ceil) {
			t.Errorf("niceCeil(%v) = %v, want %v", tc.v, got, tc.ceil)
		}
		if got := fmtAxis(tc.v); got != tc.axis {
			t.Errorf("fmtAxis(%v) = %q, want %q", tc.v, got, tc.axis)
		}
	}
}

// TestCommittedReports: the generated sections of BENCHMARKS.md and of the
// quick run's BENCHMARKS.md are what the committed results.json render to
// (run `go run ./bench/cmd/lbbench --render bench/results/results.json`
// after editing the template), and the chart renders from them.
func TestCommittedReports(t *testing.T) {
	for _, tc := range []struct{ results, markdown, out string }{
		{"../../results/results.json", "../../../BENCHMARKS.md", "bench/results"},
		{"../../results/quick/results.json", "../../results/quick/BENCHMARKS.md", "."},
	} {
		b, err := os.ReadFile(tc.results)
		if err != nil {
			t.Fatal(err)
		}
		var r Report
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", tc.results, err)
		}
		r.summarize()
		chart := filepath.Join(tc.out, chartFile)
		want, err := r.markdown(chart, tc.out)
		if err != nil {
			t.Fatal(err)
		}
		md, err := os.ReadFile(tc.markdown)
		if err != nil {
			t.Fatal(err)
		}
		s := string(md)
		i, j := strings.Index(s, mdBegin), strings.Index(s, mdEnd)
		if i < 0 || j < i {
			t.Fatalf("%s: no generated section", tc.markdown)
		}
		if got := s[i+len(mdBegin)+1 : j]; got != want {
			t.Errorf("%s: generated section differs from rendering %s", tc.markdown, tc.results)
		}
		svgText(t, r.chart())
	}
}
