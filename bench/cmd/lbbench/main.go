// Command lbbench measures xdplb (XDP native, XDP generic, TC) side by side
// with HAProxy, the Nginx stream proxy, nftables NAT and a direct connection,
// on the K3s guide's network built in network namespaces (tests/testnet):
// new connections per second, request/response latency, one-stream
// throughput, machine CPU per GB moved, and legitimate connections under a
// bounded spoofed SYN flood; plus the packet-level figures of the bpf
// package's BenchmarkDataPath. It writes bench/results/*.json, a chart and
// the results section of BENCHMARKS.md. Run as root from the module root:
//
//	go run ./bench/cmd/lbbench            # full run (~14 min)
//	go run ./bench/cmd/lbbench --quick    # smoke run (~3 min)
//
// Every load is bounded in time and count; all traffic stays inside the
// namespaces the run creates, which it removes at the end (also on SIGINT
// or SIGTERM).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

type config struct {
	Quick         bool          `json:"quick"`
	Reps          int           `json:"repetitions"`
	LBs           []string      `json:"load_balancers"`
	Duration      time.Duration `json:"-"`
	Warmup        time.Duration `json:"-"`
	FloodDuration time.Duration `json:"-"`
	FloodPPS      int           `json:"flood_pps"`
	ConnC         int           `json:"connrate_concurrency_per_agent"`
	FloodC        int           `json:"flood_legit_concurrency_per_agent"`
	FloodTimeout  time.Duration `json:"-"`
	AfterFlood    time.Duration `json:"-"`
	RSTClose      bool          `json:"rst_close"`
	GROBulk       bool          `json:"gro_bulk"`
	Pin           bool          `json:"pin_cpus"`
	Phases        []string      `json:"phases"`
	DatapathCount int           `json:"datapath_count"`
	NoisyCores    float64       `json:"noisy_idle_cores"`
	ForeignCores  float64       `json:"noisy_foreign_cores"`
	MaxExtra      int           `json:"max_extra_samples"`
	TimeBudget    time.Duration `json:"-"`
	QuietWait     time.Duration `json:"-"`
	QuietBudget   time.Duration `json:"-"`

	DurationS      float64 `json:"phase_duration_s"`
	WarmupS        float64 `json:"warmup_s"`
	FloodDurationS float64 `json:"flood_duration_s"`
	FloodTimeoutS  float64 `json:"flood_connect_timeout_s"`
	AfterFloodS    float64 `json:"after_flood_s"`

	out, markdown string
	skipDatapath  bool
	render        string
}

func main() {
	os.Exit(run())
}

func run() int {
	var c config
	fs := pflag.NewFlagSet("lbbench", pflag.ContinueOnError)
	fs.BoolVar(&c.Quick, "quick", false, "smoke run: 1 repetition, short phases; writes to bench/results/quick unless --out is given")
	fs.IntVar(&c.Reps, "reps", 3, "repetitions (the load balancers are interleaved within each)")
	fs.StringSliceVar(&c.LBs, "lb", allBalancers, "load balancers to measure")
	fs.DurationVar(&c.Duration, "duration", 4*time.Second, "duration of the rr, connrate and bulk phases")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "warm-up connections before measuring")
	fs.DurationVar(&c.FloodDuration, "flood-duration", 10*time.Second, "duration of the SYN flood")
	fs.IntVar(&c.FloodPPS, "flood-pps", 20000, "SYN flood rate, packets per second")
	fs.IntVar(&c.ConnC, "conn-c", 4, "connrate concurrency per agent (3 agents)")
	fs.IntVar(&c.FloodC, "flood-c", 2, "legitimate connrate concurrency per agent during the flood")
	fs.DurationVar(&c.FloodTimeout, "flood-timeout", time.Second, "a legitimate connection not done within this during (and after) the flood counts as failed; 1 s: one that needed a SYN retransmission")
	fs.DurationVar(&c.AfterFlood, "after-flood", 3*time.Second, "legitimate load starting 2 s after the flood ended (recovery)")
	fs.BoolVar(&c.RSTClose, "rst-close", false, "agents close with RST instead of FIN in connrate")
	fs.StringSliceVar(&c.Phases, "phases", phaseFlags(), "phases to run ("+strings.Join(phaseFlags(), ", ")+"; --list-phases shows what each runs)")
	listPhases := fs.Bool("list-phases", false, "print the phases each load balancer goes through, as a table, and exit")
	fs.BoolVar(&c.Pin, "pin", false, "pin the agents to CPU 0 and the sinks to the last CPU")
	fs.BoolVar(&c.GROBulk, "gro-bulk", true, "also measure bulk with GRO on lb-1's eth1")
	fs.IntVar(&c.DatapathCount, "datapath-count", 5, "-count of the bpf BenchmarkDataPath run")
	fs.BoolVar(&c.skipDatapath, "skip-datapath", false, "do not run the bpf packet-level benchmark")
	fs.Float64Var(&c.NoisyCores, "noisy-idle-cores", 0.3, "before each sample, wait (see --quiet-wait) while the machine is busier than this (cores) with nothing of this run going on")
	fs.Float64Var(&c.ForeignCores, "noisy-foreign-cores", 0.15, "a sample during which processes not of this run used more CPU than this (cores, on average), or with more than 10% steal in bulk, is marked noisy and left out of the medians while 2 clean ones remain")
	fs.IntVar(&c.MaxExtra, "max-extra", 4, "at the end, measure again (at most this many times in all) the load balancers with fewer clean samples than --reps")
	fs.DurationVar(&c.TimeBudget, "time-budget", 15*time.Minute, "start no extra sample after the run has taken this long")
	fs.DurationVar(&c.QuietWait, "quiet-wait", time.Minute, "before each measurement, wait up to this long for the machine to be idle (others' load)")
	fs.DurationVar(&c.QuietBudget, "quiet-budget", 2*time.Minute, "total time the whole run may spend waiting for an idle machine")
	fs.StringVar(&c.render, "render", "", "only redo the summary, chart and markdown from this results.json (no measurement, no root needed)")
	fs.StringVar(&c.out, "out", "", "results directory (default bench/results, or bench/results/quick with --quick)")
	fs.StringVar(&c.markdown, "markdown", "", "markdown file whose results section is rewritten (default BENCHMARKS.md, or <out>/BENCHMARKS.md with --quick)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		return 2
	}
	if *listPhases {
		fmt.Print(phaseTable())
		return 0
	}
	if err := checkPhases(c.Phases); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		return 2
	}
	if c.Quick {
		set := func(name string, apply func()) {
			if !fs.Changed(name) {
				apply()
			}
		}
		set("reps", func() { c.Reps = 1 })
		set("duration", func() { c.Duration = 2 * time.Second })
		set("warmup", func() { c.Warmup = 500 * time.Millisecond })
		set("flood-duration", func() { c.FloodDuration = 3 * time.Second })
		set("after-flood", func() { c.AfterFlood = 2 * time.Second })
		set("datapath-count", func() { c.DatapathCount = 1 })
		set("quiet-wait", func() { c.QuietWait = 10 * time.Second })
		set("quiet-budget", func() { c.QuietBudget = 30 * time.Second })
		set("max-extra", func() { c.MaxExtra = 1 })
		set("time-budget", func() { c.TimeBudget = 3 * time.Minute })
	}
	if c.out == "" {
		c.out = "bench/results"
		if c.Quick {
			c.out = "bench/results/quick"
		}
	}
	if c.markdown == "" {
		c.markdown = "BENCHMARKS.md"
		if c.Quick {
			c.markdown = filepath.Join(c.out, "BENCHMARKS.md")
		}
	}
	c.DurationS, c.WarmupS = c.Duration.Seconds(), c.Warmup.Seconds()
	c.FloodDurationS, c.FloodTimeoutS = c.FloodDuration.Seconds(), c.FloodTimeout.Seconds()
	c.AfterFloodS = c.AfterFlood.Seconds()
	if c.Reps < 1 || c.Duration <= 0 || c.FloodDuration < 2*time.Second || c.FloodPPS <= 0 || c.FloodPPS > 200000 {
		fmt.Fprintln(os.Stderr, "lbbench: want --reps >= 1, --duration > 0, --flood-duration >= 2s, 0 < --flood-pps <= 200000")
		return 2
	}
	for _, name := range c.LBs {
		if _, err := newBalancer(name); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench:", err)
			return 2
		}
	}
	if c.render != "" {
		if err := render(c); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench:", err)
			return 1
		}
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "lbbench: needs root (network namespaces, BPF): run as root")
		return 1
	}
	if err := bench(c); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		return 1
	}
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func bench(c config) error {
	began := time.Now()
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	report := &Report{Config: c, Machine: machineInfo(), Started: began}
	logf("machine: %s, %d cores, kernel %s", report.Machine.CPUModel, report.Machine.Cores, report.Machine.Kernel)

	if !c.skipDatapath {
		logf("packet level: go test -bench DataPath ./bpf/ (count %d)", c.DatapathCount)
		dp, err := runDatapath(c.DatapathCount, filepath.Join(c.out, "datapath.txt"))
		if err != nil {
			logf("packet-level benchmark failed: %v", err)
			report.Errors = append(report.Errors, "datapath: "+err.Error())
		}
		report.Datapath = dp
	}

	tmp, err := os.MkdirTemp("", "lbbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	b, err := buildBins(ctx, tmp)
	cancel()
	if err != nil {
		return err
	}

	e, err := newEnv(b, tmp, logf)
	if err != nil {
		return err
	}
	e.pin = c.Pin
	// Tear down on SIGINT/SIGTERM too. Running loads end by themselves
	// within their duration; the namespaces go with Close.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	interrupted := make(chan struct{})
	var current balancer
	go func() {
		sig := <-sigs
		logf("%v: cleaning up", sig)
		close(interrupted)
		if current != nil {
			_ = current.Stop(e)
		}
		_ = e.Close()
		_ = os.RemoveAll(tmp)
		os.Exit(130)
	}()
	defer func() {
		signal.Stop(sigs)
		if err := e.Close(); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	report.Network = e.topo.Prefix

	budget := c.QuietBudget
	for rep := 1; rep <= c.Reps; rep++ {
		order := rotate(c.LBs, rep-1)
		logf("repetition %d/%d: %s", rep, c.Reps, strings.Join(order, ", "))
		for i, name := range order {
			select {
			case <-interrupted:
				return errors.New("interrupted")
			default:
			}
			idle := waitQuiet(c, &budget)
			lb, _ := newBalancer(name)
			current = lb
			s := measure(e, lb, c, rep, i+1, idle)
			current = nil
			report.Samples = append(report.Samples, s)
			logf("  %-11s %s", name, s.brief())
			// Save as we go: a long run that dies still leaves its data.
			_ = writeJSON(filepath.Join(c.out, "results.json"), report)
		}
	}
	// Make-up samples for load balancers that noise left short of clean
	// repetitions, while the time budget lasts.
	for extra := 0; extra < c.MaxExtra; {
		var short []string
		for _, name := range c.LBs {
			clean := 0
			for _, s := range report.Samples {
				if s.LB == name && s.Noisy == "" && len(s.Errors) == 0 {
					clean++
				}
			}
			if clean < c.Reps {
				short = append(short, name)
			}
		}
		if len(short) == 0 || time.Since(began) > c.TimeBudget {
			break
		}
		for _, name := range short {
			if extra >= c.MaxExtra || time.Since(began) > c.TimeBudget {
				break
			}
			extra++
			idle := waitQuiet(c, &budget)
			lb, _ := newBalancer(name)
			current = lb
			s := measure(e, lb, c, c.Reps+1, extra, idle)
			current = nil
			report.Samples = append(report.Samples, s)
			logf("  extra %-11s %s", name, s.brief())
			_ = writeJSON(filepath.Join(c.out, "results.json"), report)
		}
	}
	report.Finished = time.Now()
	report.summarize()
	if err := writeJSON(filepath.Join(c.out, "results.json"), report); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(c.out, "summary.json"), report.summaryOnly()); err != nil {
		return err
	}
	if err := writeOutputs(c, report); err != nil {
		return err
	}
	logf("done in %v: %s/results.json, summary.json, %s; %s", time.Since(began).Round(time.Second), c.out, chartFile, c.markdown)
	return nil
}

func rotate(s []string, k int) []string {
	if len(s) == 0 {
		return nil
	}
	k %= len(s)
	return append(append([]string{}, s[k:]...), s[:k]...)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Machine names the machine in the output.
type Machine struct {
	CPUModel  string `json:"cpu_model"`
	CPUBrand  string `json:"cpu_brand,omitempty"` // as Go's testing package reports it
	Cores     int    `json:"cores"`
	Kernel    string `json:"kernel"`
	MemoryMB  int    `json:"memory_mb"`
	Hostname  string `json:"hostname"`
	GoVersion string `json:"go_version"`
}

func machineInfo() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		m.MemoryMB = kb / 1024
	}
	m.Hostname, _ = os.Hostname()
	return m
}

// waitQuiet samples the machine's busy CPU while nothing of the benchmark
// runs (sinks idle, no balancer) and waits, within c.QuietWait and what is
// left of budget, until it is below c.NoisyCores: other people's work on a
// shared machine skews every figure. It returns the last busy cores seen.
func waitQuiet(c config, budget *time.Duration) float64 {
	sample := func() float64 {
		a := readCPU()
		time.Sleep(time.Second)
		return a.to(readCPU()).BusyCores
	}
	busy := sample()
	if busy <= c.NoisyCores {
		return busy
	}
	limit := min(c.QuietWait, *budget)
	start := time.Now()
	logf("  machine busy (%.2f cores with nothing of ours running): waiting up to %v for it to quiet down", busy, limit.Round(time.Second))
	for time.Since(start) < limit {
		time.Sleep(2 * time.Second)
		if busy = sample(); busy <= c.NoisyCores {
			break
		}
	}
	*budget -= time.Since(start)
	if *budget < 0 {
		*budget = 0
	}
	if busy > c.NoisyCores {
		logf("  still busy (%.2f cores): measuring anyway", busy)
	}
	return busy
}

// render rebuilds summary.json, the chart and the markdown section from a
// saved results.json.
func render(c config) error {
	b, err := os.ReadFile(c.render)
	if err != nil {
		return err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", c.render, err)
	}
	r.summarize()
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(c.out, "summary.json"), r.summaryOnly()); err != nil {
		return err
	}
	return writeOutputs(c, &r)
}

// writeOutputs writes the chart and the Markdown section of a summarized
// report and prints its main table.
func writeOutputs(c config, r *Report) error {
	if err := writeChart(filepath.Join(c.out, chartFile), r); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := writeMarkdown(c.markdown, r, c.out); err != nil {
		return fmt.Errorf("markdown: %w", err)
	}
	t, err := r.table()
	if err != nil {
		return err
	}
	fmt.Println(t)
	return nil
}
