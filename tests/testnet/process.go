package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxOutput bounds how much of a background process's stdout (and stderr)
// is kept; older bytes are dropped first.
const maxOutput = 4 << 20

var errProcessExited = errors.New("process already exited")

// Process is a command running in the background inside a host namespace,
// started by Host.Start and stopped by Net.Close at the latest.
type Process struct {
	Host *Host
	Cmd  *exec.Cmd

	stdout, stderr tailBuffer
	done           chan struct{}
	waitErr        error
}

// Start runs name in the background inside the host's namespace (through
// nsenter, see Command). Its stdout and stderr are captured (the last 4 MiB
// of each). It gets SIGKILL if this process dies, and Net.Close stops it
// (SIGTERM, then SIGKILL after 2 s). Signals go to its PID; only SIGKILL also
// goes to its own process group, and only while its PID is still held (alive
// or unreaped), so nothing but its own descendants is ever hit.
func (h *Host) Start(name string, args ...string) (*Process, error) {
	return h.StartCmd(h.Command(context.Background(), name, args...))
}

// StartCmd starts a command prepared with Command (for callers that set its
// environment or working directory) and tracks it like Start.
func (h *Host) StartCmd(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Host: h, Cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &p.stderr
	}
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("testnet: net is closed")
	}
	// Pdeathsig fires when the OS thread that forked the child exits, not
	// when this process does, and the Go runtime ends threads whose
	// goroutine exits while locked (as Net's namespace setup does). So fork
	// from a locked thread that stays alive, parked in reap, until the
	// child has exited.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.reap()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("testnet: %s: start %s: %w", h.Name, strings.Join(cmd.Args, " "), err)
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// runLocked runs fn on a locked OS thread that outlives it, so a child
// forked by fn with Pdeathsig set is not killed because the runtime retired
// the forking thread meanwhile.
func runLocked(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		fn()
	}()
	<-done
}

// reap waits for the process to exit. While it is a zombie its PID, which
// is also the ID of its process group (Setpgid), cannot be reused: that is
// the moment to end what it left running in its group, before reaping it.
func (p *Process) reap() {
	pid := p.Cmd.Process.Pid
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	if p.Cmd.SysProcAttr != nil && p.Cmd.SysProcAttr.Setpgid {
		_ = unix.Kill(-pid, unix.SIGKILL) // ESRCH when the group is empty
	}
	p.waitErr = p.Cmd.Wait()
	close(p.done)
}

func (p *Process) String() string {
	name := "?"
	if len(p.Cmd.Args) > 3 && p.Cmd.Args[0] == "nsenter" {
		name = strings.Join(p.Cmd.Args[3:], " ")
	} else if len(p.Cmd.Args) > 0 {
		name = strings.Join(p.Cmd.Args, " ")
	}
	if len(name) > 120 {
		name = name[:120] + "..."
	}
	return fmt.Sprintf("%s[%d] on %s", name, p.PID(), p.Host.Name)
}

// PID returns the process ID (nsenter execs the command, so this is the
// command itself).
func (p *Process) PID() int {
	if p.Cmd.Process == nil {
		return 0
	}
	return p.Cmd.Process.Pid
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to exit and returns what exec.Cmd.Wait returned.
func (p *Process) Wait() error {
	<-p.done
	return p.waitErr
}

// Signal sends sig to the process (by PID) if it is still running.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return errProcessExited
	}
	if err := p.Cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return errProcessExited
		}
		return err
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Process) Kill() error {
	err := p.Signal(syscall.SIGKILL)
	<-p.done
	return err
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then sends
// SIGKILL. It returns nil if the process exited with status 0 or died of the
// SIGTERM, its exit error if it exited otherwise, and an error if it had to
// be killed.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, errProcessExited) {
			return nil
		}
		return err
	}
	select {
	case <-p.done:
		var exit *exec.ExitError
		if errors.As(p.waitErr, &exit) {
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
				return nil
			}
		}
		return p.waitErr
	case <-time.After(grace):
		// reap then ends the rest of its process group.
		_ = p.Signal(syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("did not exit within %v of SIGTERM, killed", grace)
	}
}

// Stdout returns the captured standard output so far.
func (p *Process) Stdout() string { return p.stdout.String() }

// Stderr returns the captured standard error so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// WaitOutput waits until the captured stdout contains substr (e.g. a
// "listening" line). It fails if the process exits first or ctx is done.
func (p *Process) WaitOutput(ctx context.Context, substr string) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if strings.Contains(p.Stdout(), substr) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Stdout(), substr) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q; stderr: %s", p, p.waitErr, substr, strings.TrimSpace(p.Stderr()))
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %q: %w; stderr: %s", p, substr, ctx.Err(), strings.TrimSpace(p.Stderr()))
		case <-t.C:
		}
	}
}

// tailBuffer is an io.Writer keeping the last maxOutput bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - maxOutput; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
