package control

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// threeServers are the K3s servers of the guide.
func threeServers() []MaglevBackend {
	return []MaglevBackend{
		{ID: 0, Key: "10.10.10.50:6443", Weight: 1},
		{ID: 1, Key: "10.10.10.51:6443", Weight: 1},
		{ID: 2, Key: "10.10.10.52:6443", Weight: 1},
	}
}

// TestBuildMaglevGolden pins the exact table for a small input. Both LB nodes,
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
func TestBuildMaglevGolden(t *testing.T) {
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
			got := BuildMaglev(backends, 13)
			if !slices.Equal(got, tt.want) {
				t.Errorf("BuildMaglev() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildMaglevIgnoresInputOrder(t *testing.T) {
	backends := manyBackends(10)
	backends[3].Weight = 3
	backends[7].Weight = 0
	want := BuildMaglev(backends, DefaultMaglevSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5 {
		shuffled := slices.Clone(backends)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := BuildMaglev(shuffled, DefaultMaglevSize); !slices.Equal(got, want) {
			t.Fatalf("shuffle %d: table differs from the one built in input order", i)
		}
	}
}

func TestBuildMaglevNoActiveBackend(t *testing.T) {
	tests := []struct {
		name     string
		backends []MaglevBackend
	}{
		{"nil", nil},
		{"empty", []MaglevBackend{}},
		{"all drained", []MaglevBackend{{ID: 0, Key: "a", Weight: 0}, {ID: 1, Key: "b", Weight: 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := BuildMaglev(tt.backends, 13)
			if len(table) != 13 {
				t.Fatalf("len = %d, want 13", len(table))
			}
			for i, id := range table {
				if id != MaglevNoBackend {
					t.Fatalf("slot %d = %d, want MaglevNoBackend", i, id)
				}
			}
		})
	}
}

func TestBuildMaglevFillsEverySlot(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 100, 655} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			backends := manyBackends(n)
			table := BuildMaglev(backends, DefaultMaglevSize)
			counts := slotCounts(table)
			if counts[MaglevNoBackend] != 0 {
				t.Fatalf("%d slots left empty", counts[MaglevNoBackend])
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

func TestBuildMaglevDrainedBackendGetsNoSlot(t *testing.T) {
	backends := threeServers()
	backends[1].Weight = 0
	counts := slotCounts(BuildMaglev(backends, DefaultMaglevSize))
	if counts[1] != 0 {
		t.Errorf("drained backend has %d slots, want 0", counts[1])
	}
	if counts[0]+counts[2] != int(DefaultMaglevSize) {
		t.Errorf("the two others hold %d slots, want all %d", counts[0]+counts[2], DefaultMaglevSize)
	}
}

func TestBuildMaglevWeightsGiveProportionalShares(t *testing.T) {
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
			counts := slotCounts(BuildMaglev(backends, DefaultMaglevSize))
			for i, w := range tt.weights {
				want := float64(DefaultMaglevSize) * float64(w) / float64(sum)
				got := float64(counts[uint32(i)])
				if dev := (got - want) / want; dev < -0.01 || dev > 0.01 {
					t.Errorf("backend %d (weight %d): %v slots, want %.0f ±1%% (off by %+.2f%%)", i, w, got, want, 100*dev)
				}
			}
		})
	}
}

// TestBuildMaglevMinimalDisruption is the point of Maglev: when a backend
// leaves, the flows of the others stay where they are.
func TestBuildMaglevMinimalDisruption(t *testing.T) {
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
			size := MaglevSizeFor(tt.n)
			after := slices.Delete(slices.Clone(before), tt.remove, tt.remove+1)
			moved := movedShare(BuildMaglev(before, size), BuildMaglev(after, size), uint32(tt.remove))
			t.Logf("M=%d N=%d: %.3f%% of the survivors' slots moved", size, tt.n, 100*moved)
			if moved >= tt.limit {
				t.Errorf("%.3f%% of the survivors' slots moved, want < %.1f%%", 100*moved, 100*tt.limit)
			}
		})
	}
}

// TestBuildMaglevDrainMovesOnlyItsSlots checks that draining (weight 0) moves
// as little as removing the backend: the daemon drains by weight.
func TestBuildMaglevDrainMovesOnlyItsSlots(t *testing.T) {
	before := threeServers()
	drained := threeServers()
	drained[2].Weight = 0
	removed := threeServers()[:2]
	if !slices.Equal(BuildMaglev(drained, DefaultMaglevSize), BuildMaglev(removed, DefaultMaglevSize)) {
		t.Fatal("draining a backend and removing it build different tables")
	}
	moved := movedShare(BuildMaglev(before, DefaultMaglevSize), BuildMaglev(drained, DefaultMaglevSize), 2)
	if moved >= 0.01 {
		t.Errorf("%.3f%% of the survivors' slots moved, want < 1%%", 100*moved)
	}
}

func TestBuildMaglevPanicsOnCompositeSize(t *testing.T) {
	for _, size := range []uint32{0, 1, 4, 65536} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), "not prime") {
					t.Fatalf("recover() = %v, want a panic saying the size is not prime", r)
				}
			}()
			BuildMaglev(threeServers(), size)
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

func TestMaglevSizeFor(t *testing.T) {
	tests := []struct {
		n    int
		want uint32
	}{
		{-1, DefaultMaglevSize},
		{0, DefaultMaglevSize},
		{1, DefaultMaglevSize},
		{3, DefaultMaglevSize},
		{655, DefaultMaglevSize}, // 65500 < 65537
		{656, 65609},             // smallest prime >= 65600
		{1000, 100003},           // smallest prime >= 100000
		{1 << 30, largestPrimeUint32},
		{int(^uint(0) >> 1), largestPrimeUint32},
	}
	for _, tt := range tests {
		got := MaglevSizeFor(tt.n)
		if got != tt.want {
			t.Errorf("MaglevSizeFor(%d) = %d, want %d", tt.n, got, tt.want)
		}
		if !IsPrime(got) {
			t.Errorf("MaglevSizeFor(%d) = %d is not prime", tt.n, got)
		}
	}
}

// FuzzBuildMaglev: whatever the backends, the table is full and holds only
// IDs of backends with a positive weight (or is all MaglevNoBackend when
// there is none).
func FuzzBuildMaglev(f *testing.F) {
	f.Add([]byte{1, 1, 1}, uint8(0))
	f.Add([]byte{0, 0}, uint8(1))
	f.Add([]byte{255, 1, 0, 7}, uint8(2))
	f.Add([]byte{}, uint8(3))
	sizes := []uint32{2, 3, 13, 251, 4099, DefaultMaglevSize}
	f.Fuzz(func(t *testing.T, weights []byte, sizeIndex uint8) {
		if len(weights) > 300 {
			weights = weights[:300]
		}
		size := sizes[int(sizeIndex)%len(sizes)]
		backends := make([]MaglevBackend, len(weights))
		weighted := map[uint32]bool{}
		for i, w := range weights {
			// Sparse IDs, and keys that may repeat, as a careless caller's would.
			id := uint32(i) * 7
			backends[i] = MaglevBackend{ID: id, Key: fmt.Sprintf("10.0.%d.%d:6443", i%3, w%5), Weight: uint32(w % 9)}
			if backends[i].Weight > 0 {
				weighted[id] = true
			}
		}
		table := BuildMaglev(backends, size)
		if len(table) != int(size) {
			t.Fatalf("len = %d, want %d", len(table), size)
		}
		for i, id := range table {
			switch {
			case len(weighted) == 0 && id != MaglevNoBackend:
				t.Fatalf("slot %d = %d with no weighted backend, want MaglevNoBackend", i, id)
			case len(weighted) > 0 && !weighted[id]:
				t.Fatalf("slot %d = %d, not the ID of a weighted backend", i, id)
			}
		}
	})
}

func BenchmarkBuildMaglev(b *testing.B) {
	for _, n := range []int{3, 100} {
		backends := manyBackends(n)
		size := MaglevSizeFor(n)
		b.Run(fmt.Sprintf("N=%d/M=%d", n, size), func(b *testing.B) {
			for b.Loop() {
				BuildMaglev(backends, size)
			}
		})
	}
}

// manyBackends returns n backends of weight 1 with IDs 0..n-1, keyed like
// K3s servers on a /16.
func manyBackends(n int) []MaglevBackend {
	backends := make([]MaglevBackend, n)
	for i := range backends {
		backends[i] = MaglevBackend{ID: uint32(i), Key: fmt.Sprintf("10.10.%d.%d:6443", 10+i/250, 50+i%250), Weight: 1}
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
