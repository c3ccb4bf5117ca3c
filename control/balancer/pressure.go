package balancer

import "time"

// The connection table is a hash the data path never evicts from: an
// established connection stays until it ends, and a new one that finds
// the table full is refused with a RST (issue 10 §4: a client holding
// many connections used to evict everyone else's watches). These are the
// decisions the GC takes about that table, pure so a test can reach them.

// Pressure is the connection table's load as one GC pass found it.
type Pressure struct {
	// Capacity is the connections the table holds (its entries / 2).
	Capacity int `json:"capacity"`
	// Entries are the table's entries before the pass removed any (two a
	// connection, whatever its state).
	Entries int `json:"entries"`
	// Live are the established connections (closing, reset and closed
	// ones are not live).
	Live int `json:"live"`
	// Refusing: the data path refuses every new connection (RST), the
	// table being full by policy (see RefuseNew).
	Refusing bool `json:"refusing"`
	// Reclaimed are connections that had ended (closed, reset, or closing
	// and idle) and were removed before their timeout to make room.
	Reclaimed int `json:"reclaimed"`
}

// Headroom is how many connections below its capacity the table starts
// refusing new ones: room for the connections completing their handshake
// meanwhile, and for those that end (they stay until their state's
// timeout or the next GC). 1% of the table, at least 4.
func Headroom(capacity int) int { return max(capacity/100, 4) }

// RefuseNew decides whether the data path must refuse new connections:
// from when the live ones reach the capacity less the headroom, until
// they fall below the capacity less twice the headroom, so that the
// setting does not flap at every GC.
func RefuseNew(live, capacity int, refusing bool) bool {
	h := Headroom(capacity)
	if refusing {
		return live >= capacity-2*h
	}
	return live >= capacity-h
}

// Crowded says the table holds enough entries that ended connections must
// go now rather than at their timeout: three quarters of its entries.
func Crowded(entries, capacity int) bool { return entries*4 >= capacity*2*3 }

// ReclaimIdle is how long a closing connection (one FIN seen) must have
// been idle before a crowded table reclaims it: a half-closed connection
// still sending is kept.
const ReclaimIdle = time.Second

// PressureGC is how often the GC runs while the table is under pressure
// (half full, or refusing): ended connections then leave within a
// second, and new connections are accepted again within a second of room
// coming back.
const PressureGC = time.Second

// NextGC is the interval to the next GC after one that found p.
func NextGC(p Pressure, normal time.Duration) time.Duration {
	if p.Refusing || p.Entries >= p.Capacity { // half the entries: two a connection
		return min(normal, PressureGC)
	}
	return normal
}

// GCDue says whether the GC must run now rather than at its next interval,
// from what the data path counted since the last one (counters are cheap
// to read every second; a pass over the table is not): enough new
// connections that the table may be half full, or a refusal because it
// was full.
func GCDue(last Pressure, newFlowsSince, refusedFullSince uint64) bool {
	if refusedFullSince > 0 {
		return true
	}
	return uint64(last.Entries)+2*newFlowsSince >= uint64(last.Capacity)
}
