package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bootSpec says what to boot and what to run in it.
type bootSpec struct {
	kernel *Kernel
	// userland is the root file system the guest boots; nil boots the
	// host's root (and the current directory is already in it).
	userland *Userland
	script   string            // the guest's cmd.sh
	env      map[string]string // exported in the guest
	cwd      string            // the command's directory (a host path, the same in the guest)
	timeout  time.Duration     // for the whole boot
	memMB    int
	smp      int
	accel    string  // "kvm" or "tcg"
	image    string  // what qemu boots: the bzImage, or vmlinux (ELF, PVH entry)
	logPath  string  // the whole serial console goes here
	marks    markers // made by boot if empty
	// onLine sees each console line (without "\r\n") as it arrives, but
	// for the ready and exit markers, with whether the command is running
	// (between them).
	onLine func(line string, running bool)
}

// bootResult is what came back from the guest.
type bootResult struct {
	exitCode int // the command's; -1 if the guest printed none
	timedOut bool
	userland string        // the first line of the guest's ldd --version
	boot     time.Duration // qemu start → READY
	total    time.Duration
	tail     *ring // last console lines, for error messages
}

// boot starts qemu, waits for the command's exit code on the serial console
// or the timeout, and always leaves qemu dead and its files removed.
func boot(ctx context.Context, spec *bootSpec) (*bootResult, error) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, errors.New("qemu-system-x86_64 not found: run tests/vm/deps.sh (apt-get install qemu-system-x86)")
	}
	busybox, err := staticBusybox()
	if err != nil {
		return nil, err
	}
	removeStaleRunDirs()
	tmp, err := os.MkdirTemp("", "xdplb-vm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}

	if spec.marks.nonce == "" {
		spec.marks = newMarkers()
	}
	mk := spec.marks
	vars := map[string]string{"XDPLB_VM_CWD": spec.cwd, "XDPLB_VM_KERNEL": spec.kernel.Release, "XDPLB_VM_NONCE": mk.nonce}
	for k, v := range spec.env {
		vars[k] = v
	}
	config := map[string]string{"XDPLB_VM_MODDIR": spec.kernel.ModDir(), "XDPLB_VM_BUSYBOX": busybox, "XDPLB_VM_NONCE": mk.nonce, "XDPLB_VM_ROOT_TAG": tagHostRoot}
	vars["XDPLB_VM_USERLAND"] = hostUserland
	if spec.userland != nil {
		if spec.cwd == "" || spec.cwd == "/" {
			return nil, errors.New("a guest on a userland shares the current directory: run from the repository, not /")
		}
		config["XDPLB_VM_ROOT_TAG"], config["XDPLB_VM_WORK"], config["XDPLB_VM_MODULES_TAG"] = tagUserland, spec.cwd, tagModules
		vars["XDPLB_VM_USERLAND"] = spec.userland.Dist
	}
	ir := &initramfs{kernel: spec.kernel, busybox: busybox, files: map[string]string{
		"init":               initScript,
		"xdplb-vm/config":    envFile(config),
		"xdplb-vm/stage2.sh": stage2Script,
		"xdplb-vm/env":       envFile(vars),
		"xdplb-vm/cmd.sh":    spec.script,
	}}
	initrd := filepath.Join(tmp, "initrd.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = ir.write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}

	if err := os.MkdirAll(filepath.Dir(spec.logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(spec.logPath)
	if err != nil {
		return nil, fmt.Errorf("create console log: %w", err)
	}
	defer logf.Close()

	if spec.image == "" {
		spec.image = bootImage(spec.kernel)
	}
	args := qemuArgs(spec, initrd)
	fmt.Fprintf(logf, "# %s %s\n", qemu, strings.Join(args, " "))
	cmd := exec.Command(qemu, args...)
	cmd.Stdin = nil // /dev/null: the guest reads nothing from us
	qemuErr := newQemuStderr()
	cmd.Stderr = qemuErr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Own process group, and killed if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	res := &bootResult{exitCode: -1, tail: newRing(60)}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	pid := cmd.Process.Pid
	killed := false
	kill := func() {
		if !killed {
			killed = true
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// From here on, every return path kills qemu by its PID and reaps it.
	waitDone := make(chan error, 1)
	var readWG sync.WaitGroup
	exitSeen := make(chan struct{})
	readWG.Add(1)
	go func() {
		defer readWG.Done()
		br := bufio.NewReaderSize(stdout, 64*1024)
		running := false
		var once sync.Once
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				line = strings.TrimRight(line, "\r\n")
				line = strings.ReplaceAll(line, "\r", "")
				fmt.Fprintf(logf, "%8.3f| %s\n", time.Since(start).Seconds(), line)
				res.tail.add(line)
				marker := true
				if i := strings.Index(line, mk.userland); i >= 0 {
					res.userland = strings.TrimSpace(line[i+len(mk.userland):])
				} else if i := strings.Index(line, mk.exit); i >= 0 {
					running = false
					if n, err := strconv.Atoi(strings.TrimSpace(line[i+len(mk.exit):])); err == nil {
						res.exitCode = n
						once.Do(func() { close(exitSeen) })
					}
				} else if !running && strings.Contains(line, mk.ready) {
					running = true
					res.boot = time.Since(start)
				} else {
					marker = false
				}
				if spec.onLine != nil && !marker {
					spec.onLine(line, running)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		readWG.Wait() // qemu's stdout closed: qemu is exiting
		waitDone <- cmd.Wait()
	}()

	timer := time.NewTimer(spec.timeout)
	defer timer.Stop()
	var grace <-chan time.Time
	var runErr error
	done := ctx.Done()
	kvmFailed := qemuErr.kvmFailed
wait:
	for {
		select {
		case err := <-waitDone:
			waitDone = nil
			if err != nil && !killed && res.exitCode < 0 {
				runErr = fmt.Errorf("qemu exited: %w: %s", err, strings.TrimSpace(qemuErr.String()))
			}
			break wait
		case <-exitSeen:
			exitSeen = nil
			// The guest powers itself off; don't wait long for it.
			grace = time.After(15 * time.Second)
		case <-grace:
			kill()
		case <-timer.C:
			res.timedOut = true
			kill()
		case <-kvmFailed:
			// qemu stops the guest but does not exit.
			kvmFailed = nil
			kill()
			runErr = errors.New("qemu: KVM internal error (see the log)")
		case <-done:
			done = nil
			kill()
			runErr = ctx.Err()
		}
	}
	if waitDone != nil {
		kill()
		<-waitDone
	}
	res.total = time.Since(start)
	if e := qemuErr.String(); e != "" {
		fmt.Fprintf(logf, "# qemu stderr:\n%s", e)
	}
	fmt.Fprintf(logf, "# exit=%d timed_out=%v boot=%s total=%s accel=%s\n", res.exitCode, res.timedOut, res.boot.Round(time.Millisecond), res.total.Round(time.Millisecond), spec.accel)
	return res, runErr
}

func qemuArgs(spec *bootSpec, initrd string) []string {
	accel := []string{"-accel", "tcg,thread=multi", "-cpu", "max"}
	if spec.accel == "kvm" {
		accel = []string{"-accel", "kvm", "-cpu", "host"}
	}
	cmdline := strings.Join([]string{
		"console=ttyS0", "quiet", "panic=-1", "rdinit=/init",
		"random.trust_cpu=on", "mitigations=off", "nokaslr", "tsc=reliable",
		"i8042.noaux", "i8042.nokbd", "i8042.nopnp", "8250.nr_uarts=1",
	}, " ")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "pc", "-m", strconv.Itoa(spec.memMB), "-smp", strconv.Itoa(spec.smp),
	}
	args = append(args, accel...)
	args = append(args,
		"-kernel", spec.image,
		"-initrd", initrd,
		"-append", cmdline,
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-monitor", "none",
	)
	share := func(path, tag string) {
		path = strings.ReplaceAll(path, ",", ",,") // qemu's escape
		args = append(args, "-virtfs", "local,path="+path+",mount_tag="+tag+",security_model=none,readonly=on,multidevs=remap")
	}
	if spec.userland == nil {
		share("/", tagHostRoot)
	} else {
		share(spec.userland.Root(), tagUserland)
		share(spec.cwd, tagWork)
		share(spec.kernel.ModDir(), tagModules)
	}
	args = append(args,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
	)
	return args
}

// qemuStderr keeps what qemu writes to its stderr, and closes kvmFailed
// when qemu reports a KVM internal error: a /dev/kvm that runs the probe's
// vCPU may still fail on the real kernel (PVM does), and qemu then stops the
// guest without exiting.
type qemuStderr struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	kvmFailed chan struct{}
	once      sync.Once
}

func newQemuStderr() *qemuStderr { return &qemuStderr{kvmFailed: make(chan struct{})} }

func (q *qemuStderr) Write(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.buf.Write(p)
	if bytes.Contains(q.buf.Bytes(), []byte("KVM internal error")) {
		q.once.Do(func() { close(q.kvmFailed) })
	}
	return len(p), nil
}

func (q *qemuStderr) String() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.buf.String()
}

// ring keeps the last n lines.
type ring struct {
	mu    sync.Mutex
	lines []string
	n     int
}

func newRing(n int) *ring { return &ring{n: n} }

func (r *ring) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, s)
	if len(r.lines) > r.n {
		r.lines = r.lines[len(r.lines)-r.n:]
	}
}

func (r *ring) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// removeStaleRunDirs deletes the temp dirs of vmrun processes that were
// killed before they could clean up.
func removeStaleRunDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "xdplb-vm-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// bootAuto boots spec; when KVM was picked automatically and qemu failed
// before the guest reached its command, it boots again with TCG, since a
// /dev/kvm that passes the probe may still refuse qemu's guest.
func bootAuto(ctx context.Context, spec *bootSpec, auto bool, logf func(string, ...any)) (*bootResult, error) {
	res, err := boot(ctx, spec)
	if spec.accel != "kvm" || !auto || ctx.Err() != nil || res == nil || res.boot > 0 || res.timedOut {
		return res, err
	}
	if err == nil && res.exitCode >= 0 {
		return res, err
	}
	logf("qemu with KVM failed before the guest started (%v): booting again with TCG", err)
	spec.accel = "tcg"
	return boot(ctx, spec)
}
