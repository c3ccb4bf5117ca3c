package sync

import (
	"sort"
	"sync"
	"time"
)

// Outbox is the queue of changes to send to the peer. It holds at most one
// record per connection (a later change replaces an unsent earlier one: the
// peer needs the connection's latest state, not its history) and sends
// them in the order they first became due, so the age of the oldest
// unsent change (the lag) is what the peer is behind by. It is bounded:
// past Limit connections it is emptied and says so (Overflowed), and the
// whole table is sent instead. Safe for concurrent use.
type Outbox struct {
	// Limit bounds the connections held (0: no bound).
	Limit int

	mu         sync.Mutex
	items      map[ConnKey]*pending
	queue      []ConnKey
	head       int
	overflowed bool
}

type pending struct {
	rec   Record
	since time.Time // when it first became due
}

// Put queues r at time now, replacing an unsent record of the same
// connection (which keeps its place and its age).
func (o *Outbox) Put(r Record, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.items == nil {
		o.items = map[ConnKey]*pending{}
	}
	k := r.Key()
	if p, ok := o.items[k]; ok {
		p.rec = r
		return
	}
	if o.Limit > 0 && len(o.items) >= o.Limit {
		o.clearLocked()
		o.overflowed = true
		return
	}
	o.items[k] = &pending{rec: r, since: now}
	o.queue = append(o.queue, k)
}

// Take removes and returns up to n records, oldest first, with the time
// each became due.
func (o *Outbox) Take(n int) ([]Record, []time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var rs []Record
	var since []time.Time
	for len(rs) < n && o.head < len(o.queue) {
		k := o.queue[o.head]
		o.head++
		p, ok := o.items[k]
		if !ok {
			continue
		}
		delete(o.items, k)
		rs = append(rs, p.rec)
		since = append(since, p.since)
	}
	if o.head > 1024 && o.head*2 > len(o.queue) {
		o.queue = append([]ConnKey(nil), o.queue[o.head:]...)
		o.head = 0
	}
	return rs, since
}

// Len is the number of connections waiting.
func (o *Outbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.items)
}

// Lag is the age of the oldest unsent change at now (0: none).
func (o *Outbox) Lag(now time.Time) time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := o.head; i < len(o.queue); i++ {
		if p, ok := o.items[o.queue[i]]; ok {
			return now.Sub(p.since)
		}
	}
	return 0
}

// Clear drops everything queued (a bulk resync supersedes it).
func (o *Outbox) Clear() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.clearLocked()
}

func (o *Outbox) clearLocked() {
	o.items = map[ConnKey]*pending{}
	o.queue, o.head = nil, 0
}

// Overflowed says whether changes were dropped for the Limit since the
// last call (the whole table must be sent).
func (o *Outbox) Overflowed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	v := o.overflowed
	o.overflowed = false
	return v
}

// Lags keeps the last lags observed (how long changes waited before they
// were sent) for quantiles. Safe for concurrent use.
type Lags struct {
	mu   sync.Mutex
	ring [4096]time.Duration
	n    int
	next int
}

// Add records one lag.
func (l *Lags) Add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = d
	l.next = (l.next + 1) % len(l.ring)
	l.n = min(l.n+1, len(l.ring))
}

// Quantiles returns the given quantiles (0..1) of the recent lags, and how
// many lags they are computed over.
func (l *Lags) Quantiles(qs ...float64) ([]time.Duration, int) {
	l.mu.Lock()
	vals := append([]time.Duration(nil), l.ring[:l.n]...)
	l.mu.Unlock()
	out := make([]time.Duration, len(qs))
	if len(vals) == 0 {
		return out, 0
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	for i, q := range qs {
		idx := int(q*float64(len(vals)) + 0.5)
		out[i] = vals[min(max(idx, 1), len(vals))-1]
	}
	return out, len(vals)
}

// Reset forgets the recorded lags.
func (l *Lags) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n, l.next = 0, 0
}
