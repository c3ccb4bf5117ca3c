package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLoadOrder(t *testing.T) {
	dep := strings.Join([]string{
		"kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz kernel/fs/fscache/fscache.ko.xz",
		"kernel/net/9p/9pnet.ko.xz:",
		"kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz",
		"kernel/fs/netfs/netfs.ko.xz:",
		"kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz",
		"kernel/drivers/virtio/virtio_ring.ko.xz:",
		"kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/char/hw_random/rng-core.ko.xz",
		"kernel/drivers/char/hw_random/rng-core.ko.xz:",
	}, "\n")
	builtin := "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio.ko\n"
	idx, err := parseModulesDep(strings.NewReader(dep), strings.NewReader(builtin))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name               string
		required, optional []string
		want               []string
		wantErr            string
	}{
		{"deps first, builtins skipped", []string{"virtio_pci", "9pnet_virtio", "9p"}, nil,
			[]string{"9pnet", "virtio_ring", "9pnet_virtio", "netfs", "fscache", "9p"}, ""},
		{"dash in file name", nil, []string{"virtio-rng"}, []string{"rng_core", "virtio_rng"}, ""},
		{"missing optional skipped", []string{"9pnet"}, []string{"overlay"}, []string{"9pnet"}, ""},
		{"missing required fails", []string{"overlay"}, nil, nil, "neither in modules.dep nor built in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := idx.loadOrder(tt.required, tt.optional)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

// readCpio parses a newc archive back into name → content.
func readCpio(t *testing.T, b []byte) map[string]string {
	t.Helper()
	files := map[string]string{}
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		size, namesize := field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off = align(off + 110 + namesize)
		if name == "TRAILER!!!" {
			return files
		}
		files[name] = string(b[off : off+size])
		off = align(off + size)
	}
}

func TestCpio(t *testing.T) {
	var buf bytes.Buffer
	cw := newCpio(&buf)
	cw.dir("bin", 0o755)
	cw.file("bin/hello", 0o755, []byte("hello, world"))
	cw.symlink("bin/sh", "busybox")
	cw.file("odd", 0o644, []byte("x"))
	if err := cw.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
	got := readCpio(t, buf.Bytes())
	want := map[string]string{"bin": "", "bin/hello": "hello, world", "bin/sh": "busybox", "odd": "x"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("files = %q, want %q", got, want)
	}
	// Cross-check with a real cpio reader when the host has one.
	if bb, err := exec.LookPath("busybox"); err == nil {
		cmd := exec.Command(bb, "cpio", "-t")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("busybox cpio -t: %v: %s", err, out)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if !strings.HasSuffix(line, " blocks") {
				got = append(got, line)
			}
		}
		if !reflect.DeepEqual(got, []string{"bin", "bin/hello", "bin/sh", "odd"}) {
			t.Errorf("busybox cpio -t lists %v", got)
		}
	}
}

func TestKernelDep(t *testing.T) {
	tests := map[string]string{
		"linux-image-6.1.0-56-amd64 (= 6.1.192-2)":                            "linux-image-6.1.0-56-amd64",
		"linux-image-5.10.0-46-amd64":                                         "linux-image-5.10.0-46-amd64",
		"linux-image-6.1.0-56-cloud-amd64, linux-image-6.1.0-56-amd64 (>= 1)": "linux-image-6.1.0-56-amd64",
		"linux-headers-6.1.0-56-amd64":                                        "",
	}
	for in, want := range tests {
		if got := kernelDep(in); got != want {
			t.Errorf("kernelDep(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKeepPath(t *testing.T) {
	tests := []struct {
		in, out string
		keep    bool
	}{
		{"./boot/vmlinuz-6.1.0-56-amd64", "boot/vmlinuz-6.1.0-56-amd64", true},
		{"./boot/System.map-6.1.0-56-amd64", "", false},
		{"./lib/modules/6.1.0-56-amd64/kernel/drivers/net/veth.ko", "lib/modules/6.1.0-56-amd64/kernel/drivers/net/veth.ko", true},
		{"./usr/lib/modules/6.12.1-amd64/kernel/fs/9p/9p.ko.xz", "lib/modules/6.12.1-amd64/kernel/fs/9p/9p.ko.xz", true},
		{"./lib/modules/6.1.0-56-amd64/kernel/drivers/gpu/drm/drm.ko", "", false},
		{"./lib/modules/6.1.0-56-amd64/kernel/drivers/net/ethernet/intel/e1000/e1000.ko", "", false},
		{"./lib/modules/6.1.0-56-amd64/modules.builtin", "lib/modules/6.1.0-56-amd64/modules.builtin", true},
		{"./usr/share/doc/linux-image/changelog.gz", "", false},
	}
	for _, tt := range tests {
		out, keep := keepPath(tt.in)
		if out != tt.out || keep != tt.keep {
			t.Errorf("keepPath(%q) = %q, %v; want %q, %v", tt.in, out, keep, tt.out, tt.keep)
		}
	}
}

func TestCommandScript(t *testing.T) {
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"uname -r; ls /sys/fs/bpf"}, "uname -r; ls /sys/fs/bpf\n"},
		{[]string{"sh", "-c", "echo 'a b'"}, `sh -c 'echo '\''a b'\'''` + "\n"},
		{[]string{"bin/vm/x.test", "-test.run", "Foo$"}, "bin/vm/x.test -test.run 'Foo$'\n"},
	}
	for _, tt := range tests {
		if got := commandScript(tt.argv); got != tt.want {
			t.Errorf("commandScript(%q) = %q, want %q", tt.argv, got, tt.want)
		}
	}
	// The quoting must survive a real shell.
	out, err := exec.Command("/bin/sh", "-c", commandScript([]string{"printf", "%s|", "a b", "it's", "$HOME"})).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "a b|it's|$HOME|" {
		t.Errorf("shell saw %q", out)
	}
}

func TestMatrixScriptAndTracker(t *testing.T) {
	if _, err := exec.LookPath("timeout"); err != nil {
		t.Skip("no timeout(1)")
	}
	tests := []string{"echo '    x_test.go:1: REPORT: attach=netlink'; exit 0", "echo out; exit 3", "true"}
	marks := newMarkers()
	cmd := exec.Command("/bin/sh", "-c", matrixScript(tests, "10s"))
	cmd.Env = append(os.Environ(), "XDPLB_VM_NONCE="+marks.nonce)
	out, _ := cmd.CombinedOutput()
	kr := &kernelReport{}
	for _, c := range tests {
		kr.tests = append(kr.tests, &testResult{cmd: c, rc: -1})
	}
	tr := &tracker{kr: kr, marks: marks, out: io.Discard}
	// A marker from another boot (another nonce) is only output.
	tr.line(newMarkers().end + "0 rc=9")
	for _, line := range strings.Split(string(out), "\n") {
		tr.line(line)
	}
	wantRC := []int{0, 3, 0}
	for i, r := range kr.tests {
		if !r.ran || r.rc != wantRC[i] {
			t.Errorf("test %d: ran=%v rc=%d, want rc %d\n%s", i, r.ran, r.rc, wantRC[i], out)
		}
	}
	if want := []string{"REPORT: attach=netlink"}; !reflect.DeepEqual(kr.tests[0].reports, want) {
		t.Errorf("reports = %q, want %q", kr.tests[0].reports, want)
	}
	var buf bytes.Buffer
	passed, failed := printMatrix(&buf, []*kernelReport{kr}, time.Second)
	if passed != 2 || failed != 1 || !strings.Contains(buf.String(), "vm-matrix: 2 passed, 1 failed") {
		t.Errorf("printMatrix = %d, %d:\n%s", passed, failed, buf.String())
	}
}

// TestUsageErrors: wrong words end with exit code 2 and a message, before
// any kernel is looked for.
func TestUsageErrors(t *testing.T) {
	t.Setenv("XDPLB_VM_CACHE", filepath.Join(t.TempDir(), "cache"))
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{nil, "usage:"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"fetch"}, "name at least one kernel"},
		{[]string{"run", "bullseye"}, "usage: vmrun run"},
		{[]string{"run", "bullseye", "--"}, "usage: vmrun run"},
		{[]string{"run", "-e", "NOVALUE", "bullseye", "--", "true"}, `invalid value "NOVALUE" for flag -e: want KEY=VAL`},
		{[]string{"run", "-e", "A B=1", "bullseye", "--", "true"}, "want KEY=VAL"},
		{[]string{"run", "-nosuchflag", "bullseye", "--", "true"}, "flag provided but not defined"},
		{[]string{"matrix", "--"}, "usage: vmrun matrix"},
		{[]string{"matrix", "-e", "=x", "--", "true"}, "want KEY=VAL"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := vmrun(context.Background(), tt.args, &stdout, &stderr); code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, stderr.String())
			}
		})
	}
	if _, err := os.Stat(os.Getenv("XDPLB_VM_CACHE")); err == nil {
		t.Error("a usage error made the cache")
	}
}

func TestEnvVars(t *testing.T) {
	var vf vmFlags
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	vf.register(fs)
	if err := fs.Parse([]string{"-e", "A=1", "-e", "B=x=y", "-e", "A=2", "-e", "EMPTY="}); err != nil {
		t.Fatal(err)
	}
	want := envVars{"A": "2", "B": "x=y", "EMPTY": ""}
	if !reflect.DeepEqual(vf.env, want) {
		t.Errorf("env = %q, want %q", vf.env, want)
	}
	if got := vf.env.String(); got != "A=2,B=x=y,EMPTY=" {
		t.Errorf("String = %q", got)
	}
}

func TestQemuStderrSeesKVMFailure(t *testing.T) {
	q := newQemuStderr()
	q.Write([]byte("qemu-system-x86_64: warning: host doesn't support requested feature\n"))
	select {
	case <-q.kvmFailed:
		t.Fatal("kvmFailed on a warning")
	default:
	}
	// The message may arrive in pieces, and more follows it.
	for _, part := range []string{"KVM inter", "nal error. Suberror: 1\n", "emulation failure\n", "KVM internal error again\n"} {
		q.Write([]byte(part))
	}
	select {
	case <-q.kvmFailed:
	default:
		t.Fatal("kvmFailed not closed after a KVM internal error")
	}
	if !strings.HasSuffix(q.String(), "emulation failure\nKVM internal error again\n") {
		t.Errorf("kept %q", q.String())
	}
}

func TestPVMOnly(t *testing.T) {
	tests := []struct {
		modules []string
		want    bool
	}{
		{[]string{"kvm", "kvm_pvm"}, true},
		{[]string{"kvm", "kvm_pvm", "kvm_intel"}, false},
		{[]string{"kvm", "kvm_amd"}, false},
		{[]string{"kvm", "kvm_intel"}, false},
		{nil, false},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		for _, m := range tt.modules {
			os.Mkdir(filepath.Join(dir, m), 0o755)
		}
		if got := pvmOnly(dir); got != tt.want {
			t.Errorf("pvmOnly with %v = %v, want %v", tt.modules, got, tt.want)
		}
	}
}

// The guest's shares: the host's / alone, or a userland's root, the
// current directory and the kernel's modules.
func TestQemuArgsShares(t *testing.T) {
	k := &Kernel{Release: "5.4.286", Dir: "/c/kernels/5.4.286"}
	virtfs := func(spec *bootSpec) []string {
		var v []string
		args := qemuArgs(spec, "/tmp/initrd")
		for i, a := range args {
			if a == "-virtfs" {
				v = append(v, args[i+1])
			}
		}
		return v
	}
	host := virtfs(&bootSpec{kernel: k, cwd: "/work/x"})
	if len(host) != 1 || !strings.HasPrefix(host[0], "local,path=/,mount_tag=hostroot,") {
		t.Errorf("host userland: %q", host)
	}
	u := &Userland{Dist: "bullseye", Dir: "/c/userlands/bullseye-1"}
	got := virtfs(&bootSpec{kernel: k, userland: u, cwd: "/work/a,b"})
	want := []string{"local,path=/c/userlands/bullseye-1/root,mount_tag=userland,", "local,path=/work/a,,b,mount_tag=work,",
		"local,path=/c/kernels/5.4.286/lib/modules/5.4.286,mount_tag=modules,"}
	if len(got) != len(want) {
		t.Fatalf("userland: %q", got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) || !strings.Contains(got[i], "readonly=on") {
			t.Errorf("share %d = %q, want %q...", i, got[i], want[i])
		}
	}
}
