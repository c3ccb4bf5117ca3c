// Package safefile reads the small files an operator names — the
// configuration, the health checks' CA, client certificate, key and
// bearer token — so that a wrong path cannot hurt the daemon: only a
// regular file is read (a FIFO would block the reader for ever, a device
// such as /dev/zero would grow it without end), never more than a size
// cap, and within a deadline (a hung network or FUSE file system must not
// hang a check).
//
// It reads the files it is given and touches nothing else; it imports
// nothing of xdplb's.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Defaults of Read's limits.
const (
	// MaxSize is the cap for configuration and PEM files: a CA bundle of
	// every public root is ~250 KiB.
	MaxSize = 1 << 20
	// Timeout bounds one read.
	Timeout = 5 * time.Second
)

// ErrNotRegular is returned for a path that names no regular file.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned for a file over the size cap.
var ErrTooLarge = errors.New("file too large")

// Read returns the contents of the regular file at path (symbolic links
// are followed), at most max bytes, read within timeout. A FIFO, a socket
// or a device is refused without blocking; a larger file is refused.
func Read(path string, max int64, timeout time.Duration) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO without a writer returns at once (the
	// type check below refuses it); for a regular file it changes nothing.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	// The type of what was opened, not of what the path named a moment
	// before: the path may have been swapped in between.
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(fi.Mode()))}
	}
	if fi.Size() > max {
		f.Close()
		return nil, &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, fi.Size(), max)}
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, max+1))
		done <- result{b, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: r.err}
		}
		if int64(len(r.b)) > max {
			return nil, &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)}
		}
		return r.b, nil
	case <-timer.C:
		// The reading goroutine stays blocked until the file system
		// answers; it holds only this file.
		return nil, &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("no answer within %v (hung file system?)", timeout)}
	}
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}
