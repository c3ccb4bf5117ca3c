package lab

import (
	"os"
	"testing"
)

// TestMain removes the binaries Build made for this test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinaries()
	os.Exit(code)
}
