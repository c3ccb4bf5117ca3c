package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"
)

// KVM ioctls (linux/kvm.h), for the probe below.
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmSetUserMemoryRegion = 0x4020AE46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	kvmRun                 = 0xAE80
	kvmSetRegs             = 0x4090AE82 // _IOW(KVMIO, 0x82, struct kvm_regs)
	kvmGetSregs            = 0x8138AE83 // _IOR(KVMIO, 0x83, struct kvm_sregs)
	kvmSetSregs            = 0x4138AE84 // _IOW(KVMIO, 0x84, struct kvm_sregs)
	kvmExitHLT             = 5
)

// kvmWorks says whether /dev/kvm can run an ordinary real-mode guest: it
// makes a VM with one page holding "hlt" and expects the vCPU to exit with
// KVM_EXIT_HLT. A /dev/kvm that only runs special guests (PVM) fails here,
// so qemu falls back to TCG instead of failing to boot.
func kvmWorks() (bool, string) {
	if pvmOnly("/sys/module") {
		return false, "/dev/kvm is PVM (kvm_pvm, no kvm_intel or kvm_amd): it runs only PVM guest kernels"
	}
	type result struct {
		ok  bool
		why string
	}
	ch := make(chan result, 1)
	go func() {
		err := kvmProbe()
		if err != nil {
			ch <- result{false, err.Error()}
			return
		}
		ch <- result{true, "KVM ran a test vCPU"}
	}()
	select {
	case r := <-ch:
		return r.ok, r.why
	case <-time.After(3 * time.Second):
		return false, "KVM test vCPU did not halt within 3s"
	}
}

// pvmOnly says whether the kernel's KVM is PVM alone (module kvm_pvm, and
// neither kvm_intel nor kvm_amd): PVM runs the probe's vCPU but fails on a
// generic kernel with "KVM internal error" after a minute of emulation.
func pvmOnly(sysModule string) bool {
	has := func(m string) bool { _, err := os.Stat(filepath.Join(sysModule, m)); return err == nil }
	return has("kvm_pvm") && !has("kvm_intel") && !has("kvm_amd")
}

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func kvmProbe() error {
	kvm, err := syscall.Open("/dev/kvm", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer syscall.Close(kvm)
	if v, err := ioctl(kvm, kvmGetAPIVersion, 0); err != nil || v != 12 {
		return fmt.Errorf("KVM_GET_API_VERSION = %d, %v", v, err)
	}
	vmfd, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	defer syscall.Close(int(vmfd))

	mem, err := syscall.Mmap(-1, 0, 0x1000, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	defer syscall.Munmap(mem)
	mem[0] = 0xf4 // hlt
	region := struct {
		slot, flags                    uint32
		guestPhys, size, userspaceAddr uint64
	}{0, 0, 0x1000, 0x1000, uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := ioctl(int(vmfd), kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	vcpu, err := ioctl(int(vmfd), kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	defer syscall.Close(int(vcpu))
	size, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil || size < 12 {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE = %d, %v", size, err)
	}
	run, err := syscall.Mmap(int(vcpu), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap kvm_run: %w", err)
	}
	defer syscall.Munmap(run)

	var sregs [312]byte // struct kvm_sregs; cs (struct kvm_segment) comes first
	if _, err := ioctl(int(vcpu), kvmGetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	clear(sregs[0:8])   // cs.base
	clear(sregs[12:14]) // cs.selector
	if _, err := ioctl(int(vcpu), kvmSetSregs, uintptr(unsafe.Pointer(&sregs))); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	var regs [18]uint64 // struct kvm_regs: rax..r15, rip, rflags
	regs[16] = 0x1000   // rip
	regs[17] = 0x2      // rflags
	if _, err := ioctl(int(vcpu), kvmSetRegs, uintptr(unsafe.Pointer(&regs))); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	if _, err := ioctl(int(vcpu), kvmRun, 0); err != nil {
		return fmt.Errorf("KVM_RUN: %w", err)
	}
	if reason := *(*uint32)(unsafe.Pointer(&run[8])); reason != kvmExitHLT {
		return fmt.Errorf("KVM_RUN exited with reason %d, want %d (HLT)", reason, kvmExitHLT)
	}
	return nil
}

// chooseAccel resolves "auto" (or XDPLB_VM_ACCEL) to kvm or tcg.
func chooseAccel(want string) (accel, why string, err error) {
	if want == "" || want == "auto" {
		want = os.Getenv("XDPLB_VM_ACCEL")
	}
	switch want {
	case "", "auto":
		ok, why := kvmWorks()
		if ok {
			return "kvm", why, nil
		}
		return "tcg", "KVM unusable (" + why + ")", nil
	case "kvm":
		if ok, why := kvmWorks(); !ok {
			return "", "", fmt.Errorf("-accel kvm: %s", why)
		}
		return "kvm", "asked for", nil
	case "tcg":
		return "tcg", "asked for", nil
	}
	return "", "", errors.New("accel must be auto, kvm or tcg")
}
