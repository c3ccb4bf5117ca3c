package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// An instance is owned by the daemon that holds its lock file,
// /run/xdplb/<instance>.lock (flock, exclusive), for its whole life: the
// kernel drops the lock when the process ends, however it ends, so
// ownership never depends on a socket answering (a stopped daemon's socket
// accepts connections it never answers) or on a file being there. Two
// racing starts cannot both get it; a start does not touch the socket or
// the kernel until it has it; detach takes it too, so no start can run
// while it removes the instance. The file is never removed: a lock file
// unlinked while held would let a second daemon lock a new one.

// LockPath is the lock file of an instance.
func LockPath(instance string) string { return filepath.Join(RunDir, instance+".lock") }

// RunningError says an instance's lock is held by a daemon.
type RunningError struct {
	Instance string
	PID      int // 0 when the holder did not write it
}

func (e *RunningError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = "pid " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("instance %q already has a running daemon (%s holds %s): stop it first", e.Instance, holder, LockPath(e.Instance))
}

type instanceLock struct{ f *os.File }

// lockInstance takes the instance's lock without waiting, and writes this
// process's pid into it. A lock held elsewhere is a *RunningError.
func lockInstance(instance string) (*instanceLock, error) {
	if err := bpf.ValidateInstance(instance); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", RunDir, err)
	}
	path := LockPath(instance)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &RunningError{Instance: instance, PID: lockHolder(instance)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &instanceLock{f: f}, nil
}

// release drops the lock (closing the file does).
func (l *instanceLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// lockHolder is the pid the lock's holder wrote, 0 if none.
func lockHolder(instance string) int {
	b, err := os.ReadFile(LockPath(instance))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitUnlocked waits until no process holds the instance's lock, and
// then holds it.
func waitUnlocked(instance string, wait time.Duration) (*instanceLock, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := lockInstance(instance)
		var re *RunningError
		if err == nil || !errors.As(err, &re) || time.Now().After(deadline) {
			return l, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
