package control

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Clock is the time source of the check scheduler. The daemon uses RealClock;
// tests use FakeClock to run minutes of check schedule in microseconds and
// assert exact check times.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has elapsed.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// FakeClock is a Clock that only moves when told to. It is exported so that
// the daemon's tests can drive a Monitor too.
//
// A goroutine waiting on After cannot be told apart from one that gave up on
// the channel, so a timer abandoned by its reader (a Monitor woken by a hint)
// stays pending until its time passes.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	// changed is closed and replaced whenever a timer is added, so that
	// BlockUntil can wait without polling.
	changed chan struct{}
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

// NewFakeClock returns a FakeClock reading start.
func NewFakeClock(start time.Time) *FakeClock {
	return &FakeClock{now: start, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After returns a channel that receives the fake time once Advance has moved
// the clock d past now. d <= 0 fires at once.
func (c *FakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// Advance moves the clock forward by d and fires every timer due by then,
// earliest first, each with its own due time.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	slices.SortStableFunc(c.timers, func(a, b fakeTimer) int { return a.at.Compare(b.at) })
	fired := 0
	for _, t := range c.timers {
		if t.at.After(c.now) {
			break
		}
		t.ch <- t.at // buffered, never blocks
		fired++
	}
	c.timers = slices.Delete(c.timers, 0, fired)
}

// Pending returns the number of timers not yet fired.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// BlockUntil waits until at least n timers are pending, which is how a test
// knows that the goroutines under test are all waiting for the clock before
// it advances it. It returns ctx.Err() if ctx ends first.
func (c *FakeClock) BlockUntil(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		pending, changed := len(c.timers), c.changed
		c.mu.Unlock()
		if pending >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
