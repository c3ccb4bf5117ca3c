package maglev

import (
	"github.com/xdplb/xdplb/bpf"

	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// threeServers are the K3s servers of the guide.
func threeServers() []Backend {
	return []Backend{
		{ID: 0, Key: "10.10.10.50:6443", Weight: 1},
		{ID: 1, Key: "10.10.10.51:6443", Weight: 1},
		{ID: 2, Key: "10.10.10.52:6443", Weight: 1},
	}
}

// TestBuildGolden pins the exact table for a small input. Both LB nodes,
// and every version of xdplb, must build the same table from the same
// backends, or an upgrade or failover moves every flow. If this test fails,
// the hash, the seeds or the fill order changed: that is a breaking change,
// not a test to update casually.
//
// The first table was checked by hand. With size 13 the (offset, skip) of
// the keys are .50: (10, 12), .51: (2, 1), .52: (10, 8). Sorted by key, the
// backends take turns: .50 takes 10, .51 takes 2, .52 finds 10 taken and
// takes 5; then 9, 3, 0; then 8, 4, 11 (.52 skips 8 and 3); then 7, 6 (.51
// skips 5), 1 (.52 skips 6); then .50 walks 6,5,4,3,2,1,0 (all taken) to 12,
// the last free slot.
// testSize is the data path's table size.
const testSize = bpf.MaglevSize

func TestBuildGolden(t *testing.T) {
	const a, b, c = 0, 1, 2
	tests := []struct {
		name    string
		weights [3]uint32
		want    []uint32
	}{
		{
			name:    "equal weights",
			weights: [3]uint32{1, 1, 1},
			want:    []uint32{c, c, b, b, b, c, b, a, a, a, a, c, a},
		},
		{
			name:    "third backend weight 2",
			weights: [3]uint32{1, 1, 2},
			want:    []uint32{c, c, b, b, b, c, c, a, a, a, c, c, c},
		},
		{
			name:    "second backend drained",
			weights: [3]uint32{1, 0, 2},
			want:    []uint32{c, c, c, c, a, c, c, a, a, a, c, c, c},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backends := threeServers()
			for i := range backends {
				backends[i].Weight = tt.weights[i]
			}
			got := Build(backends, 13)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Build() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildIgnoresInputOrder(t *testing.T) {
	backends := manyBackends(10)
	backends[3].Weight = 3
	backends[7].Weight = 0
	want := Build(backends, testSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5 {
		shuffled := slices.Clone(backends)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := Build(shuffled, testSize); !slices.Equal(got, want) {
			t.Fatalf("shuffle %d: table differs from the one built in input order", i)
		}
	}
}

func TestBuildNoActiveBackend(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
	}{
		{"nil", nil},
		{"empty", []Backend{}},
		{"all drained", []Backend{{ID: 0, Key: "a", Weight: 0}, {ID: 1, Key: "b", Weight: 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := Build(tt.backends, 13)
			if len(table) != 13 {
				t.Fatalf("len = %d, want 13", len(table))
			}
			for i, id := range table {
				if id != NoBackend {
					t.Fatalf("slot %d = %d, want NoBackend", i, id)
				}
			}
		})
	}
}

func TestBuildFillsEverySlot(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 100, 655} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			backends := manyBackends(n)
			table := Build(backends, testSize)
			counts := slotCounts(table)
			if counts[NoBackend] != 0 {
				t.Fatalf("%d slots left empty", counts[NoBackend])
			}
			// Equal weights: the paper's round robin gives every backend
			// floor(M/N) or ceil(M/N) slots.
			lo, hi := len(table)/n, (len(table)+n-1)/n
			for _, b := range backends {
				if c := counts[b.ID]; c < lo || c > hi {
					t.Errorf("backend %d has %d slots, want %d..%d", b.ID, c, lo, hi)
				}
			}
		})
	}
}

func TestBuildDrainedBackendGetsNoSlot(t *testing.T) {
	backends := threeServers()
	backends[1].Weight = 0
	counts := slotCounts(Build(backends, testSize))
	if counts[1] != 0 {
		t.Errorf("drained backend has %d slots, want 0", counts[1])
	}
	if counts[0]+counts[2] != int(testSize) {
		t.Errorf("the two others hold %d slots, want all %d", counts[0]+counts[2], testSize)
	}
}

func TestBuildWeightsGiveProportionalShares(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
	}{
		{"1:2", []uint32{1, 2}},
		{"1:2:3", []uint32{1, 2, 3}},
		{"1:1:4", []uint32{1, 1, 4}},
		{"100:150:256", []uint32{100, 150, 256}},
		{"5:7:11:13", []uint32{5, 7, 11, 13}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backends := manyBackends(len(tt.weights))
			var sum uint32
			for i, w := range tt.weights {
				backends[i].Weight = w
				sum += w
			}
			counts := slotCounts(Build(backends, testSize))
			for i, w := range tt.weights {
				want := float64(testSize) * float64(w) / float64(sum)
				got := float64(counts[uint32(i)])
				if dev := (got - want) / want; dev < -0.01 || dev > 0.01 {
					t.Errorf("backend %d (weight %d): %v slots, want %.0f ±1%% (off by %+.2f%%)", i, w, got, want, 100*dev)
				}
			}
		})
	}
}

// TestBuildMinimalDisruption is the point of Maglev: when a backend
// leaves, the flows of the others stay where they are.
func TestBuildMinimalDisruption(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		remove int
		limit  float64 // share of the survivors' slots allowed to move
	}{
		{"one of three leaves", 3, 1, 0.01},
		{"first of three leaves", 3, 0, 0.01},
		{"one of ten leaves", 10, 4, 0.01},
		{"one of 100 leaves", 100, 42, 0.01},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := manyBackends(tt.n)
			size := testSize
			if size <= uint32(100*tt.n) {
				t.Fatalf("table of %d slots for %d backends: the bound holds for M > 100 N", size, tt.n)
			}
			after := slices.Delete(slices.Clone(before), tt.remove, tt.remove+1)
			moved := movedShare(Build(before, size), Build(after, size), uint32(tt.remove))
			t.Logf("M=%d N=%d: %.3f%% of the survivors' slots moved", size, tt.n, 100*moved)
			if moved >= tt.limit {
				t.Errorf("%.3f%% of the survivors' slots moved, want < %.1f%%", 100*moved, 100*tt.limit)
			}
		})
	}
}

// TestBuildDrainMovesOnlyItsSlots checks that draining (weight 0) moves
// as little as removing the backend: the daemon drains by weight.
func TestBuildDrainMovesOnlyItsSlots(t *testing.T) {
	before := threeServers()
	drained := threeServers()
	drained[2].Weight = 0
	removed := threeServers()[:2]
	if !slices.Equal(Build(drained, testSize), Build(removed, testSize)) {
		t.Fatal("draining a backend and removing it build different tables")
	}
	moved := movedShare(Build(before, testSize), Build(drained, testSize), 2)
	if moved >= 0.01 {
		t.Errorf("%.3f%% of the survivors' slots moved, want < 1%%", 100*moved)
	}
}

func TestBuildPanicsOnCompositeSize(t *testing.T) {
	for _, size := range []uint32{0, 1, 4, 65536} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), "not prime") {
					t.Fatalf("recover() = %v, want a panic saying the size is not prime", r)
				}
			}()
			Build(threeServers(), size)
		})
	}
}

func TestIsPrime(t *testing.T) {
	tests := []struct {
		n    uint32
		want bool
	}{
		{0, false}, {1, false}, {2, true}, {3, true}, {4, false}, {13, true},
		{25, false}, {65535, false}, {65536, false}, {65537, true},
		{65539, true}, {100003, true}, {100001, false},
		{4294967291, true}, {4294967295, false}, {4294967279, true},
		// 65521 * 65537: a composite with no small factor.
		{65521 * 65537, false},
	}
	for _, tt := range tests {
		if got := IsPrime(tt.n); got != tt.want {
			t.Errorf("IsPrime(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

// FuzzBuild: whatever the backends, the table is full and holds only
// IDs of backends with a positive weight (or is all NoBackend when
// there is none).
func FuzzBuild(f *testing.F) {
	f.Add([]byte{1, 1, 1}, uint8(0))
	f.Add([]byte{0, 0}, uint8(1))
	f.Add([]byte{255, 1, 0, 7}, uint8(2))
	f.Add([]byte{}, uint8(3))
	sizes := []uint32{2, 3, 13, 251, 4099, testSize}
	f.Fuzz(func(t *testing.T, weights []byte, sizeIndex uint8) {
		if len(weights) > 300 {
			weights = weights[:300]
		}
		size := sizes[int(sizeIndex)%len(sizes)]
		backends := make([]Backend, len(weights))
		weighted := map[uint32]bool{}
		for i, w := range weights {
			// Sparse IDs, and keys that may repeat, as a careless caller's would.
			id := uint32(i) * 7
			backends[i] = Backend{ID: id, Key: fmt.Sprintf("10.0.%d.%d:6443", i%3, w%5), Weight: uint32(w % 9)}
			if backends[i].Weight > 0 {
				weighted[id] = true
			}
		}
		table := Build(backends, size)
		if len(table) != int(size) {
			t.Fatalf("len = %d, want %d", len(table), size)
		}
		for i, id := range table {
			switch {
			case len(weighted) == 0 && id != NoBackend:
				t.Fatalf("slot %d = %d with no weighted backend, want NoBackend", i, id)
			case len(weighted) > 0 && !weighted[id]:
				t.Fatalf("slot %d = %d, not the ID of a weighted backend", i, id)
			}
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{3, 100} {
		backends := manyBackends(n)
		size := testSize
		b.Run(fmt.Sprintf("N=%d/M=%d", n, size), func(b *testing.B) {
			for b.Loop() {
				Build(backends, size)
			}
		})
	}
}

// manyBackends returns n backends of weight 1 with IDs 0..n-1, keyed like
// K3s servers on a /16.
func manyBackends(n int) []Backend {
	backends := make([]Backend, n)
	for i := range backends {
		backends[i] = Backend{ID: uint32(i), Key: fmt.Sprintf("10.10.%d.%d:6443", 10+i/250, 50+i%250), Weight: 1}
	}
	return backends
}

func slotCounts(table []uint32) map[uint32]int {
	counts := map[uint32]int{}
	for _, id := range table {
		counts[id]++
	}
	return counts
}

// movedShare returns the share of slots that did not belong to gone in
// before and belong to another backend in after.
func movedShare(before, after []uint32, gone uint32) float64 {
	var kept, moved int
	for i := range before {
		if before[i] == gone {
			continue
		}
		kept++
		if after[i] != before[i] {
			moved++
		}
	}
	return float64(moved) / float64(kept)
}
