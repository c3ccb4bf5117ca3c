package health

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Checker checks one backend. addr is "ip:port". It returns nil when the
// backend is healthy, else an error short enough for a log line that says
// what failed, e.g. "tls handshake: connection refused". It must return once
// ctx is done.
type Checker interface {
	Check(ctx context.Context, addr string) error
}

// Status is a backend's health as a Monitor last saw it.
type Status struct {
	Key       string
	Up        bool
	Successes int
	Failures  int
	Detail    string
	// Line is the log line, as Health.Describe returns it.
	Line string
	// LocalFault: the last check was this node's fault (see LocalFault).
	LocalFault bool
}

// Event is one check's result and what it decided, as a Monitor reports it
// to its owner after every check.
type Event struct {
	// Key is the backend, "ip:port".
	Key string
	// At is when the check started; Took how long it ran.
	At   time.Time
	Took time.Duration
	// Outcome and Detail are what the check found.
	Outcome Outcome
	Detail  string
	// Transition is set when the backend changed state.
	Transition *Transition
	// DropConnections: the backend's kept connections are dead now (see
	// Verdict); remove them.
	DropConnections bool
}

// Monitor checks a set of backends, each on its own goroutine and schedule,
// and reports every check and what it decided.
//
// Each backend is checked at once when added, then after the interval its
// Health picks (inter, fastinter or downinter), counted from the start of
// the previous check. Time is the time package's, so tests run whole
// schedules in a testing/synctest bubble.
type Monitor struct {
	checker Checker
	params  Params
	notify  func(Event)
	// notifyMu serializes notify, so that the daemon can update its table
	// from the callback without a lock of its own.
	notifyMu sync.Mutex

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex // guards backends, stopped and every Health
	backends map[string]*watchedBackend
	stopped  bool
	wg       sync.WaitGroup
}

type watchedBackend struct {
	key    string
	health *Health
	wake   chan struct{} // capacity 1: hints coalesce
	cancel context.CancelFunc
}

// NewMonitor returns a Monitor that checks with checker at the timings of
// params (defaults applied) and calls notify after every check. notify is
// called from the Monitor's goroutines, one call at a time; it may call
// Status, Statuses and Hint, but not Stop, which waits for those
// goroutines.
func NewMonitor(checker Checker, params Params, notify func(Event)) (*Monitor, error) {
	params = params.WithDefaults()
	if err := params.Validate(); err != nil {
		return nil, fmt.Errorf("health check timings: %w", err)
	}
	if notify == nil {
		notify = func(Event) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{
		checker: checker, params: params, notify: notify,
		ctx: ctx, cancel: cancel, backends: map[string]*watchedBackend{},
	}, nil
}

// Add starts checking the backend at key ("ip:port"), starting in the given
// state (see NewHealth). Its first check runs at once.
func (m *Monitor) Add(key string, initialUp bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return fmt.Errorf("add backend %s: health monitor already stopped", key)
	}
	if _, ok := m.backends[key]; ok {
		return fmt.Errorf("add backend %s: already monitored", key)
	}
	ctx, cancel := context.WithCancel(m.ctx)
	b := &watchedBackend{key: key, health: NewHealth(m.params, initialUp), wake: make(chan struct{}, 1), cancel: cancel}
	m.backends[key] = b
	m.wg.Add(1)
	go m.run(ctx, b)
	return nil
}

// Remove stops checking the backend at key. A check of it under way is
// cut short and not reported. It reports whether the backend was
// monitored.
func (m *Monitor) Remove(key string) bool {
	m.mu.Lock()
	b, ok := m.backends[key]
	delete(m.backends, key)
	m.mu.Unlock()
	if ok {
		b.cancel()
	}
	return ok
}

// SetParams changes the timings of every backend's checks (a reload): the
// counts of successes and failures so far stay, and each backend's next
// check is rescheduled by the new intervals, counted from its last one.
func (m *Monitor) SetParams(p Params) error {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return fmt.Errorf("health check timings: %w", err)
	}
	m.mu.Lock()
	m.params = p
	var wake []*watchedBackend
	for _, b := range m.backends {
		b.health.params = p
		wake = append(wake, b)
	}
	m.mu.Unlock()
	for _, b := range wake {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// SetChecker changes how backends are checked (a reload), from the next
// check of each on.
func (m *Monitor) SetChecker(c Checker) {
	m.mu.Lock()
	m.checker = c
	m.mu.Unlock()
}

// Params returns the timings in force.
func (m *Monitor) Params() Params {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.params
}

// Hint asks for a check of the backend at key at once (at most one per
// HintMinGap), because the data plane saw it refuse a connection. It
// reports whether the backend is monitored.
func (m *Monitor) Hint(key string) bool {
	m.mu.Lock()
	b, ok := m.backends[key]
	if ok {
		b.health.Hint()
	}
	m.mu.Unlock()
	if ok {
		select {
		case b.wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	return ok
}

// Status returns the health of the backend at key.
func (m *Monitor) Status(key string) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.backends[key]
	if !ok {
		return Status{}, false
	}
	return b.status(), true
}

// Statuses returns the health of every backend, sorted by key.
func (m *Monitor) Statuses() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.backends))
	for _, b := range m.backends {
		out = append(out, b.status())
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Stop ends every check, waits for the goroutines, and makes Add fail. A
// check cut short by Stop is not counted. Stop may be called more than once.
func (m *Monitor) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

func (b *watchedBackend) status() Status {
	h := b.health
	return Status{
		Key: b.key, Up: h.Up(), Successes: h.Successes(), Failures: h.Failures(),
		Detail: h.Detail(), Line: h.Describe(b.key), LocalFault: h.LocalFault(),
	}
}

// run is the schedule of one backend: check, feed the result to its Health,
// report it, wait for the next check or a hint.
func (m *Monitor) run(ctx context.Context, b *watchedBackend) {
	defer m.wg.Done()
	var last time.Time // zero: never checked, check at once
	for {
		if !last.IsZero() {
			m.mu.Lock()
			next := b.health.NextCheck(last)
			m.mu.Unlock()
			if wait := time.Until(next); wait > 0 {
				timer := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case <-b.wake:
					timer.Stop()
					continue // hinted: NextCheck now says when
				case <-timer.C:
				}
			}
		}
		at := time.Now()
		err := m.check(ctx, b.key)
		if ctx.Err() != nil {
			return // stopped mid-check: the failure says nothing of the backend
		}
		// Intervals run from start to start, as a timer would: a check
		// that times out does not push the next one back, so a dead
		// backend is down within fall x inter + timeout.
		last = at

		m.mu.Lock()
		checker := m.checker
		m.mu.Unlock()
		ev := Event{Key: b.key, At: at, Took: time.Since(at), Outcome: Classify(err), Detail: checkDetail(checker, err)}
		m.mu.Lock()
		v := b.health.Observe(ev.Outcome, ev.Detail)
		if v.Changed {
			tr := b.health.transition(b.key)
			tr.At = at
			ev.Transition = &tr
		}
		ev.DropConnections = v.DropConnections
		m.mu.Unlock()
		m.notifyMu.Lock()
		m.notify(ev)
		m.notifyMu.Unlock()
	}
}

func (m *Monitor) check(ctx context.Context, addr string) error {
	m.mu.Lock()
	checker, timeout := m.checker, m.params.Timeout
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return checker.Check(ctx, addr)
}

// checkDetail is the log line's reason: the error, or "<check> ok" when the
// checker names itself ("tls handshake ok").
func checkDetail(c Checker, err error) string {
	if err != nil {
		return err.Error()
	}
	if s, ok := c.(fmt.Stringer); ok {
		return s.String() + " ok"
	}
	return "check ok"
}
