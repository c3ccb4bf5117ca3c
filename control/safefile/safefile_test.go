package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRead: what an operator's mistake or an attacker's path can name.
// Every refusal returns at once: a FIFO with no writer and /dev/zero are
// the two that hung and grew the daemon (issue 10).
func TestRead(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "token")
	os.WriteFile(regular, []byte("secret\n"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(regular, link)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero")
	os.Symlink("/dev/zero", zero)
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 2048), 0o600)

	cases := []struct {
		name, path string
		want       string // "" = the contents of regular
		is         error
	}{
		{"regular file", regular, "", nil},
		{"symbolic link to a regular file (a Kubernetes secret mount)", link, "", nil},
		{"fifo without a writer", fifo, "a FIFO", ErrNotRegular},
		{"symbolic link to /dev/zero", zero, "a character device", ErrNotRegular},
		{"directory", dir, "a directory", ErrNotRegular},
		{"over the cap", big, "2048 bytes, at most 1024", ErrTooLarge},
		{"missing", filepath.Join(dir, "nope"), "no such file", os.ErrNotExist},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			b, err := Read(c.path, 1024, time.Second)
			if took := time.Since(start); took > 500*time.Millisecond {
				t.Errorf("took %v: a refusal must not wait", took)
			}
			if c.is == nil {
				if err != nil || string(b) != "secret\n" {
					t.Fatalf("got %q, %v", b, err)
				}
				return
			}
			if err == nil || !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Fatalf("err %v; want %v saying %q and naming the path", err, c.is, c.want)
			}
		})
	}
}
