package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// defaultKernels is the CI matrix: the host's own kernel, then Debian 11's
// 5.10 and Debian 12's 6.1 (no 5.4 kernel is in the reachable archive).
const defaultKernels = "host,bullseye,bookworm"

// testResult is one test command on one kernel.
type testResult struct {
	cmd     string
	ran     bool
	rc      int
	dur     time.Duration
	reports []string
	started time.Time
}

func (t *testResult) passed() bool { return t.ran && t.rc == 0 }

// kernelReport is one kernel's row of the matrix.
type kernelReport struct {
	spec   string
	kernel string // release and package
	accel  string // kvm or tcg; native on the host
	// userland names the guest's root file system and its libc (the
	// first line of ldd --version).
	userland string
	boot     time.Duration
	total    time.Duration
	logPath  string
	err      error // the kernel could not be fetched or booted
	tests    []*testResult
}

func cmdMatrix(ctx context.Context, e *env, args []string) error {
	before, tests, ok := splitDashDash(args)
	fs := flag.NewFlagSet("matrix", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var vf vmFlags
	vf.register(fs)
	def := os.Getenv("XDPLB_VM_KERNELS")
	if def == "" {
		def = defaultKernels
	}
	kernels := fs.String("kernels", def, "comma-separated kernels; \"host\" runs on the host's kernel without a VM")
	timeout := fs.Duration("timeout", 20*time.Minute, "bound on one kernel's boot plus all its tests")
	testTimeout := fs.Duration("test-timeout", 10*time.Minute, "bound on one test")
	quiet := fs.Bool("q", false, "do not stream the tests' output, print only the report")
	if err := fs.Parse(before); err != nil {
		return &exitError{code: exitUsage}
	}
	if !ok || len(tests) == 0 || fs.NArg() != 0 {
		return &exitError{code: exitUsage, err: errors.New("usage: vmrun matrix [flags] -- TEST... (each TEST a shell command, e.g. 'bin/vm/loader.test -test.v')")}
	}
	c := &cache{env: e}
	cwd, _ := os.Getwd()
	start := time.Now()
	var reports []*kernelReport
	for _, spec := range strings.Split(*kernels, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		kr := &kernelReport{spec: spec}
		for _, t := range tests {
			kr.tests = append(kr.tests, &testResult{cmd: t, rc: -1})
		}
		reports = append(reports, kr)
		var out io.Writer = e.stdout
		if *quiet {
			out = io.Discard
		}
		if spec == "host" {
			runHost(ctx, c, kr, vf.env, *testTimeout, out)
		} else {
			runVM(ctx, c, kr, cwd, &vf, *timeout, *testTimeout, out)
		}
		if ctx.Err() != nil {
			break
		}
	}
	passed, failed := printMatrix(e.stdout, reports, time.Since(start))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 || passed == 0 {
		return &exitError{code: 1}
	}
	return nil
}

// tracker turns console or output lines into test results.
type tracker struct {
	mu      sync.Mutex
	marks   markers
	kr      *kernelReport
	current *testResult
	prefix  string
	out     io.Writer
}

func (t *tracker) line(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := strings.Index(line, t.marks.begin); i >= 0 {
		if n, err := strconv.Atoi(strings.TrimSpace(line[i+len(t.marks.begin):])); err == nil && n >= 0 && n < len(t.kr.tests) {
			t.current = t.kr.tests[n]
			t.current.started = time.Now()
			fmt.Fprintf(t.out, "%s=== %s\n", t.prefix, t.current.cmd)
		}
		return
	}
	if i := strings.Index(line, t.marks.end); i >= 0 {
		f := strings.Fields(line[i+len(t.marks.end):])
		if len(f) == 2 && t.current != nil {
			if rc, err := strconv.Atoi(strings.TrimPrefix(f[1], "rc=")); err == nil {
				t.current.ran, t.current.rc = true, rc
				t.current.dur = time.Since(t.current.started)
			}
			t.current = nil
		}
		return
	}
	if strings.TrimSpace(line) == "" {
		return
	}
	if t.current != nil {
		if i := strings.Index(line, "REPORT:"); i >= 0 {
			t.current.reports = append(t.current.reports, strings.TrimSpace(line[i:]))
		}
	}
	fmt.Fprintf(t.out, "%s%s\n", t.prefix, line)
}

func runVM(ctx context.Context, c *cache, kr *kernelReport, cwd string, vf *vmFlags, timeout, testTimeout time.Duration, out io.Writer) {
	start := time.Now()
	defer func() { kr.total = time.Since(start) }()
	k, err := c.resolve(ctx, kr.spec, false)
	if err != nil {
		kr.err = err
		return
	}
	kr.kernel = k.String()
	u, release, err := c.useUserland(ctx, vf.userland, false)
	if err != nil {
		kr.err = err
		return
	}
	defer release()
	kr.userland = userlandName(u)
	accel, _, err := chooseAccel(vf.accel)
	if err != nil {
		kr.err = err
		return
	}
	kr.accel = accel
	kr.logPath = c.logFile("matrix", k.Release)
	tr := &tracker{kr: kr, marks: newMarkers(), prefix: "[" + kr.spec + "] ", out: out}
	fmt.Fprintf(out, "[%s] booting %s on the %s userland with %s, log %s\n", kr.spec, k, kr.userland, accel, kr.logPath)
	var tests []string
	for _, t := range kr.tests {
		tests = append(tests, t.cmd)
	}
	spec := &bootSpec{
		kernel: k, userland: u, script: matrixScript(tests, fmt.Sprintf("%ds", int(testTimeout.Seconds()))),
		env: vf.env, cwd: cwd, timeout: timeout, memMB: vf.mem, smp: vf.smp, accel: accel, logPath: kr.logPath,
		marks: tr.marks,
		onLine: func(line string, running bool) {
			if running {
				tr.line(line)
			}
		},
	}
	res, err := bootAuto(ctx, spec, vf.autoAccel(), c.env.logf)
	kr.accel = spec.accel
	if res != nil {
		kr.boot = res.boot
		if res.userland != "" {
			kr.userland += ": " + res.userland
		}
	}
	switch {
	case err != nil:
		kr.err = err
	case res.timedOut:
		kr.err = fmt.Errorf("timed out after %s", timeout)
	case res.exitCode < 0:
		kr.err = fmt.Errorf("the guest gave no exit code (kernel crash?)")
	case res.exitCode != 0: // the test script itself always exits 0
		kr.err = fmt.Errorf("the guest exited %d before the tests' end (init failed? see the log)", res.exitCode)
	}
	if kr.err != nil && res != nil {
		fmt.Fprintf(c.env.stderr, "[%s] %v\n", kr.spec, kr.err)
		printTail(c.env.stderr, res, kr.logPath)
	}
}

func runHost(ctx context.Context, c *cache, kr *kernelReport, vars map[string]string, testTimeout time.Duration, out io.Writer) {
	start := time.Now()
	defer func() { kr.total = time.Since(start) }()
	var uts syscall.Utsname
	syscall.Uname(&uts)
	var rel []byte
	for _, b := range uts.Release {
		if b == 0 {
			break
		}
		rel = append(rel, byte(b))
	}
	kr.kernel, kr.accel = string(rel), "native"
	kr.userland = hostUserland
	if out, err := exec.CommandContext(ctx, "ldd", "--version").Output(); err == nil {
		kr.userland += ": " + strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	kr.logPath = c.logFile("matrix", "host")
	logf, err := os.Create(kr.logPath)
	if err != nil {
		kr.err = err
		return
	}
	defer logf.Close()
	tr := &tracker{kr: kr, marks: newMarkers(), prefix: "[host] ", out: out}
	env := os.Environ()
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	for i, t := range kr.tests {
		tr.line(fmt.Sprintf("%s%d", tr.marks.begin, i))
		tctx, cancel := context.WithTimeout(ctx, testTimeout)
		cmd := exec.CommandContext(tctx, "/bin/sh", "-c", t.cmd)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 10 * time.Second
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64*1024), 1024*1024)
			for sc.Scan() {
				fmt.Fprintln(logf, sc.Text())
				tr.line(sc.Text())
			}
			io.Copy(io.Discard, pr)
		}()
		err := cmd.Run()
		pw.Close()
		<-done
		cancel()
		rc := 0
		if err != nil {
			rc = 1
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() > 0 {
				rc = ee.ExitCode()
			}
			if tctx.Err() == context.DeadlineExceeded {
				rc = exitTimeout
			}
		}
		tr.line(fmt.Sprintf("%s%d rc=%d", tr.marks.end, i, rc))
	}
}

// printMatrix prints the per-kernel report and the closing count line.
func printMatrix(w io.Writer, reports []*kernelReport, total time.Duration) (passed, failed int) {
	fmt.Fprintf(w, "\n==== kernel matrix ====\n")
	for _, kr := range reports {
		head := fmt.Sprintf("%-9s %s", kr.spec, kr.kernel)
		if kr.accel != "" {
			head += "  " + kr.accel
		}
		if kr.accel != "native" && kr.boot > 0 {
			head += fmt.Sprintf("  boot %.1fs", kr.boot.Seconds())
		}
		head += fmt.Sprintf("  total %.1fs", kr.total.Seconds())
		fmt.Fprintln(w, head)
		if kr.userland != "" {
			fmt.Fprintf(w, "          userland %s\n", kr.userland)
		}
		if kr.logPath != "" {
			fmt.Fprintf(w, "          log %s\n", kr.logPath)
		}
		if kr.err != nil {
			fmt.Fprintf(w, "  ERROR %v\n", kr.err)
		}
		for _, t := range kr.tests {
			verdict := "PASS"
			switch {
			case !t.ran:
				verdict = "NORUN"
			case t.rc == exitTimeout:
				verdict = "TIMEOUT"
			case t.rc != 0:
				verdict = fmt.Sprintf("FAIL(%d)", t.rc)
			}
			if t.passed() {
				passed++
			} else {
				failed++
			}
			fmt.Fprintf(w, "  %-8s %6.1fs  %s\n", verdict, t.dur.Seconds(), t.cmd)
			for _, r := range t.reports {
				fmt.Fprintf(w, "                    %s\n", r)
			}
		}
	}
	fmt.Fprintf(w, "matrix time %.1fs\n", total.Seconds())
	fmt.Fprintf(w, "vm-matrix: %d passed, %d failed\n", passed, failed)
	return passed, failed
}
