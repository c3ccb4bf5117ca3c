package health

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// A node's own trouble is never evidence against a backend: a check that
// fails because this node is out of file descriptors, memory or buffers,
// has no route, has lost its own link or cannot read its own credential
// files says nothing of the server it was checking. Such a failure is a
// LocalFault, which leaves the backend's state as it was; otherwise a
// node that runs out of file descriptors (issue 10 §1) or loses its link
// for a few seconds (§7) would mark every backend down and reset every
// client.

// LocalError is a check that failed because of this node. Reason says
// what of the node (e.g. "eth1 was down during the check").
type LocalError struct {
	Reason string
	Err    error
}

func (e *LocalError) Error() string {
	if e.Reason == "" {
		return shortError(e.Err)
	}
	return e.Reason + ": " + shortError(e.Err)
}

func (e *LocalError) Unwrap() error { return e.Err }

// localErrnos are the errors a connect or send gets from this node's own
// kernel, whatever the backend: resources (EMFILE, ENFILE, ENOBUFS,
// ENOMEM), routing and addressing (ENETUNREACH, ENETDOWN, EADDRNOTAVAIL:
// no route, the link is down, the source address is gone or no source
// port is free), this node's routing table discarding the packet (EINVAL:
// a blackhole route) and the local firewall (EPERM, EACCES). EHOSTUNREACH
// is not among them: the backend's own host not answering ARP is evidence
// against it.
var localErrnos = []syscall.Errno{
	syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
	syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EADDRNOTAVAIL, syscall.EINVAL,
	syscall.EPERM, syscall.EACCES,
}

// IsLocal reports whether a check's error is this node's fault (see
// LocalFault).
func IsLocal(err error) bool {
	var le *LocalError
	if errors.As(err, &le) {
		return true
	}
	for _, e := range localErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Link is the state of the node's own interface toward the backends, as a
// LocalGuard asks it.
type Link interface {
	// LinkState says whether the link is up now, how many times it has
	// gone down so far, and when it last came up (zero if never down).
	LinkState() (up bool, downs uint64, upSince time.Time)
}

// LocalGuard is a Checker that turns the failures of checks that ran
// while the node's own link was unusable into LocalErrors: the link was
// down when the check started or ended, went down during it, or came
// back less than Settle before it started (neighbours and routes are
// being rebuilt). A check that passes passes.
type LocalGuard struct {
	Checker Checker
	Link    Link
	// Iface names the link in the reason, e.g. "eth1".
	Iface  string
	Settle time.Duration
}

func (g *LocalGuard) String() string {
	if s, ok := g.Checker.(fmt.Stringer); ok {
		return s.String()
	}
	return "check"
}

// Check runs the guarded check.
func (g *LocalGuard) Check(ctx context.Context, addr string) error {
	up0, downs0, since := g.Link.LinkState()
	start := time.Now()
	err := g.Checker.Check(ctx, addr)
	if err == nil || IsLocal(err) {
		return err
	}
	up1, downs1, _ := g.Link.LinkState()
	switch {
	case !up0 || !up1 || downs1 != downs0:
		return &LocalError{Reason: g.Iface + " was down during the check", Err: err}
	case !since.IsZero() && start.Sub(since) < g.Settle:
		return &LocalError{Reason: g.Iface + " had just come back up", Err: err}
	}
	return err
}
