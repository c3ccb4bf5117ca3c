// Package testenv says what a test may assume of the machine it runs on,
// so every privileged test skips for the same reason in the same words.
//
// It imports nothing of xdplb's, so the tests of any package, the data
// path's included, may use it without an upward import.
package testenv

import (
	"bytes"
	"os"
	"sync"
	"testing"
)

// RequireRoot skips tb unless it runs as root, saying why the test needs
// it (what it does that an unprivileged user cannot). `make test` runs as
// root, so in CI these tests run.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skipf("needs root (%s): run as root, as `sudo make test` does", why)
	}
}

// SyncBuffer is a bytes.Buffer that several processes' output goes to
// while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
