package testnet_test

import (
	"os"
	"testing"

	"github.com/xdplb/xdplb/tests/lab"
)

// TestMain removes the binaries the lab built for this test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	lab.RemoveBinaries()
	os.Exit(code)
}
