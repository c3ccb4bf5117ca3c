package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// TestClassifyLocal: the errors this node's own kernel gives, whatever the
// backend, are local faults; the ones that come from the backend (or its
// absence) are not.
func TestClassifyLocal(t *testing.T) {
	dial := func(errno syscall.Errno) error {
		return &CheckError{Step: "tls handshake", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}}
	}
	for _, c := range []struct {
		err  error
		want Outcome
	}{
		{dial(syscall.EMFILE), LocalFault},
		{dial(syscall.ENFILE), LocalFault},
		{dial(syscall.ENOBUFS), LocalFault},
		{dial(syscall.ENOMEM), LocalFault},
		{dial(syscall.ENETUNREACH), LocalFault},
		{dial(syscall.ENETDOWN), LocalFault},
		{dial(syscall.EADDRNOTAVAIL), LocalFault},
		{dial(syscall.EPERM), LocalFault},
		{dial(syscall.EINVAL), LocalFault}, // a blackhole route on this node
		{&CheckError{Step: "https GET /readyz", Err: &LocalError{Reason: "cannot read the check's token", Err: os.ErrNotExist}}, LocalFault},
		{dial(syscall.ECONNREFUSED), NoAnswer},
		{dial(syscall.ECONNRESET), NoAnswer},
		{dial(syscall.EHOSTUNREACH), NoAnswer}, // the backend's host did not answer ARP
		{dial(syscall.ETIMEDOUT), NoAnswer},
		{&CheckError{Step: "https GET", Err: &StatusError{Code: 503}}, NotReady},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// TestLocalFaultsFreezeHealth: local faults, however many, move no
// backend either way and reset no count; the checks around them count as
// if they had not happened.
func TestLocalFaultsFreezeHealth(t *testing.T) {
	p := Params{Rise: 2, Fall: 3}.WithDefaults()
	up := NewHealth(p, true)
	up.Observe(NoAnswer, "refused")
	for range 10 {
		if v := up.Observe(LocalFault, "connect: too many open files"); v != (Verdict{}) {
			t.Fatalf("a local fault decided %+v", v)
		}
	}
	if !up.Up() || up.Failures() != 1 {
		t.Fatalf("after 1 failure and 10 local faults: up=%v failures=%d, want up with 1 failure", up.Up(), up.Failures())
	}
	if d := up.Detail(); d != "not counted, this node's fault: connect: too many open files" {
		t.Errorf("detail %q", d)
	}
	up.Observe(NoAnswer, "refused")
	if v := up.Observe(NoAnswer, "refused"); !v.Changed || v.KeepConnections {
		t.Fatalf("three real failures around the local faults: %+v, want down with connections dropped", v)
	}

	down := NewHealth(p, false)
	down.Observe(Healthy, "ok")
	down.Observe(LocalFault, "network is unreachable")
	if v := down.Observe(Healthy, "ok"); !v.Changed || !down.Up() {
		t.Fatalf("rise 2 across a local fault: %+v", v)
	}

	kept := NewHealth(p, true)
	for range 3 {
		kept.Observe(NotReady, "status 503")
	}
	kept.Observe(NoAnswer, "refused")
	kept.Observe(NoAnswer, "refused")
	for range 5 {
		if v := kept.Observe(LocalFault, "network is unreachable"); v.DropConnections {
			t.Fatal("local faults counted towards dropping a not-ready backend's connections")
		}
	}
	if v := kept.Observe(NoAnswer, "refused"); !v.DropConnections {
		t.Fatal("the third real no-answer did not drop the connections")
	}
}

// fakeLink is a Link a test moves by hand.
type fakeLink struct {
	mu      sync.Mutex
	up      bool
	downs   uint64
	upSince time.Time
}

func (l *fakeLink) LinkState() (bool, uint64, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up, l.downs, l.upSince
}

func (l *fakeLink) set(up bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.up == up {
		return
	}
	l.up = up
	if up {
		l.upSince = time.Now()
	} else {
		l.downs++
	}
}

// linkChecker fails while the link is down (as a connect gets "network is
// unreachable" or times out) or when told to fail.
type linkChecker struct {
	link *fakeLink
	took time.Duration
	fail error
}

func (c *linkChecker) Check(ctx context.Context, addr string) error {
	time.Sleep(c.took)
	if up, _, _ := c.link.LinkState(); !up {
		return &CheckError{Step: "tls handshake", Err: errors.New("i/o timeout")}
	}
	return c.fail
}

// TestLocalGuard: a check that failed while the node's own link was down,
// went down during it or had just come back is the node's fault; any other
// failure, and every pass, goes through as it is.
func TestLocalGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		link := &fakeLink{up: true}
		c := &linkChecker{link: link, took: 100 * time.Millisecond}
		g := &LocalGuard{Checker: c, Link: link, Iface: "eth1", Settle: time.Second}
		refused := &CheckError{Step: "tls handshake", Err: errors.New("connection refused")}

		if err := g.Check(context.Background(), "b"); err != nil {
			t.Fatalf("link up, backend fine: %v", err)
		}
		c.fail = refused
		if err := g.Check(context.Background(), "b"); Classify(err) != NoAnswer {
			t.Fatalf("link up, backend refuses: %v (%s), want no answer", err, Classify(err))
		}
		c.fail = nil

		link.set(false)
		err := g.Check(context.Background(), "b")
		if Classify(err) != LocalFault || err.Error() != "eth1 was down during the check: tls handshake: i/o timeout" {
			t.Fatalf("link down: %v (%s)", err, Classify(err))
		}
		// The link goes down during a check.
		link.set(true)
		time.Sleep(2 * time.Second)
		go func() { time.Sleep(50 * time.Millisecond); link.set(false) }()
		if err := g.Check(context.Background(), "b"); Classify(err) != LocalFault {
			t.Fatalf("link lost during the check: %v (%s)", err, Classify(err))
		}
		// Just back: a failure within Settle is the node's; after it, the
		// backend's.
		link.set(true)
		c.fail = refused
		if err := g.Check(context.Background(), "b"); Classify(err) != LocalFault {
			t.Fatalf("a failure just after the link came back: %v (%s)", err, Classify(err))
		}
		time.Sleep(time.Second)
		if err := g.Check(context.Background(), "b"); Classify(err) != NoAnswer {
			t.Fatalf("a failure %v after the link came back: %v (%s), want no answer", g.Settle, err, Classify(err))
		}
		if g.String() != "check" {
			t.Errorf("String() = %q", g.String())
		}
	})
}

// TestCheckOutOfFiles: the real checks, run by a process out of file
// descriptors, fail with EMFILE, a local fault; the backend's state does
// not move (issue 10 §1: 20 000 idle metrics connections took every
// backend down).
func TestCheckOutOfFiles(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Use up the descriptors below a lowered soft limit, then check.
	var held []*os.File
	defer func() {
		for _, f := range held {
			f.Close()
		}
	}()
	low := lim
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		held = append(held, f)
		if len(held) > 300 {
			t.Fatal("the lowered limit did not apply")
		}
	}
	c := &TCPChecker{}
	err = c.Check(context.Background(), ln.Addr().String())
	for _, f := range held {
		f.Close()
	}
	held = nil
	if Classify(err) != LocalFault {
		t.Fatalf("check out of file descriptors: %v (%s), want a local fault", err, Classify(err))
	}
	h := NewHealth(Params{}.WithDefaults(), true)
	for range 5 {
		h.Observe(Classify(err), fmt.Sprint(err))
	}
	if !h.Up() {
		t.Fatal("five checks out of file descriptors took the backend down")
	}
	if err := c.Check(context.Background(), ln.Addr().String()); err != nil {
		t.Fatalf("check with descriptors again: %v", err)
	}
}
