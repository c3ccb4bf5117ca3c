package agent

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/lab"
)

// TestMain removes the binaries the lab built for this test binary.
func TestMain(m *testing.M) {
	code := m.Run()
	lab.RemoveBinaries()
	os.Exit(code)
}

func buildMockapi(t *testing.T) string {
	t.Helper()
	return lab.MustBuild(t, lab.MockAPI)
}

// startMockapi runs the mockapi binary (killed by PID at cleanup) and returns
// it with the API address from its "listening" line.
func startMockapi(t *testing.T, bin string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "listening") {
				lines <- sc.Text()
			}
		}
	}()
	select {
	case line := <-lines:
		for _, f := range strings.Fields(line) {
			if addr, ok := strings.CutPrefix(f, "api="); ok {
				return cmd, addr
			}
		}
		t.Fatalf("no api= in %q", line)
	case <-done:
		t.Fatalf("mockapi exited early: %s", stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("mockapi did not print listening: %s", stderr.String())
	}
	return nil, ""
}
