package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"strings"
)

// The chart: one bar panel per figure, median bars with min–max whiskers
// and the goal as a dashed red line, drawn with the standard library only.

type canvas struct{ img *image.RGBA }

var (
	white   = color.RGBA{255, 255, 255, 255}
	black   = color.RGBA{30, 30, 30, 255}
	grey    = color.RGBA{150, 150, 150, 255}
	light   = color.RGBA{225, 225, 225, 255}
	red     = color.RGBA{210, 40, 40, 255}
	lbColor = map[string]color.RGBA{
		"direct":      {120, 120, 120, 255},
		"router":      {175, 175, 175, 255},
		"xdp-native":  {0, 120, 60, 255},
		"xdp-generic": {60, 170, 90, 255},
		"tc":          {0, 150, 160, 255},
		"nftables":    {230, 140, 20, 255},
		"haproxy":     {40, 90, 190, 255},
		"nginx":       {130, 70, 170, 255},
	}
	lbShort = map[string]string{
		"direct": "direct", "router": "router", "xdp-native": "xdpnat", "xdp-generic": "xdpgen", "tc": "tc",
		"nftables": "nft", "haproxy": "haprox", "nginx": "nginx",
	}
)

func (c *canvas) rect(x0, y0, x1, y1 int, col color.RGBA) {
	if x0 > x1 {
		x0, x1 = x1, x0
	}
	if y0 > y1 {
		y0, y1 = y1, y0
	}
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			c.img.SetRGBA(x, y, col)
		}
	}
}

func (c *canvas) text(x, y int, s string, scale int, col color.RGBA) {
	for _, r := range s {
		g := glyph(r)
		for row, line := range g {
			for colx, ch := range line {
				if ch == '#' {
					c.rect(x+colx*scale, y+row*scale, x+(colx+1)*scale, y+(row+1)*scale, col)
				}
			}
		}
		x += 6 * scale
	}
}

func (c *canvas) textCentered(cx, y int, s string, scale int, col color.RGBA) {
	c.text(cx-textWidth(s, scale)/2, y, s, scale, col)
}

type bar struct {
	label     string
	v, lo, hi float64
	ok        bool
	col       color.RGBA
}

// panel draws a bar chart in the box (x, y, w, h).
func (c *canvas) panel(x, y, w, h int, title, unit string, bars []bar, goal float64, format string) {
	c.rect(x, y, x+w, y+h, white)
	c.text(x+10, y+8, title, 2, black)
	c.text(x+10, y+28, unit, 1, grey)
	top, bottom := y+48, y+h-28
	left, right := x+52, x+w-10
	ymax := goal
	for _, b := range bars {
		if b.ok {
			ymax = math.Max(ymax, math.Max(b.v, b.hi))
		}
	}
	if ymax <= 0 {
		ymax = 1
	}
	ymax = niceCeil(ymax * 1.12)
	py := func(v float64) int { return bottom - int(math.Round(v/ymax*float64(bottom-top))) }
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		yy := py(v)
		c.rect(left, yy, right, yy+1, light)
		lbl := fmtAxis(v)
		c.text(left-6-textWidth(lbl, 1), yy-3, lbl, 1, grey)
	}
	c.rect(left, bottom, right, bottom+1, black)
	slot := float64(right-left) / float64(max(1, len(bars)))
	bw := int(slot * 0.6)
	for i, b := range bars {
		cx := left + int(slot*(float64(i)+0.5))
		c.textCentered(cx, bottom+8, b.label, 1, black)
		if !b.ok {
			c.textCentered(cx, bottom-12, "n/a", 1, grey)
			continue
		}
		c.rect(cx-bw/2, py(b.v), cx+bw/2, bottom, b.col)
		if b.hi > b.lo {
			c.rect(cx, py(b.hi), cx+1, py(b.lo)+1, black)
			c.rect(cx-4, py(b.hi), cx+5, py(b.hi)+1, black)
			c.rect(cx-4, py(b.lo), cx+5, py(b.lo)+1, black)
		}
		lbl := fmt.Sprintf(format, b.v)
		ly := min(py(b.v), py(b.hi)) - 11
		c.textCentered(cx, max(ly, top-8), lbl, 1, black)
	}
	if goal > 0 {
		yy := py(goal)
		for xx := left; xx < right; xx += 8 {
			c.rect(xx, yy, min(xx+5, right), yy+2, red)
		}
	}
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

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

func writeChart(path string, r *Report) error {
	const pw, ph, cols, rows = 400, 330, 4, 2
	const header = 40
	img := image.NewRGBA(image.Rect(0, 0, pw*cols+10, ph*rows+header+24))
	c := &canvas{img}
	c.rect(0, 0, img.Bounds().Dx(), img.Bounds().Dy(), color.RGBA{245, 245, 245, 255})
	m := r.Machine
	title := fmt.Sprintf("xdplb vs HAProxy, Nginx, nftables, direct  (median, whiskers min-max, %d reps)", r.Config.Reps)
	if r.Config.Quick {
		title += "  QUICK RUN"
	}
	c.text(10, 10, title, 2, black)
	foot := fmt.Sprintf("%s, %d cores, Linux %s, %s.  Red dashed: goal.", m.CPUModel, m.Cores, m.Kernel, r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	c.text(10, img.Bounds().Dy()-16, foot, 1, grey)

	lbBars := func(key string) []bar {
		var out []bar
		for _, lb := range r.lbOrder() {
			b := bar{label: lbShort[lb], col: lbColor[lb]}
			if b.label == "" {
				b.label = lb
			}
			if s := r.summary(lb); s != nil {
				if st, ok := s.Metrics[key]; ok {
					b.v, b.lo, b.hi, b.ok = st.Median, st.Min, st.Max, true
				}
			}
			out = append(out, b)
		}
		return out
	}
	goalOf := func(key string, f func(d float64) float64) float64 {
		if d, ok := r.med("direct", key); ok {
			return f(d)
		}
		return 0
	}
	type panelDef struct {
		title, unit, format string
		bars                []bar
		goal                float64
	}
	var dpPanel panelDef
	if dp := r.Datapath; dp != nil && len(dp.Median) > 0 {
		var bars []bar
		for _, p := range []struct{ name, label string }{
			{"floor-macswap", "floor"}, {"xdp-established", "xdp-est"}, {"tc-established", "tc-est"}, {"xdp-pass-other-port", "xdp-pass"},
		} {
			v, ok := dp.Median[p.name]
			lo, hi := v, v
			for _, x := range dp.Runs[p.name] {
				lo, hi = math.Min(lo, x), math.Max(hi, x)
			}
			bars = append(bars, bar{label: p.label, v: v, lo: lo, hi: hi, ok: ok, col: lbColor["xdp-native"]})
		}
		bars[0].col = lbColor["direct"]
		floor, _ := dp.Min("floor-macswap")
		dpPanel = panelDef{"Packet level ns/packet", "BPF_PROG_TEST_RUN; goal <= 2x fastest floor", "%.1f",
			bars, 2 * floor}
	} else {
		dpPanel = panelDef{title: "Packet level", unit: "not run", format: "%.1f"}
	}
	panels := []panelDef{
		{"New connections/s", "connect, 64 B, close; goal >= 95% of direct", "%.0f",
			lbBars("conn_per_s"), goalOf("conn_per_s", func(d float64) float64 { return 0.95 * d })},
		{"RR latency p50 (us)", "64 B round trip; goal <= direct + 5 us", "%.0f",
			lbBars("rr_p50_us"), goalOf("rr_p50_us", func(d float64) float64 { return d + 5 })},
		{"SYN flood: legit failed %", fmt.Sprintf("%d SYN/s spoofed; goal <= 1%%", r.Config.FloodPPS), "%.2f",
			lbBars("flood_failed_pct"), 1},
		{"After flood: legit OK %", "same load, 2 s after the flood; goal >= 99%", "%.1f",
			lbBars("after_flood_success_pct"), 99},
		{"Throughput (Gbit/s)", "one stream; goal >= 90% of direct", "%.2f",
			lbBars("bulk_gbps"), goalOf("bulk_gbps", func(d float64) float64 { return 0.9 * d })},
		{"CPU-s per GB", "whole machine during bulk; goal <= 1.2x direct", "%.2f",
			lbBars("cpu_s_per_gb"), goalOf("cpu_s_per_gb", func(d float64) float64 { return 1.2 * d })},
		{"Gbit/s, GRO on lb-1", "as a NIC would aggregate; direct as above", "%.2f",
			withDirect(lbBars("gro_bulk_gbps"), lbBars("bulk_gbps")), goalOf("bulk_gbps", func(d float64) float64 { return 0.9 * d })},
		dpPanel,
	}
	for i, p := range panels {
		px := 5 + (i%cols)*pw
		py := header + (i/cols)*ph
		c.panel(px+3, py+3, pw-6, ph-6, p.title, p.unit, p.bars, p.goal, p.format)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// withDirect fills the direct bar of bars (which has no GRO variant) from
// ref.
func withDirect(bars, ref []bar) []bar {
	for i := range bars {
		if bars[i].label == "direct" && !bars[i].ok && i < len(ref) {
			bars[i] = ref[i]
		}
	}
	return bars
}
