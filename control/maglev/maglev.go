// Package maglev builds Maglev lookup tables (Eisenbud et al., NSDI 2016):
// which backend owns each slot of the data path's connection-hash table,
// with weights, so that both LBs of a pair build the same table from the
// same backends and a backend change moves as few connections as it can.
//
// It is pure computation: it touches nothing outside its arguments and
// imports nothing of xdplb's. It is tested as a specification (golden
// table, disruption on removal, weights, fuzz).
package maglev

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
)

// NoBackend fills every slot of a table built without any backend of
// positive weight. The data plane treats it as "no backend: pass or reset".
// No backend may use it as its ID.
const NoBackend uint32 = math.MaxUint32

// The seeds are fixed, never random: both LB nodes must build the same table
// from the same backends, so that a flow lands on the same backend whichever
// node receives it. Changing either value reshuffles every flow on upgrade.
const (
	maglevOffsetSeed uint64 = 0x78646c62_6f666673 // "xdlboffs"
	maglevSkipSeed   uint64 = 0x78646c62_736b6970 // "xdlbskip"
)

// Backend is one backend as the table builder sees it.
type Backend struct {
	// ID is the stable index of the backend in the data plane's backend map;
	// the table holds IDs.
	ID uint32
	// Key seeds the backend's permutation, e.g. "10.10.10.50:6443". A
	// backend keeps its slots across rebuilds as long as its Key does.
	Key string
	// Weight sets the share of slots; 0 drains the backend: it gets no slot
	// (new flows avoid it, tracked flows stay on it).
	Weight uint32
}

// Build returns a lookup table of size entries, each the ID of the
// backend that owns the slot.
//
// It follows the Maglev paper (Eisenbud et al., NSDI 2016): each backend
// walks its own permutation of the slots, derived from two hashes of its Key,
// and the backends take turns claiming their next free slot until the table
// is full. With weights, a backend takes a turn in proportion to its weight:
// every round each backend earns its weight in credit and takes a turn for
// each max-weight of credit it holds, so the heaviest backend takes one turn
// every round (as Katran's weighted Maglev does).
//
// The result depends only on the set of backends and size, never on the order
// of backends: they are sorted by Key (then ID) first. Keys should be unique;
// two backends with the same Key walk the same permutation.
//
// size must be prime (the data path's is 65537): only then is every skip coprime with
// the size, so every permutation visits every slot. Build panics
// otherwise, as it is a programming error, not an input the daemon receives.
func Build(backends []Backend, size uint32) []uint32 {
	if !IsPrime(size) {
		panic(fmt.Sprintf("maglev.Build: table size %d is not prime", size))
	}
	table := make([]uint32, size)
	for i := range table {
		table[i] = NoBackend
	}

	active := make([]Backend, 0, len(backends))
	var maxWeight uint64
	for _, b := range backends {
		if b.Weight == 0 {
			continue
		}
		active = append(active, b)
		maxWeight = max(maxWeight, uint64(b.Weight))
	}
	if len(active) == 0 {
		return table
	}
	slices.SortFunc(active, func(a, b Backend) int {
		if c := cmp.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})

	walks := make([]maglevWalk, len(active))
	for i, b := range active {
		walks[i] = newMaglevWalk(b.Key, size)
	}
	// taken is separate from table so that no ID value, not even
	// NoBackend, can be mistaken for a free slot.
	taken := make([]bool, size)
	credit := make([]uint64, len(active))
	for filled := uint32(0); ; {
		for i, b := range active {
			credit[i] += uint64(b.Weight)
			if credit[i] < maxWeight {
				continue
			}
			credit[i] -= maxWeight
			slot := walks[i].nextFree(taken)
			taken[slot] = true
			table[slot] = b.ID
			filled++
			if filled == size {
				return table
			}
		}
	}
}

// maglevWalk is a backend's position in its permutation of the slots:
// permutation[j] = (offset + j*skip) mod size, computed step by step so that
// no N×size permutation matrix is ever allocated.
type maglevWalk struct {
	pos, skip, size uint64
}

func newMaglevWalk(key string, size uint32) maglevWalk {
	m := uint64(size)
	return maglevWalk{
		pos:  maglevHash(maglevOffsetSeed, key) % m,
		skip: maglevHash(maglevSkipSeed, key)%(m-1) + 1,
		size: m,
	}
}

// nextFree returns the next slot of the permutation not yet taken. The
// caller guarantees one is left; the permutation visits every slot because
// size is prime and 0 < skip < size.
func (w *maglevWalk) nextFree(taken []bool) uint64 {
	for taken[w.pos] {
		w.pos = (w.pos + w.skip) % w.size
	}
	slot := w.pos
	w.pos = (w.pos + w.skip) % w.size
	return slot
}

// maglevHash is FNV-1a over the seed and the key, finished with the
// MurmurHash3 64-bit mixer: FNV alone spreads keys that differ only in
// their last characters (10.10.10.50 vs .51) poorly across the high bits.
// It must never change: both LB nodes and every version must agree.
func maglevHash(seed uint64, key string) uint64 {
	h := fnv.New64a()
	var s [8]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	h.Write(s[:])
	h.Write([]byte(key))
	return fmix64(h.Sum64())
}

// fmix64 is the finalizer of MurmurHash3: every input bit affects every
// output bit.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// IsPrime reports whether n is a prime number.
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := uint64(3); d*d <= uint64(n); d += 2 {
		if uint64(n)%d == 0 {
			return false
		}
	}
	return true
}
