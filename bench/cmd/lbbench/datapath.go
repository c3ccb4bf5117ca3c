package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// DatapathResult is the bpf package's BenchmarkDataPath: ns per packet
// inside the kernel (BPF_PROG_TEST_RUN), next to the MAC-swap XDP_TX floor.
type DatapathResult struct {
	Command string `json:"command"`
	CPU     string `json:"cpu,omitempty"`
	// Runs holds every -count repetition per sub-benchmark, ns/packet.
	Runs map[string][]float64 `json:"runs"`
	// Median per sub-benchmark.
	Median map[string]float64 `json:"median"`
	Order  []string           `json:"order"`
}

var benchLine = regexp.MustCompile(`^BenchmarkDataPath/(\S+?)(-\d+)?\s+\d+\s+([0-9.]+) ns/packet`)

// runDatapath runs the packet-level benchmark (it loads programs and runs
// them with BPF_PROG_TEST_RUN: no packet leaves the kernel) and keeps its
// output in path.
func runDatapath(count int, path string) (*DatapathResult, error) {
	args := []string{"test", "-run", "XXX", "-bench", "DataPath", "-benchtime", "20x", "-count", strconv.Itoa(count), "./bpf/"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	_ = os.WriteFile(path, out.Bytes(), 0o644)
	r := parseDatapath(out.Bytes())
	r.Command = "go " + strings.Join(args, " ")
	if err != nil {
		return r, fmt.Errorf("%s: %w: %s", r.Command, err, tail(out.String(), 500))
	}
	if len(r.Median) == 0 {
		return r, fmt.Errorf("%s: no ns/packet lines in its output", r.Command)
	}
	return r, nil
}

func parseDatapath(b []byte) *DatapathResult {
	r := &DatapathResult{Runs: map[string][]float64{}, Median: map[string]float64{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if cpu, ok := strings.CutPrefix(line, "cpu: "); ok {
			r.CPU = strings.TrimSpace(cpu)
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		if _, seen := r.Runs[m[1]]; !seen {
			r.Order = append(r.Order, m[1])
		}
		r.Runs[m[1]] = append(r.Runs[m[1]], v)
	}
	for k, v := range r.Runs {
		r.Median[k] = median(v)
	}
	return r
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Min is the fastest run of a sub-benchmark.
func (r *DatapathResult) Min(name string) (float64, bool) {
	v := r.Runs[name]
	if len(v) == 0 {
		return 0, false
	}
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m, true
}
