package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// PrebuiltEnv names a directory of binaries built beforehand (the VM
// matrix: no compiler runs in a guest). When it is set, Build takes each
// tool from that directory under the tool's name and never runs go build.
const PrebuiltEnv = "XDPLB_E2E_BIN"

// A Tool is a command of this module the lab runs inside the namespaces.
type Tool struct {
	// Name is the binary's file name, in the build directory and in a
	// PrebuiltEnv directory.
	Name string
	// Pkg is the command's import path.
	Pkg string
	// LDFlags are passed to go build -ldflags.
	LDFlags string
}

const versionVar = "github.com/xdplb/xdplb/control/daemon.Version"

// The tools the lab builds. XDPLB and XDPLBUpgraded are the same source
// under two versions, so an upgrade test can tell which one runs.
var (
	XDPLB         = Tool{Name: "xdplb", Pkg: "github.com/xdplb/xdplb/cmd/xdplb", LDFlags: "-X " + versionVar + "=lab-1"}
	XDPLBUpgraded = Tool{Name: "xdplb-upgraded", Pkg: "github.com/xdplb/xdplb/cmd/xdplb", LDFlags: "-X " + versionVar + "=lab-2-upgraded"}
	MockAPI       = Tool{Name: "mockapi", Pkg: "github.com/xdplb/xdplb/tests/cmd/mockapi"}
	Agent         = Tool{Name: "agent", Pkg: "github.com/xdplb/xdplb/tests/cmd/agent"}
)

// builder builds each tool at most once per process, into one temporary
// directory that RemoveBinaries deletes.
var builder struct {
	mu    sync.Mutex
	dir   string
	built map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// Build returns the path of tool's binary. The first call for a tool in
// this process runs go build (from the working directory, which must be
// inside this module: go test and go run are); later calls return the same
// path, or the same error. With $XDPLB_E2E_BIN set the binary is taken from
// there instead.
func Build(ctx context.Context, tool Tool) (string, error) {
	if dir := os.Getenv(PrebuiltEnv); dir != "" {
		return prebuilt(dir, tool)
	}
	builder.mu.Lock()
	if builder.built == nil {
		builder.built = map[string]*build{}
	}
	b := builder.built[tool.Name]
	if b == nil {
		b = &build{}
		builder.built[tool.Name] = b
	}
	builder.mu.Unlock()
	b.once.Do(func() { b.path, b.err = goBuild(ctx, tool) })
	return b.path, b.err
}

// MustBuild is Build for tests: it fails tb on error.
func MustBuild(tb testing.TB, tool Tool) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	path, err := Build(ctx, tool)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// RemoveBinaries deletes the directory Build wrote to (never a PrebuiltEnv
// directory). Call it once the process is done with every lab: at the end
// of main, or in TestMain after m.Run.
func RemoveBinaries() error {
	builder.mu.Lock()
	defer builder.mu.Unlock()
	if builder.dir == "" {
		return nil
	}
	err := os.RemoveAll(builder.dir)
	builder.dir, builder.built = "", nil
	return err
}

func prebuilt(dir string, tool Tool) (string, error) {
	path := filepath.Join(dir, tool.Name)
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("lab: prebuilt %s: %w (%s=%s)", tool.Name, err, PrebuiltEnv, dir)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("lab: prebuilt %s is not an executable file (%s=%s)", path, PrebuiltEnv, dir)
	}
	return path, nil
}

func buildDir() (string, error) {
	builder.mu.Lock()
	defer builder.mu.Unlock()
	if builder.dir == "" {
		dir, err := os.MkdirTemp("", "xdplb-lab-bin-")
		if err != nil {
			return "", fmt.Errorf("lab: build directory: %w", err)
		}
		builder.dir = dir
	}
	return builder.dir, nil
}

func goBuild(ctx context.Context, tool Tool) (string, error) {
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	goBin, err := goCommand()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, tool.Name)
	cmd := exec.CommandContext(ctx, goBin, buildArgs(tool, out)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as the Makefile builds
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("lab: go build %s (run from inside the xdplb module): %w\n%s", tool.Pkg, err, b)
	}
	return out, nil
}

func buildArgs(tool Tool, out string) []string {
	args := []string{"build", "-trimpath", "-o", out}
	if tool.LDFlags != "" {
		args = append(args, "-ldflags", tool.LDFlags)
	}
	return append(args, tool.Pkg)
}

// fallbackGo is where the Makefile looks for go too (sudo often drops
// /usr/local/go/bin from PATH).
const fallbackGo = "/usr/local/go/bin/go"

// goCommand finds the go command: on PATH, or else at fallbackGo.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if _, err := os.Stat(fallbackGo); err == nil {
		return fallbackGo, nil
	}
	return "", errors.New("lab: the go command is not on PATH: add it (e.g. /usr/local/go/bin), or build the binaries first and set " + PrebuiltEnv)
}
