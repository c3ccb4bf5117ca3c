// Package health decides when a backend is up or down, and what becomes of
// its connections when it goes: HAProxy's check state machine (rise, fall,
// inter, fastinter, downinter) per backend, the scheduler that runs the
// checks (Monitor), the checks themselves (tcp connect, TLS handshake,
// HTTPS GET), and the policy for a failing backend's tracked connections.
//
// It may open connections to backends and read the check's credential
// files; it touches nothing of the node (no BPF, no netlink, no sysctl) and
// imports nothing of xdplb's. Tests drive the scheduler with testing/synctest
// and the checkers against local listeners on 127.0.0.1.
package health

import (
	"errors"
	"fmt"
	"time"
)

// HAProxy's defaults, so that the guide's settings carry over unchanged.
const (
	DefaultInter = 2 * time.Second
	// DefaultMaxTimeout caps the default check timeout (see Params).
	DefaultMaxTimeout = time.Second
	DefaultRise       = 2
	DefaultFall       = 3
)

// HintMinGap bounds how soon after a check a hinted check may run. The data
// plane hints at a backend each time it answers a SYN with a RST, which can
// be thousands of times a second; this keeps the checks to a few a second.
const HintMinGap = 200 * time.Millisecond

// Params are HAProxy's check timings, under HAProxy's names.
type Params struct {
	// Inter is the interval between checks of a backend that is fully up.
	Inter time.Duration
	// FastInter is the interval while a backend is changing state: up with
	// failures counted, or down with successes counted. Defaults to Inter.
	FastInter time.Duration
	// DownInter is the interval between checks of a backend that is fully
	// down. Defaults to Inter.
	DownInter time.Duration
	// Timeout bounds one check. Defaults to the smaller of Inter and
	// DefaultMaxTimeout, so that with intervals run start to start a dead
	// backend is marked down within fall x inter + 1 s.
	Timeout time.Duration
	// Rise is the number of consecutive successes that bring a backend up.
	Rise int
	// Fall is the number of consecutive failures that bring a backend down.
	Fall int
}

// WithDefaults returns p with HAProxy's defaults for every field left zero:
// inter 2s, fastinter, downinter and timeout equal to inter, rise 2, fall 3.
func (p Params) WithDefaults() Params {
	if p.Inter == 0 {
		p.Inter = DefaultInter
	}
	if p.FastInter == 0 {
		p.FastInter = p.Inter
	}
	if p.DownInter == 0 {
		p.DownInter = p.Inter
	}
	if p.Timeout == 0 {
		p.Timeout = min(p.Inter, DefaultMaxTimeout)
	}
	if p.Rise == 0 {
		p.Rise = DefaultRise
	}
	if p.Fall == 0 {
		p.Fall = DefaultFall
	}
	return p
}

// Validate reports every field that cannot drive a check schedule. Call it
// on the result of WithDefaults: zero durations are invalid here.
func (p Params) Validate() error {
	var errs []error
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"inter", p.Inter}, {"fastinter", p.FastInter}, {"downinter", p.DownInter}, {"timeout", p.Timeout}} {
		if d.value <= 0 {
			errs = append(errs, fmt.Errorf("%s %v: must be a positive duration such as 2s", d.name, d.value))
		}
	}
	if p.Rise < 1 {
		errs = append(errs, fmt.Errorf("rise %d: must be at least 1", p.Rise))
	}
	if p.Fall < 1 {
		errs = append(errs, fmt.Errorf("fall %d: must be at least 1", p.Fall))
	}
	return errors.Join(errs...)
}

// Health is HAProxy's check state machine for one backend. A backend is up or
// down; while up, consecutive failures count towards Fall and a success
// clears them; while down, consecutive successes count towards Rise and a
// failure clears them. It is not safe for concurrent use.
type Health struct {
	params    Params
	up        bool
	successes int // consecutive successes while down
	failures  int // consecutive failures while up
	// noAnswer counts consecutive checks that got no answer at all, in
	// either state; an answer of any kind ("not ready" too) clears it.
	noAnswer int
	// connsKept: down, and its tracked connections were left alone
	// because it still answered (see Verdict).
	connsKept bool
	detail    string
	// progress is the count shown in the log line: the counter that moved
	// at the last observation, or Rise/Fall when it flipped the state (the
	// counter itself is then reset).
	progress int
	// flipped says the last observation changed the state.
	flipped bool
	hinted  bool
	// local: the last check was a LocalFault: this node could not reach
	// the backend, whatever its state.
	local bool
}

// NewHealth returns the state of a backend not checked yet. params should
// have been through WithDefaults and Validate.
//
// A backend that starts up starts fully up, so it takes Fall consecutive
// failures to bring it down. HAProxy starts servers "just up", so that the
// first failure alone brings them down; xdplb does not, because it restarts
// on every upgrade and one unlucky check must not move every flow of a
// healthy backend. A backend that starts down takes Rise successes to come up.
func NewHealth(params Params, initialUp bool) *Health {
	return &Health{params: params, up: initialUp, detail: "not checked yet"}
}

// Outcome is what one check found.
type Outcome int

const (
	// Healthy: the check passed.
	Healthy Outcome = iota
	// NotReady: the server answered, but says it is not ready (https
	// status other than the expected one, e.g. /readyz 503). Its
	// established connections may well go on working.
	NotReady
	// NoAnswer: no answer at all (refused, reset, timed out, broken TLS):
	// its connections are most likely dead too.
	NoAnswer
	// LocalFault: the check could not be made because of this node (out
	// of file descriptors or buffers, no route, its own link down, a
	// credential file it cannot read). It says nothing of the backend and
	// counts neither way: while this node cannot reach anything, every
	// backend keeps the state it had.
	LocalFault
)

func (o Outcome) String() string {
	switch o {
	case Healthy:
		return "healthy"
	case NotReady:
		return "not ready"
	case LocalFault:
		return "local fault"
	}
	return "no answer"
}

// Classify turns a checker's error into an Outcome.
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return Healthy
	case IsNotReady(err):
		return NotReady
	case IsLocal(err):
		return LocalFault
	}
	return NoAnswer
}

// Verdict is what one observation decided.
type Verdict struct {
	// Changed: the backend went up or down (Health.Up says which).
	Changed bool
	// KeepConnections, on a change to down: leave the backend's tracked
	// connections alone. It answered "not ready" in at least one of the
	// failures that took it down, so its connections may still work; a
	// backend that did not answer fall times in a row loses them at once.
	KeepConnections bool
	// DropConnections: a down backend whose connections were kept has now
	// gone fall checks in a row without any answer: they are dead, remove
	// them (and reset their clients) now.
	DropConnections bool
}

// Observe feeds the outcome of one check, with detail saying what it found
// (the log line's reason, e.g. "tls handshake: connection refused"). It
// reports what changed, and clears any pending hint.
func (h *Health) Observe(o Outcome, detail string) (v Verdict) {
	h.hinted = false
	h.local = o == LocalFault
	if o == LocalFault {
		// Not evidence either way: the counters, and the state, stay.
		h.detail = "not counted, this node's fault: " + detail
		return v
	}
	h.detail = detail
	defer func() { h.flipped = v.Changed }()
	if o == NoAnswer {
		h.noAnswer++
	} else {
		h.noAnswer = 0
	}
	ok := o == Healthy
	switch {
	case ok && h.up:
		h.failures = 0
		h.progress = 0
	case ok && !h.up:
		h.successes++
		h.progress = h.successes
		if h.successes >= h.params.Rise {
			h.up, h.successes, v.Changed = true, 0, true
			h.connsKept = false
		}
	case !ok && h.up:
		h.failures++
		h.progress = h.failures
		if h.failures >= h.params.Fall {
			h.up, h.failures, v.Changed = false, 0, true
			v.KeepConnections = h.noAnswer < h.params.Fall
			h.connsKept = v.KeepConnections
		}
	case !ok && !h.up:
		h.successes = 0
		h.progress = 0
		if h.connsKept && h.noAnswer >= h.params.Fall {
			v.DropConnections = true
			h.connsKept = false
		}
	}
	return v
}

// ConnectionsKept reports whether the backend is down with its
// connections left alone (see Verdict.KeepConnections).
func (h *Health) ConnectionsKept() bool { return h.connsKept }

// LocalFault reports whether the last check was this node's fault: the
// backend keeps its state, but this node cannot reach it now.
func (h *Health) LocalFault() bool { return h.local }

// Up reports whether the backend is up: in the table, taking new flows.
func (h *Health) Up() bool { return h.up }

// Successes returns the consecutive successes counted towards Rise while down.
func (h *Health) Successes() int { return h.successes }

// Failures returns the consecutive failures counted towards Fall while up.
func (h *Health) Failures() int { return h.failures }

// Detail returns what the last check found.
func (h *Health) Detail() string { return h.detail }

// Params returns the timings the state machine runs with.
func (h *Health) Params() Params { return h.params }

// Interval returns the time to wait before the next check, as HAProxy picks
// it: inter when fully up, downinter when fully down, fastinter while a
// change of state is being counted.
func (h *Health) Interval() time.Duration {
	switch {
	case h.up && h.failures == 0:
		return h.params.Inter
	case !h.up && h.successes == 0:
		return h.params.DownInter
	default:
		return h.params.FastInter
	}
}

// Hint asks for the next check at once, because the data plane saw the
// backend refuse a connection. It changes no state by itself: only checks do.
func (h *Health) Hint() { h.hinted = true }

// Hinted reports whether a hint arrived since the last check.
func (h *Health) Hinted() bool { return h.hinted }

// NextCheck returns when the next check is due, given that the last one
// ended at last: after Interval, or after HintMinGap (capped by Interval) once
// hinted. A time not after now means at once.
func (h *Health) NextCheck(last time.Time) time.Time {
	if h.hinted {
		return last.Add(min(HintMinGap, h.Interval()))
	}
	return last.Add(h.Interval())
}

// Describe returns the log line for the backend at addr, e.g.
// "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (3/3)"
// right after it went down, or "... UP: tls handshake: i/o timeout (1/3)"
// while failures are being counted. The count is progress towards the
// other state: failures out of Fall while up, successes out of Rise while
// down.
func (h *Health) Describe(addr string) string {
	return h.transition(addr).String()
}

// transition is the state of h as a Transition, whether or not the state
// just changed.
func (h *Health) transition(addr string) Transition {
	// Counting towards the other state, or just reached it: failures out
	// of Fall while up or right after going down, successes out of Rise
	// otherwise.
	need := h.params.Fall
	if h.up == h.flipped {
		need = h.params.Rise
	}
	return Transition{Key: addr, Up: h.up, Detail: h.detail, Count: h.progress, Need: need, KeepConnections: h.connsKept}
}

// Transition is a backend changing state, as reported by a Monitor.
type Transition struct {
	// Key is the backend's address, "ip:port".
	Key string
	// Up is the new state.
	Up bool
	// Detail is what the check that decided it found.
	Detail string
	// Count of Need consecutive results brought the change: Fall failures
	// to go down, Rise successes to come up.
	Count, Need int
	// At is the time of the check that decided it.
	At time.Time
	// KeepConnections, going down: the backend's tracked connections stay
	// (see Verdict).
	KeepConnections bool
}

// String returns the log line, e.g.
// "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (3/3)".
func (t Transition) String() string {
	state := "DOWN"
	if t.Up {
		state = "UP"
	}
	return fmt.Sprintf("backend %s %s: %s (%d/%d)", t.Key, state, t.Detail, t.Count, t.Need)
}
