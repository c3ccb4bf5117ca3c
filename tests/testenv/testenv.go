// Package testenv says what a test may assume of the machine it runs on,
// so every privileged test skips for the same reason in the same words.
//
// It imports nothing of xdplb's, so the tests of any package, the data
// path's included, may use it without an upward import.
package testenv

import (
	"os"
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
