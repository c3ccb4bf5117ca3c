package testnet

import (
	"context"
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// GoBuild builds the Go command pkg (an import path such as
// "github.com/xdplb/xdplb/cmd/mockapi", or a path relative to the test's
// package directory) into dir and returns the binary's path. Run from inside
// the module; the build cache keeps repeated builds fast.
func GoBuild(ctx context.Context, pkg, dir string) (string, error) {
	out := filepath.Join(dir, path.Base(strings.TrimSuffix(pkg, "/")))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// BuildBinary is GoBuild for tests: it builds into t.TempDir() and fails the
// test on error.
func BuildBinary(tb testing.TB, pkg string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := GoBuild(ctx, pkg, tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return bin
}
