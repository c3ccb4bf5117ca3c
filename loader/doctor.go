package loader

import (
	"errors"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The two BPF questions `xdplb doctor` asks, here because the loader owns
// every BPF system call. Neither loads, pins nor attaches anything.

// ProbeBPF makes the smallest bpf(2) call: BPF_PROG_LOAD without a
// program, which a kernel with the call refuses with EINVAL (or EFAULT,
// E2BIG). It returns why the call is missing or not allowed, or nil.
func ProbeBPF() error {
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, 0, 0)
	switch errno {
	case unix.ENOSYS:
		return errors.New("no bpf(2) system call (a kernel without CONFIG_BPF_SYSCALL)")
	case unix.EPERM:
		return errors.New("bpf(2) not allowed: run as root (CAP_SYS_ADMIN, or CAP_BPF and CAP_NET_ADMIN)")
	}
	return nil
}

// ProgramName is the name of the loaded program of that id (xdplb's are
// xdplb_xdp and xdplb_tc).
func ProgramName(id uint32) (string, error) {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return "", err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return "", err
	}
	return info.Name, nil
}
