// Command nosyscall runs a command on a kernel that seems to lack some
// system calls: a seccomp filter makes each named system call fail with the
// errno given, for the command and everything it starts. The tests use it
// to show what xdplb says on a kernel without the BPF system call (ENOSYS,
// as CONFIG_BPF_SYSCALL=n gives) or where it may not mount (EPERM, as in a
// container without CAP_SYS_ADMIN), without such a kernel.
//
//	nosyscall -errno ENOSYS -syscall bpf -- xdplb run ...
//	nosyscall -errno EPERM -syscall mount -- xdplb run --bpffs /tmp/x ...
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	if err := nosyscall(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "nosyscall:", err)
		os.Exit(2)
	}
}

// syscalls this tool knows by name, for this architecture.
var syscalls = map[string]uintptr{
	"bpf":     unix.SYS_BPF,
	"mount":   unix.SYS_MOUNT,
	"unshare": unix.SYS_UNSHARE,
}

var errnos = map[string]syscall.Errno{"ENOSYS": unix.ENOSYS, "EPERM": unix.EPERM, "EACCES": unix.EACCES, "EROFS": unix.EROFS}

// auditArch is the seccomp_data.arch value of this architecture.
var auditArch = map[string]uint32{"amd64": 0xc000003e, "arm64": 0xc00000b7}

func nosyscall(args []string) error {
	fs := flag.NewFlagSet("nosyscall", flag.ContinueOnError)
	errName := fs.String("errno", "ENOSYS", "errno the system calls fail with")
	names := fs.String("syscall", "", "comma-separated system calls to fail (bpf, mount, unshare)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 || *names == "" {
		return errors.New("usage: nosyscall -errno ENOSYS -syscall bpf[,mount] -- COMMAND [ARG...]")
	}
	errno, ok := errnos[*errName]
	if !ok {
		return fmt.Errorf("unknown errno %q", *errName)
	}
	var nrs []uint32
	for _, n := range strings.Split(*names, ",") {
		nr, ok := syscalls[n]
		if !ok {
			return fmt.Errorf("unknown system call %q", n)
		}
		nrs = append(nrs, uint32(nr))
	}
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("no seccomp architecture for %s", runtime.GOARCH)
	}
	path, err := exec.LookPath(fs.Arg(0))
	if err != nil {
		return err
	}
	if err := install(filter(arch, nrs, errno)); err != nil {
		return err
	}
	return syscall.Exec(path, fs.Args(), os.Environ())
}

// filter is the classic BPF program: other architectures and other system
// calls pass; the named ones return errno.
func filter(arch uint32, nrs []uint32, errno syscall.Errno) []unix.SockFilter {
	const (
		ldW  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
		offN = 0 // offsetof(struct seccomp_data, nr)
		offA = 4 // offsetof(struct seccomp_data, arch)
	)
	n := uint8(len(nrs))
	prog := []unix.SockFilter{
		{Code: ldW, K: offA},
		{Code: jeq, K: arch, Jt: 0, Jf: n + 1}, // another arch: allow
		{Code: ldW, K: offN},
	}
	for i, nr := range nrs {
		// Match: jump to the errno return after the remaining checks and the allow.
		prog = append(prog, unix.SockFilter{Code: jeq, K: nr, Jt: n - uint8(i), Jf: 0})
	}
	prog = append(prog,
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(errno)&unix.SECCOMP_RET_DATA},
	)
	return prog
}

// install sets no_new_privs and the filter on every thread of this process;
// exec keeps both.
func install(prog []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if e != 0 {
		return fmt.Errorf("seccomp(SET_MODE_FILTER): %w", e)
	}
	return nil
}
