package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// testParams has distinct intervals so that each test can tell which one
// the state machine picked.
var testParams = Params{
	Inter: 2 * time.Second, FastInter: 500 * time.Millisecond, DownInter: 5 * time.Second,
	Timeout: time.Second, Rise: 2, Fall: 3,
}

func TestHealthParamsWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Params
		want Params
	}{
		{
			name: "all zero: HAProxy defaults",
			in:   Params{},
			want: Params{Inter: 2 * time.Second, FastInter: 2 * time.Second, DownInter: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			name: "fastinter and downinter follow inter, timeout capped at 1s",
			in:   Params{Inter: 5 * time.Second},
			want: Params{Inter: 5 * time.Second, FastInter: 5 * time.Second, DownInter: 5 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		},
		{
			name: "timeout follows a short inter",
			in:   Params{Inter: 300 * time.Millisecond},
			want: Params{Inter: 300 * time.Millisecond, FastInter: 300 * time.Millisecond, DownInter: 300 * time.Millisecond, Timeout: 300 * time.Millisecond, Rise: 2, Fall: 3},
		},
		{
			name: "set values kept",
			in:   testParams,
			want: testParams,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in.WithDefaults()
			if got != tt.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
		})
	}
}

func TestHealthParamsValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Params)
		want   string
	}{
		{"zero inter", func(p *Params) { p.Inter = 0 }, "inter 0s: must be a positive duration"},
		{"negative fastinter", func(p *Params) { p.FastInter = -time.Second }, "fastinter -1s: must be a positive duration"},
		{"zero downinter", func(p *Params) { p.DownInter = 0 }, "downinter 0s"},
		{"zero timeout", func(p *Params) { p.Timeout = 0 }, "timeout 0s"},
		{"zero rise", func(p *Params) { p.Rise = 0 }, "rise 0: must be at least 1"},
		{"negative fall", func(p *Params) { p.Fall = -2 }, "fall -2: must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testParams
			tt.modify(&p)
			err := p.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// outcome is a passing check or one that got no answer.
func outcome(ok bool) Outcome {
	if ok {
		return Healthy
	}
	return NoAnswer
}

// step is one check fed to a Health and what must follow from it.
type step struct {
	ok           bool
	wantChanged  bool
	wantUp       bool
	wantInterval time.Duration
	wantLine     string
}

func runSteps(t *testing.T, h *Health, steps []step) {
	t.Helper()
	for i, s := range steps {
		detail := "tls handshake ok"
		if !s.ok {
			detail = "tls handshake: connection refused"
		}
		changed := h.Observe(outcome(s.ok), detail).Changed
		if changed != s.wantChanged {
			t.Errorf("step %d (ok=%v): changed = %v, want %v", i, s.ok, changed, s.wantChanged)
		}
		if h.Up() != s.wantUp {
			t.Errorf("step %d (ok=%v): Up() = %v, want %v", i, s.ok, h.Up(), s.wantUp)
		}
		if got := h.Interval(); got != s.wantInterval {
			t.Errorf("step %d (ok=%v): Interval() = %v, want %v", i, s.ok, got, s.wantInterval)
		}
		if s.wantLine != "" {
			if got := h.Describe("10.10.10.51:6443"); got != s.wantLine {
				t.Errorf("step %d (ok=%v): Describe() = %q, want %q", i, s.ok, got, s.wantLine)
			}
		}
	}
}

const (
	inter = 2 * time.Second
	fast  = 500 * time.Millisecond
	down  = 5 * time.Second
)

func TestHealthStateMachine(t *testing.T) {
	tests := []struct {
		name      string
		initialUp bool
		steps     []step
	}{
		{
			name:      "up backend goes down after fall failures, fastinter meanwhile",
			initialUp: true,
			steps: []step{
				{ok: false, wantUp: true, wantInterval: fast, wantLine: "backend 10.10.10.51:6443 UP: tls handshake: connection refused (1/3)"},
				{ok: false, wantUp: true, wantInterval: fast, wantLine: "backend 10.10.10.51:6443 UP: tls handshake: connection refused (2/3)"},
				{ok: false, wantChanged: true, wantUp: false, wantInterval: down, wantLine: "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (3/3)"},
				{ok: false, wantUp: false, wantInterval: down, wantLine: "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (0/2)"},
			},
		},
		{
			name:      "down backend comes up after rise successes",
			initialUp: false,
			steps: []step{
				{ok: true, wantUp: false, wantInterval: fast, wantLine: "backend 10.10.10.51:6443 DOWN: tls handshake ok (1/2)"},
				{ok: true, wantChanged: true, wantUp: true, wantInterval: inter, wantLine: "backend 10.10.10.51:6443 UP: tls handshake ok (2/2)"},
				{ok: true, wantUp: true, wantInterval: inter, wantLine: "backend 10.10.10.51:6443 UP: tls handshake ok (0/3)"},
			},
		},
		{
			name:      "a success while going down clears the failures",
			initialUp: true,
			steps: []step{
				{ok: false, wantUp: true, wantInterval: fast},
				{ok: false, wantUp: true, wantInterval: fast},
				{ok: true, wantUp: true, wantInterval: inter},
				{ok: false, wantUp: true, wantInterval: fast, wantLine: "backend 10.10.10.51:6443 UP: tls handshake: connection refused (1/3)"},
				{ok: false, wantUp: true, wantInterval: fast},
				{ok: false, wantChanged: true, wantUp: false, wantInterval: down},
			},
		},
		{
			name:      "a failure while going up clears the successes",
			initialUp: false,
			steps: []step{
				{ok: true, wantUp: false, wantInterval: fast},
				{ok: false, wantUp: false, wantInterval: down, wantLine: "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (0/2)"},
				{ok: true, wantUp: false, wantInterval: fast},
				{ok: true, wantChanged: true, wantUp: true, wantInterval: inter},
			},
		},
		{
			name:      "flapping round trip",
			initialUp: true,
			steps: []step{
				{ok: false, wantUp: true, wantInterval: fast},
				{ok: false, wantUp: true, wantInterval: fast},
				{ok: false, wantChanged: true, wantUp: false, wantInterval: down},
				{ok: true, wantUp: false, wantInterval: fast},
				{ok: true, wantChanged: true, wantUp: true, wantInterval: inter},
				{ok: false, wantUp: true, wantInterval: fast, wantLine: "backend 10.10.10.51:6443 UP: tls handshake: connection refused (1/3)"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, NewHealth(testParams, tt.initialUp), tt.steps)
		})
	}
}

func TestHealthRiseFallOne(t *testing.T) {
	p := testParams
	p.Rise, p.Fall = 1, 1
	runSteps(t, NewHealth(p, true), []step{
		{ok: false, wantChanged: true, wantUp: false, wantInterval: down, wantLine: "backend 10.10.10.51:6443 DOWN: tls handshake: connection refused (1/1)"},
		{ok: true, wantChanged: true, wantUp: true, wantInterval: inter, wantLine: "backend 10.10.10.51:6443 UP: tls handshake ok (1/1)"},
	})
}

func TestHealthInitialState(t *testing.T) {
	tests := []struct {
		initialUp    bool
		wantInterval time.Duration
		wantLine     string
	}{
		{true, inter, "backend 10.10.10.50:6443 UP: not checked yet (0/3)"},
		{false, down, "backend 10.10.10.50:6443 DOWN: not checked yet (0/2)"},
	}
	for _, tt := range tests {
		h := NewHealth(testParams, tt.initialUp)
		if h.Up() != tt.initialUp {
			t.Errorf("NewHealth(up=%v).Up() = %v", tt.initialUp, h.Up())
		}
		if got := h.Interval(); got != tt.wantInterval {
			t.Errorf("NewHealth(up=%v).Interval() = %v, want %v", tt.initialUp, got, tt.wantInterval)
		}
		if got := h.Describe("10.10.10.50:6443"); got != tt.wantLine {
			t.Errorf("NewHealth(up=%v).Describe() = %q, want %q", tt.initialUp, got, tt.wantLine)
		}
	}
}

func TestHealthCounters(t *testing.T) {
	h := NewHealth(testParams, true)
	h.Observe(NoAnswer, "x")
	h.Observe(NoAnswer, "y")
	if h.Failures() != 2 || h.Successes() != 0 || h.Detail() != "y" {
		t.Errorf("after 2 failures: Failures()=%d Successes()=%d Detail()=%q, want 2, 0, \"y\"", h.Failures(), h.Successes(), h.Detail())
	}
	h.Observe(NoAnswer, "z") // down, counters reset
	h.Observe(Healthy, "ok")
	if h.Failures() != 0 || h.Successes() != 1 {
		t.Errorf("down then 1 success: Failures()=%d Successes()=%d, want 0, 1", h.Failures(), h.Successes())
	}
}

func TestHealthHint(t *testing.T) {
	last := epoch
	tests := []struct {
		name      string
		initialUp bool
		hint      bool
		want      time.Time
	}{
		{"up, no hint: inter", true, false, last.Add(inter)},
		{"down, no hint: downinter", false, false, last.Add(down)},
		{"up, hinted: HintMinGap", true, true, last.Add(HintMinGap)},
		{"down, hinted: HintMinGap", false, true, last.Add(HintMinGap)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHealth(testParams, tt.initialUp)
			if tt.hint {
				h.Hint()
			}
			if got := h.NextCheck(last); !got.Equal(tt.want) {
				t.Errorf("NextCheck() = last+%v, want last+%v", got.Sub(last), tt.want.Sub(last))
			}
			if h.Up() != tt.initialUp {
				t.Errorf("Hint changed the state")
			}
		})
	}

	t.Run("a check clears the hint", func(t *testing.T) {
		h := NewHealth(testParams, true)
		h.Hint()
		h.Observe(Healthy, "ok")
		if h.Hinted() {
			t.Error("Hinted() = true after a check")
		}
		if got := h.NextCheck(last); !got.Equal(last.Add(inter)) {
			t.Errorf("NextCheck() = last+%v, want last+%v", got.Sub(last), inter)
		}
	})

	t.Run("gap capped by a shorter interval", func(t *testing.T) {
		p := testParams
		p.Inter = 50 * time.Millisecond
		h := NewHealth(p, true)
		h.Hint()
		if got := h.NextCheck(last); !got.Equal(last.Add(50 * time.Millisecond)) {
			t.Errorf("NextCheck() = last+%v, want last+50ms", got.Sub(last))
		}
	})
}

// TestConnectionPolicy: what becomes of a failing backend's connections.
// A backend that still answers "not ready" keeps them when it goes down;
// one that answered nothing fall times in a row loses them, at once or
// later, once; a backend that comes back clears the slate.
func TestConnectionPolicy(t *testing.T) {
	const (
		ok = Healthy
		nr = NotReady
		na = NoAnswer
	)
	type want struct {
		changed, keep, drop bool
	}
	tests := []struct {
		name      string
		initialUp bool
		outcomes  []Outcome
		want      []want // per outcome
	}{
		{
			name: "no answer fall times: down, connections dropped with it", initialUp: true,
			outcomes: []Outcome{na, na, na, na},
			want:     []want{{}, {}, {changed: true}, {}},
		},
		{
			name: "not ready: down, connections kept while it keeps answering", initialUp: true,
			outcomes: []Outcome{nr, nr, nr, nr, nr},
			want:     []want{{}, {}, {changed: true, keep: true}, {}, {}},
		},
		{
			name: "not ready, then no answer fall times: kept, then dropped once", initialUp: true,
			outcomes: []Outcome{nr, nr, nr, na, na, na, na},
			want:     []want{{}, {}, {changed: true, keep: true}, {}, {}, {drop: true}, {}},
		},
		{
			name: "one not ready among the failures keeps them", initialUp: true,
			outcomes: []Outcome{na, na, nr},
			want:     []want{{}, {}, {changed: true, keep: true}},
		},
		{
			name: "a not ready answer restarts the count of no answers", initialUp: true,
			outcomes: []Outcome{nr, nr, nr, na, na, nr, na, na, na},
			want:     []want{{}, {}, {changed: true, keep: true}, {}, {}, {}, {}, {}, {drop: true}},
		},
		{
			name: "back up: nothing kept any more", initialUp: true,
			outcomes: []Outcome{nr, nr, nr, ok, ok, na, na, na},
			want:     []want{{}, {}, {changed: true, keep: true}, {}, {changed: true}, {}, {}, {changed: true}},
		},
		{
			name: "starting down (a restart): nothing was kept, nothing to drop", initialUp: false,
			outcomes: []Outcome{na, na, na, na},
			want:     []want{{}, {}, {}, {}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHealth(testParams, tt.initialUp)
			for i, o := range tt.outcomes {
				v := h.Observe(o, o.String())
				got := want{v.Changed, v.KeepConnections, v.DropConnections}
				if got != tt.want[i] {
					t.Errorf("check %d (%s): %+v, want %+v", i, o, got, tt.want[i])
				}
			}
		})
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Outcome
	}{
		{nil, Healthy},
		{&CheckError{Step: "https GET", Err: &StatusError{Code: 503}}, NotReady},
		{&CheckError{Step: "tls handshake", Err: errors.New("connection refused")}, NoAnswer},
		{context.DeadlineExceeded, NoAnswer},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}
