package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain lets the test binary act as the tool (NOSYSCALL_TOOL=1).
func TestMain(m *testing.M) {
	if os.Getenv("NOSYSCALL_TOOL") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func tool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "NOSYSCALL_TOOL=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The filtered system call fails with the errno given, in the command and
// its children; others work.
func TestFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the filtered calls (unshare, mount) need root to succeed without the filter")
	}
	for _, p := range []string{"sh", "unshare"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	// Without the filter this works (a private mount namespace, a tmpfs in it).
	mnt := t.TempDir()
	script := "mount -t tmpfs none " + mnt + " && echo mounted"
	if out, err := exec.Command("unshare", "--mount", "sh", "-c", script).CombinedOutput(); err != nil || !strings.Contains(string(out), "mounted") {
		t.Fatalf("unshare --mount without a filter: %v %s", err, out)
	}
	// With it, unshare's own mount (making / private) already fails.
	out, err := tool(t, "-errno", "EPERM", "-syscall", "mount", "--", "unshare", "--mount", "sh", "-c", script)
	if err == nil || strings.Contains(out, "mounted") || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("mount under a mount filter: %v\n%s", err, out)
	}
	out, err = tool(t, "-errno", "ENOSYS", "-syscall", "unshare,bpf", "--", "unshare", "--mount", "true")
	if err == nil || !strings.Contains(out, "Function not implemented") {
		t.Errorf("unshare under an unshare filter: %v\n%s", err, out)
	}
	if out, err := tool(t, "-errno", "ENOSYS", "-syscall", "bpf", "--", "sh", "-c", "echo ok"); err != nil || out != "ok\n" {
		t.Errorf("an unfiltered command: %v %q", err, out)
	}
	if out, err := tool(t, "-syscall", "nope", "--", "true"); err == nil || !strings.Contains(out, `unknown system call "nope"`) {
		t.Errorf("unknown system call: %v %q", err, out)
	}
}
