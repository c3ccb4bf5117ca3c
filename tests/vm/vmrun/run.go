package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// envVars collects repeated -e KEY=VAL flags: variables exported in the
// guest (a later KEY wins).
type envVars map[string]string

func (m envVars) String() string {
	var kvs []string
	for k, v := range m {
		kvs = append(kvs, k+"="+v)
	}
	sort.Strings(kvs)
	return strings.Join(kvs, ",")
}

func (m envVars) Set(kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok || k == "" || strings.ContainsAny(k, " \t'\"$=;") {
		return errors.New("want KEY=VAL")
	}
	m[k] = v
	return nil
}

// vmFlags are the flags run and matrix share.
type vmFlags struct {
	mem, smp int
	accel    string
	userland string
	env      envVars
}

func (f *vmFlags) register(fs *flag.FlagSet) {
	f.env = envVars{}
	def := os.Getenv("XDPLB_VM_USERLAND")
	if def == "" {
		def = defaultUserland
	}
	fs.StringVar(&f.userland, "userland", def, "root file system of the guest: a Debian release assembled from its packages (bullseye: glibc 2.31, like Ubuntu 20.04), or \"host\" (the host's /)")
	fs.IntVar(&f.mem, "mem", 1024, "guest memory in MiB")
	fs.IntVar(&f.smp, "smp", min(2, runtime.NumCPU()), "guest CPUs")
	fs.StringVar(&f.accel, "accel", "auto", "auto, kvm or tcg (auto picks KVM only if it really runs a guest)")
	fs.Var(f.env, "e", "KEY=VAL to export in the guest (repeatable)")
}

// autoAccel says whether the accelerator is vmrun's choice (neither -accel
// nor XDPLB_VM_ACCEL names one), so that a failed KVM boot may retry with TCG.
func (f *vmFlags) autoAccel() bool {
	return f.accel == "auto" && os.Getenv("XDPLB_VM_ACCEL") == ""
}

// splitDashDash splits args at the first "--".
func splitDashDash(args []string) (before, after []string, ok bool) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:], true
		}
	}
	return args, nil, false
}

func cmdRun(ctx context.Context, e *env, args []string) error {
	before, command, ok := splitDashDash(args)
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var vf vmFlags
	vf.register(fs)
	timeout := fs.Duration("timeout", 10*time.Minute, "bound on boot plus command")
	logPath := fs.String("log", "", "console log file (default: under $XDPLB_VM_CACHE/logs)")
	verbose := fs.Bool("v", false, "also print the boot messages")
	refresh := fs.Bool("refresh", false, "look for a newer kernel in the archive first")
	if err := fs.Parse(before); err != nil {
		return &exitError{code: exitUsage}
	}
	if !ok || len(command) == 0 || fs.NArg() != 1 {
		return &exitError{code: exitUsage, err: errors.New("usage: vmrun run [flags] KERNEL -- COMMAND...")}
	}
	c := &cache{env: e}
	k, err := c.resolve(ctx, fs.Arg(0), *refresh)
	if err != nil {
		return err
	}
	u, release, err := c.useUserland(ctx, vf.userland, *refresh)
	if err != nil {
		return err
	}
	defer release()
	accel, why, err := chooseAccel(vf.accel)
	if err != nil {
		return err
	}
	cwd, _ := os.Getwd()
	if *logPath == "" {
		*logPath = c.logFile("run", k.Release)
	}
	e.logf("booting %s on the %s userland with %s (%s), log %s", k, userlandName(u), accel, why, *logPath)
	blanks := 0
	spec := &bootSpec{
		kernel: k, userland: u, script: commandScript(command), env: vf.env, cwd: cwd,
		timeout: *timeout, memMB: vf.mem, smp: vf.smp, accel: accel, logPath: *logPath,
		onLine: func(line string, running bool) {
			// Blank lines are held back until more output follows, so the
			// one the guest prints before the exit marker does not show.
			switch {
			case !running && !*verbose:
			case strings.TrimSpace(line) == "":
				blanks++
			default:
				for ; blanks > 0; blanks-- {
					fmt.Fprintln(e.stdout)
				}
				fmt.Fprintln(e.stdout, line)
			}
		},
	}
	res, err := bootAuto(ctx, spec, vf.autoAccel(), e.logf)
	if err != nil {
		if res != nil {
			printTail(e.stderr, res, *logPath)
		}
		code := exitInfra
		if ctx.Err() != nil {
			code = 130
		}
		return &exitError{code: code, err: fmt.Errorf("%s: %w", k.Release, err)}
	}
	summary := fmt.Sprintf("%s (%s; %s): boot %.1fs, total %.1fs", k.Release, spec.accel, res.userland, res.boot.Seconds(), res.total.Seconds())
	switch {
	case res.timedOut:
		printTail(e.stderr, res, *logPath)
		return &exitError{code: exitTimeout, err: fmt.Errorf("%s: timed out after %s", summary, *timeout)}
	case res.exitCode < 0:
		printTail(e.stderr, res, *logPath)
		return &exitError{code: exitInfra, err: fmt.Errorf("%s: the guest gave no exit code (crash? see the log)", summary)}
	case res.exitCode != 0:
		printTail(e.stderr, res, *logPath)
		return &exitError{code: res.exitCode, err: fmt.Errorf("%s: command exited %d", summary, res.exitCode)}
	}
	e.logf("%s: command exited 0", summary)
	return nil
}

// useUserland brings the userland spec names into the cache and holds it
// for a boot (nil for the host's root).
func (c *cache) useUserland(ctx context.Context, spec string, refresh bool) (*Userland, func(), error) {
	if spec == hostUserland {
		return nil, func() {}, nil
	}
	u, err := c.userland(ctx, spec, refresh)
	if err != nil {
		return nil, nil, err
	}
	release, err := u.use()
	if err != nil {
		return nil, nil, fmt.Errorf("userland %s: %w", u, err)
	}
	return u, release, nil
}

func userlandName(u *Userland) string {
	if u == nil {
		return hostUserland
	}
	return u.Dist
}

func printTail(w io.Writer, res *bootResult, logPath string) {
	fmt.Fprintf(w, "---- last lines of the guest console (%s) ----\n%s\n---- end ----\n", logPath, res.tail)
}

// cmdAccel is "vmrun accel": which accelerator qemu would get, and why.
func cmdAccel(e *env) error {
	accel, why, err := chooseAccel("auto")
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s\t%s\n", accel, why)
	return nil
}
