package main

import (
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"strings"
)

// The chart: one bar panel per figure, median bars with min–max whiskers
// and the goal as a dashed red line, as an SVG with real text.

// chartFile is the chart's name in the results directory.
const chartFile = "chart.svg"

// bar is one bar of a panel: a median with its min–max, or nothing
// measured (!ok).
type bar struct {
	label     string
	v, lo, hi float64
	ok        bool
	color     string
}

// panel is one bar chart of the figure; goal > 0 draws the goal's line.
type panel struct {
	title, unit, format string
	bars                []bar
	goal                float64
}

// chart geometry, in SVG user units (pixels).
const (
	panelW, panelH = 400, 360
	chartCols      = 4
	chartHeader    = 44
	chartFooter    = 26
)

const (
	inkColor   = "#1e1e1e"
	greyColor  = "#969696"
	gridColor  = "#e1e1e1"
	goalColor  = "#d22828"
	panelColor = "#ffffff"
	pageColor  = "#f5f5f5"
)

// writeChart writes the chart of r to path.
func writeChart(path string, r *Report) error {
	return os.WriteFile(path, r.chart(), 0o644)
}

// chart is the SVG document.
func (r *Report) chart() []byte {
	panels := r.chartPanels()
	rows := (len(panels) + chartCols - 1) / chartCols
	w, h := panelW*chartCols+10, panelH*rows+chartHeader+chartFooter
	s := &svg{}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n", w, h, w, h)
	s.rect(0, 0, float64(w), float64(h), pageColor, "")
	reps := fmt.Sprintf("%d repetitions", r.Config.Reps)
	if r.Config.Reps == 1 {
		reps = "1 repetition"
	}
	title := fmt.Sprintf("xdplb vs HAProxy, Nginx, nftables, direct (median, whiskers min–max, %s)", reps)
	if r.Config.Quick {
		title += " — QUICK RUN, not for conclusions"
	}
	s.text(10, 28, title, `font-size="20" font-weight="bold"`, inkColor)
	m := r.Machine
	foot := fmt.Sprintf("%s, %d cores, Linux %s, %s. Red dashed line: the goal.", m.CPUModel, m.Cores, m.Kernel, r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	s.text(10, float64(h-9), foot, `font-size="11"`, greyColor)
	for i, p := range panels {
		x := 5 + (i%chartCols)*panelW
		y := chartHeader + (i/chartCols)*panelH
		s.panel(float64(x+3), float64(y+3), panelW-6, panelH-6, p)
	}
	s.b.WriteString("</svg>\n")
	return []byte(s.b.String())
}

// chartPanels are the chart's panels, in reading order.
func (r *Report) chartPanels() []panel {
	lbBars := func(key string) []bar {
		var out []bar
		for _, lb := range r.lbOrder() {
			b := bar{label: lb, color: infoOf(lb).color}
			if s := r.summary(lb); s != nil {
				if st, ok := s.Metrics[key]; ok {
					b.v, b.lo, b.hi, b.ok = st.Median, st.Min, st.Max, true
				}
			}
			out = append(out, b)
		}
		return out
	}
	limit := func(d goalDef) float64 {
		if v, ok := r.limit(d); ok {
			return v
		}
		return 0
	}
	// The flood panel shows the failed share: OK shares all look alike.
	floodFail := 100 - limit(goalFlood)
	return []panel{
		{"New connections/s", "connect, 64 B, close; goal ≥ 95% of direct", "%.0f",
			lbBars("conn_per_s"), limit(goalConnRate)},
		{"RR latency p50 (µs)", "64 B round trip; goal ≤ direct + 5 µs", "%.0f",
			lbBars("rr_p50_us"), limit(goalRR)},
		{"SYN flood: legit failed %", fmt.Sprintf("%d SYN/s spoofed; goal ≤ %.0f%%", r.Config.FloodPPS, floodFail), "%.2f",
			lbBars("flood_failed_pct"), floodFail},
		{"After flood: legit OK %", "same load, 2 s after the flood; goal ≥ 99%", "%.1f",
			lbBars("after_flood_success_pct"), limit(goalAfterFlood)},
		{"Throughput (Gbit/s)", "one stream; goal ≥ 90% of direct", "%.2f",
			lbBars("bulk_gbps"), limit(goalBulk)},
		{"CPU-s per GB", "whole machine during bulk; goal ≤ 1.2× direct", "%.2f",
			lbBars("cpu_s_per_gb"), limit(goalCPU)},
		{"Gbit/s, GRO on lb-1", "as a NIC would aggregate; direct as above", "%.2f",
			withDirect(lbBars("gro_bulk_gbps"), lbBars("bulk_gbps")), limit(goalBulk)},
		r.datapathPanel(),
	}
}

// datapathPanel: ns/packet of the floor and xdplb's programs.
func (r *Report) datapathPanel() panel {
	dp := r.Datapath
	if dp == nil || len(dp.Median) == 0 {
		return panel{title: "Packet level", unit: "not run", format: "%.1f"}
	}
	var bars []bar
	for _, name := range []string{floorProgram, "xdp-established", "tc-established", "xdp-pass-other-port"} {
		v, ok := dp.Median[name]
		lo, hi := v, v
		for _, x := range dp.Runs[name] {
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		col := xdplbColor
		if name == floorProgram {
			col = directColor
		}
		bars = append(bars, bar{label: name, v: v, lo: lo, hi: hi, ok: ok, color: col})
	}
	goal, _ := r.limit(goalPacket)
	return panel{"Packet level (ns/packet)", "BPF_PROG_TEST_RUN; goal ≤ 2× fastest floor", "%.1f", bars, goal}
}

// withDirect fills the bars of the direct baseline (which has no GRO
// variant) from ref.
func withDirect(bars, ref []bar) []bar {
	for i := range bars {
		if infoOf(bars[i].label).role == roleDirect && !bars[i].ok && i < len(ref) {
			bars[i] = ref[i]
		}
	}
	return bars
}

// svg accumulates SVG elements.
type svg struct{ b strings.Builder }

func (s *svg) rect(x, y, w, h float64, fill, extra string) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"%s/>`+"\n", x, y, w, h, fill, sp(extra))
}

func (s *svg) line(x0, y0, x1, y1 float64, stroke, extra string) {
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"%s/>`+"\n", x0, y0, x1, y1, stroke, sp(extra))
}

// text writes s, escaped, at (x, y) (the baseline; extra sets the anchor,
// size, rotation).
func (s *svg) text(x, y float64, text, extra, fill string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" fill="%s"%s>`, x, y, fill, sp(extra))
	_ = xml.EscapeText(&s.b, []byte(text))
	s.b.WriteString("</text>\n")
}

func sp(extra string) string {
	if extra == "" {
		return ""
	}
	return " " + extra
}

// panel draws p in the box (x, y, w, h): title and unit, a y axis with
// five grid lines, a bar per entry with its value above and its name below
// (slanted, whole), and the goal's line.
func (s *svg) panel(x, y, w, h float64, p panel) {
	s.rect(x, y, w, h, panelColor, `rx="4"`)
	s.text(x+10, y+22, p.title, `font-size="16" font-weight="bold"`, inkColor)
	s.text(x+10, y+40, p.unit, `font-size="11"`, greyColor)
	top, bottom := y+62, y+h-92
	left, right := x+50, x+w-12
	ymax := p.goal
	for _, b := range p.bars {
		if b.ok {
			ymax = math.Max(ymax, math.Max(b.v, b.hi))
		}
	}
	if ymax <= 0 {
		ymax = 1
	}
	ymax = niceCeil(ymax * 1.12)
	py := func(v float64) float64 { return bottom - v/ymax*(bottom-top) }
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		s.line(left, py(v), right, py(v), gridColor, "")
		s.text(left-6, py(v)+4, fmtAxis(v), `font-size="11" text-anchor="end"`, greyColor)
	}
	s.line(left, bottom, right, bottom, inkColor, "")
	slot := (right - left) / float64(max(1, len(p.bars)))
	bw := slot * 0.6
	for i, b := range p.bars {
		cx := left + slot*(float64(i)+0.5)
		ly := bottom + 14
		s.text(cx+4, ly, b.label, fmt.Sprintf(`font-size="12" text-anchor="end" transform="rotate(-35 %.1f %.1f)"`, cx+4, ly), inkColor)
		if !b.ok {
			s.text(cx, bottom-6, "n/a", `font-size="11" text-anchor="middle"`, greyColor)
			continue
		}
		fmt.Fprintf(&s.b, `<g><title>`)
		_ = xml.EscapeText(&s.b, []byte(fmt.Sprintf("%s: "+p.format+" [%s–%s]", b.label, b.v, fmt.Sprintf(p.format, b.lo), fmt.Sprintf(p.format, b.hi))))
		s.b.WriteString("</title>\n")
		s.rect(cx-bw/2, py(b.v), bw, bottom-py(b.v), b.color, "")
		if b.hi > b.lo {
			s.line(cx, py(b.hi), cx, py(b.lo), inkColor, "")
			s.line(cx-4, py(b.hi), cx+4, py(b.hi), inkColor, "")
			s.line(cx-4, py(b.lo), cx+4, py(b.lo), inkColor, "")
		}
		s.b.WriteString("</g>\n")
		label := fmt.Sprintf(p.format, b.v)
		s.text(cx, math.Max(math.Min(py(b.v), py(b.hi))-5, top-6), label, `font-size="11" text-anchor="middle"`, inkColor)
	}
	if p.goal > 0 {
		s.line(left, py(p.goal), right, py(p.goal), goalColor, `stroke-width="2" stroke-dasharray="6 3"`)
	}
}

// niceCeil rounds v up to 1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6 or 8 times a power
// of ten, for the top of an axis whose quarters are round too.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// fmtAxis is an axis label: "0", "7500", "12.5k", "2.5", "0.25".
func fmtAxis(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 10000:
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", v/1000), "0"), ".") + "k"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
}
