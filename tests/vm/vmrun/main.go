// Command vmrun boots Debian's generic kernels under qemu with the host's root
// file system shared read-only over 9p (a tmpfs overlay on top makes it
// writable inside the guest), runs a command or a list of test binaries as
// root in the guest, and reports the result with the command's exit code.
//
//	vmrun fetch [-refresh] KERNEL...           download and unpack kernels into the cache
//	vmrun run [flags] KERNEL -- COMMAND...     boot KERNEL and run COMMAND in it
//	vmrun matrix [flags] -- TEST...            run TESTs on every kernel of the matrix
//	vmrun accel                                say which accelerator qemu would use
//
// KERNEL is a Debian release or its kernel series (bullseye or 5.10, bookworm
// or 6.1, trixie or 6.12), a kernel release (5.10.0-46-amd64), a package name
// (linux-image-6.1.0-56-amd64), or a path to a linux-image .deb. The matrix
// also takes "host": the tests run on the host's own kernel, without a VM.
//
// See tests/vm/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := vmrun(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes of vmrun itself (a guest command's own code is passed through).
const (
	exitUsage   = 2
	exitInfra   = 125 // the VM could not be set up or gave no exit code
	exitTimeout = 124 // same as timeout(1)
)

// exitError carries the exit code vmrun should end with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func vmrun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	env := newEnv(stdout, stderr)
	var err error
	switch args[0] {
	case "fetch":
		err = cmdFetch(ctx, env, args[1:])
	case "run":
		err = cmdRun(ctx, env, args[1:])
	case "matrix":
		err = cmdMatrix(ctx, env, args[1:])
	case "userland":
		err = cmdUserland(ctx, env, args[1:])
	case "accel":
		err = cmdAccel(env)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "vmrun: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "vmrun: %v\n", err)
	if ctx.Err() != nil {
		return 130
	}
	return exitInfra
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  vmrun fetch [-refresh] KERNEL...
  vmrun run [-refresh] [-timeout 10m] [-mem 1024] [-smp 2] [-accel auto|kvm|tcg] [-log FILE] [-e KEY=VAL] [-v] KERNEL -- COMMAND...
  vmrun matrix [-kernels host,bullseye,bookworm] [-timeout 20m] [-test-timeout 10m] [-log-dir DIR] [-q] -- TEST...
  vmrun accel

KERNEL: bullseye|5.10, bookworm|6.1, trixie|6.12, a release (5.10.0-46-amd64),
        a package (linux-image-6.1.0-56-amd64) or a linux-image .deb file.
TEST:   a shell command run as root in the guest from the current directory,
        e.g. 'bin/vm/loader.test -test.v'. Lines containing "REPORT:" are collected.
Env:    XDPLB_VM_CACHE (default /var/cache/xdplb-vm), XDPLB_VM_ACCEL (auto|kvm|tcg),
        XDPLB_VM_MIRROR, XDPLB_VM_SECURITY_MIRROR (default: taken from the host's apt sources).
`)
}

// env is what the subcommands share: where the cache is and where to print.
type env struct {
	stdout, stderr io.Writer
	cacheDir       string
}

func newEnv(stdout, stderr io.Writer) *env {
	dir := os.Getenv("XDPLB_VM_CACHE")
	if dir == "" {
		dir = "/var/cache/xdplb-vm"
	}
	return &env{stdout: stdout, stderr: stderr, cacheDir: dir}
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "vmrun: "+format+"\n", args...)
}
