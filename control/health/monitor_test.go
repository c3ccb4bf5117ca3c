package health

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The monitor tests run in a testing/synctest bubble: time moves only when
// every goroutine of the test waits for it, so minutes of check schedule
// run in microseconds and check times are exact.

// scriptedChecker answers checks from a script and records when, since the
// start of the test, each check ran.
type scriptedChecker struct {
	start time.Time
	// fails says whether the n-th check (from 0) of key fails.
	fails func(key string, n int) bool

	mu    sync.Mutex
	calls map[string][]time.Duration // check times since start, per key
}

func (c *scriptedChecker) String() string { return "tls handshake" }

func (c *scriptedChecker) Check(ctx context.Context, addr string) error {
	c.mu.Lock()
	n := len(c.calls[addr])
	c.calls[addr] = append(c.calls[addr], time.Since(c.start))
	c.mu.Unlock()
	if c.fails(addr, n) {
		return errors.New("tls handshake: connection refused")
	}
	return nil
}

func (c *scriptedChecker) callTimes(key string) []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls[key])
}

// monitorHarness runs a Monitor in the test's bubble and records its
// transitions, with their times moved to epoch + time since the start.
type monitorHarness struct {
	t       *testing.T
	start   time.Time
	checker *scriptedChecker
	mon     *Monitor

	mu          sync.Mutex
	transitions []Transition
}

// newMonitorHarness must run inside synctest.Test.
func newMonitorHarness(t *testing.T, fails func(key string, n int) bool) *monitorHarness {
	t.Helper()
	h := &monitorHarness{t: t, start: time.Now()}
	h.checker = &scriptedChecker{start: h.start, fails: fails, calls: map[string][]time.Duration{}}
	mon, err := NewMonitor(h.checker, testParams, func(ev Event) {
		if ev.Transition == nil {
			return
		}
		tr := *ev.Transition
		tr.At = epoch.Add(tr.At.Sub(h.start))
		h.mu.Lock()
		h.transitions = append(h.transitions, tr)
		h.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("NewMonitor() = %v", err)
	}
	h.mon = mon
	t.Cleanup(mon.Stop)
	return h
}

// runUntil lets the schedule run until start+end, and every check due by
// then finish.
func (h *monitorHarness) runUntil(end time.Duration) {
	h.t.Helper()
	synctest.Wait()
	time.Sleep(time.Until(h.start.Add(end)))
	synctest.Wait()
}

func (h *monitorHarness) got() []Transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.transitions)
}

func secs(s ...float64) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, v := range s {
		out[i] = time.Duration(v * float64(time.Second))
	}
	return out
}

// The timings below use testParams: inter 2s, fastinter 0.5s, downinter 5s,
// rise 2, fall 3.
func TestMonitorSchedule(t *testing.T) {
	const key = "10.10.10.51:6443"
	tests := []struct {
		name      string
		initialUp bool
		fails     func(n int) bool
		until     float64
		wantCalls []time.Duration
		want      []Transition
	}{
		{
			// Healthy at 0s and 2s, broken from then on: the failure at
			// 4s starts fastinter, the third failure at 5s takes it
			// down, then downinter. Down 3s after the last good check
			// = inter + (fall-1) × fastinter.
			name:      "up to down: inter, fall failures at fastinter, then downinter",
			initialUp: true,
			fails:     func(n int) bool { return n >= 2 },
			until:     16,
			wantCalls: secs(0, 2, 4, 4.5, 5, 10, 15),
			want: []Transition{{
				Key: key, Up: false, Detail: "tls handshake: connection refused",
				Count: 3, Need: 3, At: epoch.Add(5 * time.Second),
			}},
		},
		{
			// Broken at 0s and 5s (downinter), healthy from 10s: the
			// first success starts fastinter, the second brings it up at
			// 10.5s = first success + (rise-1) × fastinter, then inter.
			name:      "down to up: downinter, rise successes at fastinter, then inter",
			initialUp: false,
			fails:     func(n int) bool { return n < 2 },
			until:     15,
			wantCalls: secs(0, 5, 10, 10.5, 12.5, 14.5),
			want: []Transition{{
				Key: key, Up: true, Detail: "tls handshake ok",
				Count: 2, Need: 2, At: epoch.Add(10500 * time.Millisecond),
			}},
		},
		{
			name:      "healthy backend: inter only, no transition",
			initialUp: true,
			fails:     func(int) bool { return false },
			until:     7,
			wantCalls: secs(0, 2, 4, 6),
		},
		{
			// One failure at 2s, then healthy: fastinter once, back to inter.
			name:      "a single failure: fastinter once, no transition",
			initialUp: true,
			fails:     func(n int) bool { return n == 1 },
			until:     7,
			wantCalls: secs(0, 2, 2.5, 4.5, 6.5),
		},
		{
			// Up starts fully up: three failures from the first check.
			name:      "broken from the start",
			initialUp: true,
			fails:     func(int) bool { return true },
			until:     2,
			wantCalls: secs(0, 0.5, 1),
			want: []Transition{{
				Key: key, Up: false, Detail: "tls handshake: connection refused",
				Count: 3, Need: 3, At: epoch.Add(time.Second),
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newMonitorHarness(t, func(_ string, n int) bool { return tt.fails(n) })
				if err := h.mon.Add(key, tt.initialUp); err != nil {
					t.Fatalf("Add() = %v", err)
				}
				h.runUntil(time.Duration(tt.until * float64(time.Second)))
				if got := h.checker.callTimes(key); !slices.Equal(got, tt.wantCalls) {
					t.Errorf("checks at %v, want %v", got, tt.wantCalls)
				}
				if got := h.got(); !slices.Equal(got, tt.want) {
					t.Errorf("transitions = %+v, want %+v", got, tt.want)
				}
			})
		})
	}
}

func TestMonitorHintChecksAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const key = "10.10.10.50:6443"
		h := newMonitorHarness(t, func(string, int) bool { return false })
		if err := h.mon.Add(key, true); err != nil {
			t.Fatalf("Add() = %v", err)
		}
		h.runUntil(time.Second) // checked at 0s, next due at 2s

		if !h.mon.Hint(key) {
			t.Fatal("Hint() = false for a monitored backend")
		}
		synctest.Wait() // the hinted check runs at 1s, without time moving
		if got, want := h.checker.callTimes(key), secs(0, 1); !slices.Equal(got, want) {
			t.Fatalf("checks at %v right after the hint, want %v", got, want)
		}
		h.runUntil(3500 * time.Millisecond)
		if got, want := h.checker.callTimes(key), secs(0, 1, 3); !slices.Equal(got, want) {
			t.Errorf("checks at %v, want %v (hinted check at 1s, then inter)", got, want)
		}
		if len(h.got()) != 0 {
			t.Errorf("transitions = %v, want none: a hint changes no state", h.got())
		}
	})
}

func TestMonitorHintRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const key = "10.10.10.50:6443"
		h := newMonitorHarness(t, func(string, int) bool { return false })
		if err := h.mon.Add(key, true); err != nil {
			t.Fatalf("Add() = %v", err)
		}
		synctest.Wait() // checked at 0s
		h.mon.Hint(key)
		h.mon.Hint(key) // coalesces with the first
		synctest.Wait()
		if n := len(h.checker.callTimes(key)); n != 1 {
			t.Fatalf("%d checks right after a check and a hint, want 1 until HintMinGap passed", n)
		}
		h.runUntil(HintMinGap)
		if got, want := h.checker.callTimes(key), []time.Duration{0, HintMinGap}; !slices.Equal(got, want) {
			t.Errorf("checks at %v, want %v", got, want)
		}
	})
}

func TestMonitorBackendsAreIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const good, bad = "10.10.10.50:6443", "10.10.10.51:6443"
		h := newMonitorHarness(t, func(key string, _ int) bool { return key == bad })
		for _, k := range []string{good, bad} {
			if err := h.mon.Add(k, true); err != nil {
				t.Fatalf("Add(%s) = %v", k, err)
			}
		}
		h.runUntil(4 * time.Second)
		if got, want := h.checker.callTimes(good), secs(0, 2, 4); !slices.Equal(got, want) {
			t.Errorf("%s checked at %v, want %v", good, got, want)
		}
		if got, want := h.checker.callTimes(bad), secs(0, 0.5, 1); !slices.Equal(got, want) {
			t.Errorf("%s checked at %v, want %v", bad, got, want)
		}
		trs := h.got()
		if len(trs) != 1 || trs[0].Key != bad || trs[0].Up {
			t.Errorf("transitions = %+v, want one: %s down", trs, bad)
		}
		wantLines := []string{
			"backend 10.10.10.50:6443 UP: tls handshake ok (0/3)",
			"backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (3/3)",
		}
		var lines []string
		for _, s := range h.mon.Statuses() {
			lines = append(lines, s.Line)
		}
		if !slices.Equal(lines, wantLines) {
			t.Errorf("Statuses() lines = %q, want %q", lines, wantLines)
		}
		if s, ok := h.mon.Status(bad); !ok || s.Up {
			t.Errorf("Status(%s) = %+v, %v, want down", bad, s, ok)
		}
	})
}

func TestMonitorAddStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const key = "10.10.10.50:6443"
		h := newMonitorHarness(t, func(string, int) bool { return false })
		if err := h.mon.Add(key, true); err != nil {
			t.Fatalf("Add() = %v", err)
		}
		if err := h.mon.Add(key, true); err == nil {
			t.Error("second Add() of the same key = nil, want an error")
		}
		synctest.Wait()
		h.mon.Stop()
		h.mon.Stop() // idempotent
		if err := h.mon.Add("10.10.10.52:6443", true); err == nil {
			t.Error("Add() after Stop() = nil, want an error")
		}
		time.Sleep(10 * time.Second)
		if n := len(h.checker.callTimes(key)); n != 1 {
			t.Errorf("%d checks, want 1: none after Stop", n)
		}
	})
}

// blockingChecker blocks every check until its context ends, as a hung
// backend does, and records the time the context gave it.
type blockingChecker struct {
	started chan time.Duration // time until the deadline, per check
}

func (c *blockingChecker) Check(ctx context.Context, addr string) error {
	deadline, _ := ctx.Deadline()
	c.started <- time.Until(deadline)
	<-ctx.Done()
	return errors.New("tls handshake: i/o timeout")
}

func TestMonitorCheckTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		params := testParams
		params.Timeout = 50 * time.Millisecond
		params.Fall = 1
		checker := &blockingChecker{started: make(chan time.Duration, 10)}
		var mu sync.Mutex
		var lines []string
		mon, err := NewMonitor(checker, params, func(ev Event) {
			if ev.Transition == nil {
				return
			}
			mu.Lock()
			lines = append(lines, ev.Transition.String())
			mu.Unlock()
		})
		if err != nil {
			t.Fatalf("NewMonitor() = %v", err)
		}
		defer mon.Stop()
		if err := mon.Add("10.10.10.51:6443", true); err != nil {
			t.Fatalf("Add() = %v", err)
		}
		if left := <-checker.started; left <= 0 || left > params.Timeout {
			t.Errorf("check got %v until its deadline, want (0, %v]", left, params.Timeout)
		}
		// The check ends at its deadline, counts as a failure, and with
		// fall 1 takes the backend down.
		time.Sleep(params.Timeout)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		want := []string{"backend 10.10.10.51:6443 DOWN: tls handshake: i/o timeout (1/1)"}
		if !slices.Equal(lines, want) {
			t.Errorf("transitions %q, want %q", lines, want)
		}
	})
}

func TestMonitorStopMidCheckCountsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		checker := &blockingChecker{started: make(chan time.Duration, 10)}
		params := testParams
		params.Fall = 1
		params.Timeout = time.Hour
		var notified bool
		mon, err := NewMonitor(checker, params, func(Event) { notified = true })
		if err != nil {
			t.Fatalf("NewMonitor() = %v", err)
		}
		if err := mon.Add("10.10.10.51:6443", true); err != nil {
			t.Fatalf("Add() = %v", err)
		}
		<-checker.started
		mon.Stop() // returns only once the check goroutine has ended
		if notified {
			t.Error("a check cut short by Stop was reported")
		}
	})
}

// TestMonitorReportsConnectionPolicy: the events carry the policy's
// decisions (see TestConnectionPolicy) to the owner.
func TestMonitorReportsConnectionPolicy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const key = "10.10.10.51:6443"
		var notReady = &CheckError{Step: "https GET /readyz", Err: &StatusError{Code: 503}}
		n := 0
		checker := checkerFunc(func(ctx context.Context, addr string) error {
			n++
			if n <= 3 {
				return notReady
			}
			return errors.New("tls handshake: connection refused")
		})
		var mu sync.Mutex
		var events []Event
		mon, err := NewMonitor(checker, testParams, func(ev Event) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		defer mon.Stop()
		mon.Add(key, true)
		time.Sleep(time.Minute)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		var down, drops int
		for i, ev := range events {
			if ev.Transition != nil && !ev.Transition.Up {
				down++
				if !ev.Transition.KeepConnections || ev.Outcome != NotReady || i != 2 {
					t.Errorf("down at check %d: %+v", i, ev)
				}
			}
			if ev.DropConnections {
				drops++
				if i != 5 {
					t.Errorf("connections dropped at check %d, want 5 (fall no-answers after going down)", i)
				}
			}
		}
		if down != 1 || drops != 1 {
			t.Errorf("%d transitions down, %d drops; want 1 and 1", down, drops)
		}
	})
}

type checkerFunc func(ctx context.Context, addr string) error

func (f checkerFunc) Check(ctx context.Context, addr string) error { return f(ctx, addr) }

func TestNewMonitorRejectsBadParams(t *testing.T) {
	_, err := NewMonitor(&blockingChecker{}, Params{Rise: -1}, nil)
	if err == nil {
		t.Fatal("NewMonitor(rise -1) = nil error")
	}
	if want := "health check timings: rise -1: must be at least 1"; err.Error() != want {
		t.Errorf("NewMonitor(rise -1) = %q, want %q", err, want)
	}
}

// TestMonitorReload: a reload changes the timings (the next check follows
// the new interval, counted from the last one, and the counts so far
// stay), the checker, and removes a backend (no check of it after).
func TestMonitorReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const a, b = "10.10.10.50:6443", "10.10.10.51:6443"
		var broken sync.Map
		h := newMonitorHarness(t, func(key string, n int) bool { _, bad := broken.Load(key); return bad })
		h.mon.Add(a, true)
		h.mon.Add(b, true)
		h.runUntil(3 * time.Second) // checks at 0 and 2 s (inter 2 s)
		// b fails once with fall 3: one failure counted.
		broken.Store(b, true)
		h.runUntil(4500 * time.Millisecond) // b: 4 s fails, then fastinter 0.5 s: 4.5 s fails (2/3)
		if st, _ := h.mon.Status(b); !st.Up || st.Failures != 2 {
			t.Fatalf("b before the reload: %+v", st)
		}
		p := testParams
		p.Inter, p.FastInter, p.Fall = 10*time.Second, 3*time.Second, 4
		if err := h.mon.SetParams(p); err != nil {
			t.Fatal(err)
		}
		if err := h.mon.SetParams(Params{Inter: -1}); err == nil {
			t.Fatal("bad timings accepted")
		}
		h.runUntil(30 * time.Second)
		// a: last check at 4 s, next by the new inter: 14 s, 24 s.
		if got, want := h.checker.callTimes(a), secs(0, 2, 4, 14, 24); !slices.Equal(got, want) {
			t.Errorf("a's checks %v, want %v", got, want)
		}
		// b: 2 failures counted, fall now 4: fastinter 3 s from 4.5 s,
		// down at the 4th failure (7.5 s), then downinter 5 s.
		if got, want := h.checker.callTimes(b)[:6], secs(0, 2, 4, 4.5, 7.5, 10.5); !slices.Equal(got, want) {
			t.Errorf("b's checks %v, want %v", got, want)
		}
		if tr := h.got(); len(tr) != 1 || tr[0].Key != b || tr[0].Up || tr[0].Need != 4 {
			t.Errorf("transitions %+v, want b down at its 4th failure", tr)
		}
		// A new checker answers from the next check on; a removed
		// backend is checked no more.
		fresh := &scriptedChecker{start: h.start, fails: func(string, int) bool { return false }, calls: map[string][]time.Duration{}}
		h.mon.SetChecker(fresh)
		if !h.mon.Remove(a) || h.mon.Remove(a) {
			t.Fatal("Remove() of a monitored backend, then of a removed one")
		}
		na, nb := len(h.checker.callTimes(a)), len(h.checker.callTimes(b))
		h.runUntil(60 * time.Second)
		if len(h.checker.callTimes(a)) != na || len(h.checker.callTimes(b)) != nb {
			t.Errorf("old checker called after the change: a %v, b %v", h.checker.callTimes(a), h.checker.callTimes(b))
		}
		if len(fresh.callTimes(a)) != 0 || len(fresh.callTimes(b)) == 0 {
			t.Errorf("new checker: a %v (removed), b %v", fresh.callTimes(a), fresh.callTimes(b))
		}
		if st, _ := h.mon.Status(b); !st.Up {
			t.Errorf("b, healthy by the new checker, still down: %+v", st)
		}
		if _, ok := h.mon.Status(a); ok {
			t.Error("removed backend still has a status")
		}
	})
}
