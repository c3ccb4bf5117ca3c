package agent

import (
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets: exact below 64 ns,
// then 32 buckets per power of two, so any percentile it reports is within
// about 3% of the true value, in fixed memory (15 KiB), whatever the count.
// Not safe for concurrent use: give each worker its own and Merge them.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	min    time.Duration
	max    time.Duration
}

const (
	histSubBits = 5
	histSub     = 1 << histSubBits                      // 32 buckets per power of two
	histLinear  = 2 * histSub                           // values below 64 are exact
	histBuckets = histLinear + (63-histSubBits)*histSub // up to 2^63 ns
)

func histIndex(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	e := bits.Len64(v) - (histSubBits + 1) // >= 1
	top := v >> uint(e)                    // in [32, 63]
	return histLinear + (e-1)*histSub + int(top-histSub)
}

// histValue returns the middle of bucket i.
func histValue(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	i -= histLinear
	e := i/histSub + 1
	top := uint64(i%histSub + histSub)
	lo := top << uint(e)
	return lo + (uint64(1)<<uint(e))/2
}

// Record adds one duration (negative counts as 0).
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[histIndex(uint64(d))]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
	h.sum += d
}

// Merge adds all of o's samples.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count returns the number of samples.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the q-quantile (0 < q <= 1), clamped to [min, max].
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank == 0 {
		rank = 1
	}
	if rank >= h.n {
		return h.max
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := time.Duration(histValue(i))
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}

// LatencySummary is a Histogram's digest, in microseconds for JSON.
type LatencySummary struct {
	Count  uint64  `json:"count"`
	MeanUS float64 `json:"mean_us"`
	MinUS  float64 `json:"min_us"`
	P50US  float64 `json:"p50_us"`
	P90US  float64 `json:"p90_us"`
	P99US  float64 `json:"p99_us"`
	P999US float64 `json:"p999_us"`
	MaxUS  float64 `json:"max_us"`
}

// Summary digests the histogram.
func (h *Histogram) Summary() LatencySummary {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	s := LatencySummary{Count: h.n}
	if h.n == 0 {
		return s
	}
	s.MeanUS = us(h.sum / time.Duration(h.n))
	s.MinUS = us(h.min)
	s.P50US = us(h.Quantile(0.50))
	s.P90US = us(h.Quantile(0.90))
	s.P99US = us(h.Quantile(0.99))
	s.P999US = us(h.Quantile(0.999))
	s.MaxUS = us(h.max)
	return s
}
