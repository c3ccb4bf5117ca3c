package bpf

// FlowHash reproduces the data path's connection hash (jhash_3words over
// the client's address, the frontend address and both ports, as the words
// sit in memory on a little-endian machine), so userspace can say which
// Maglev slot a connection lands in.
func FlowHash(k FlowKey, seed uint32) uint32 {
	return jhash3(k.Saddr, k.Daddr, uint32(k.Sport)<<16|uint32(k.Dport), seed)
}

// DefaultHashSeed is the data path's compiled-in seed ("xlb1").
const DefaultHashSeed = 0x786c6231

// MaglevSlot is the first slot the data path probes for k.
func MaglevSlot(k FlowKey, seed uint32) uint32 { return FlowHash(k, seed) % MaglevSize }

func rol32(x uint32, k uint) uint32 { return x<<k | x>>(32-k) }

func jhash3(a, b, c, initval uint32) uint32 {
	initval += 0xdeadbeef + 3<<2
	a += initval
	b += initval
	c += initval
	c ^= b
	c -= rol32(b, 14)
	a ^= c
	a -= rol32(c, 11)
	b ^= a
	b -= rol32(a, 25)
	c ^= b
	c -= rol32(b, 16)
	a ^= c
	a -= rol32(c, 4)
	b ^= a
	b -= rol32(a, 14)
	c ^= b
	c -= rol32(b, 24)
	return c
}
