// Package packaging tests what `make build` and `make deb` produce: static
// binaries, and a Debian package holding exactly the files an operator
// installs (read back with dpkg-deb, as apt would). The package files
// themselves (the unit, the sample configurations, the maintainer scripts
// in deb/) live next to this test; deb.sh builds the package and gendoc
// its man page and completion.
package packaging

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

// makeIn runs make in the repository with vars (NAME=value) and targets.
func makeIn(t *testing.T, env []string, args ...string) string {
	t.Helper()
	for _, tool := range []string{"make", "git", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	cmd := exec.Command("make", append([]string{"-C", "..", "--no-print-directory"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// assertStatic fails unless file is a static ELF executable for machine:
// no program interpreter, no dynamic section (it runs on any libc, Ubuntu
// 20.04's glibc 2.31 too).
func assertStatic(t *testing.T, file string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s is for %v, want %v", file, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %v program header: dynamically linked (cgo?)", file, p.Type)
		}
	}
	if f.Section(".interp") != nil || f.Section(".dynamic") != nil {
		t.Errorf("%s has an .interp or .dynamic section", file)
	}
	if ld, err := f.ImportedLibraries(); err == nil && len(ld) > 0 {
		t.Errorf("%s needs shared libraries %q", file, ld)
	}
}

func TestMakeBuildIsStatic(t *testing.T) {
	bin := t.TempDir()
	makeIn(t, []string{"VERSION=v9.8.7-test"}, "build", "BIN="+bin)
	for _, name := range []string{"xdplb", "mockapi", "agent"} {
		assertStatic(t, filepath.Join(bin, name), elf.EM_X86_64)
	}
	out, err := exec.Command(filepath.Join(bin, "xdplb"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "xdplb v9.8.7-test ") {
		t.Fatalf("xdplb version: %v %q", err, out)
	}
}

// deb builds the package once for the tests that read it.
var deb struct {
	once      sync.Once
	file, dir string
	err       string
}

func buildDeb(t *testing.T) (file string) {
	t.Helper()
	deb.once.Do(func() {
		dir, err := os.MkdirTemp("", "xdplb-deb-test-")
		if err != nil {
			deb.err = err.Error()
			return
		}
		deb.dir = dir
		makeIn(t, nil, "deb", "DEB_DIR="+dir)
		files, _ := filepath.Glob(filepath.Join(dir, "xdplb_*_amd64.deb"))
		if len(files) != 1 {
			deb.err = "make deb wrote " + strings.Join(files, ", ")
			return
		}
		deb.file = files[0]
	})
	if deb.err != "" {
		t.Fatal(deb.err)
	}
	if deb.file == "" {
		t.Fatal("make deb failed (see the first test that built it)")
	}
	return deb.file
}

func TestMain(m *testing.M) {
	code := m.Run()
	if deb.dir != "" {
		os.RemoveAll(deb.dir)
	}
	os.Exit(code)
}

func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The files of the package, with their modes and owners, exactly.
var wantFiles = map[string]string{
	"./etc/xdplb/xdplb.yaml":                           "-rw-r--r--",
	"./lib/systemd/system/xdplb.service":               "-rw-r--r--",
	"./usr/bin/xdplb":                                  "-rwxr-xr-x",
	"./usr/share/bash-completion/completions/xdplb":    "-rw-r--r--",
	"./usr/share/doc/xdplb/ARCHITECTURE.md":            "-rw-r--r--",
	"./usr/share/doc/xdplb/README.md":                  "-rw-r--r--",
	"./usr/share/doc/xdplb/changelog.gz":               "-rw-r--r--",
	"./usr/share/doc/xdplb/copyright":                  "-rw-r--r--",
	"./usr/share/doc/xdplb/examples/keepalived.conf":   "-rw-r--r--",
	"./usr/share/man/man8/xdplb.8.gz":                  "-rw-r--r--",
	"./usr/share/zsh/vendor-completions/_xdplb":        "-rw-r--r--",
	"./usr/share/fish/vendor_completions.d/xdplb.fish": "-rw-r--r--",
}

func TestDebContents(t *testing.T) {
	file := buildDeb(t)
	name := filepath.Base(file)
	if !regexp.MustCompile(`^xdplb_[0-9][0-9A-Za-z.+~]*_amd64\.deb$`).MatchString(name) {
		t.Errorf("package file name %q is not xdplb_<version>_amd64.deb", name)
	}
	listing := dpkgDeb(t, "-c", file)
	st, _ := os.Stat(file)
	t.Logf("REPORT: %s, %d bytes; dpkg -c:\n%s", name, st.Size(), listing)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("dpkg -c line %q", l)
		}
		if f[1] != "root/root" {
			t.Errorf("%s owned by %s, want root/root", f[len(f)-1], f[1])
		}
		if strings.HasPrefix(f[0], "d") {
			if f[0] != "drwxr-xr-x" {
				t.Errorf("directory %s has mode %s", f[5], f[0])
			}
			continue
		}
		got[f[5]] = f[0]
	}
	for path, mode := range wantFiles {
		if got[path] != mode {
			t.Errorf("%s: mode %q, want %q", path, got[path], mode)
		}
	}
	for path := range got {
		if _, ok := wantFiles[path]; !ok {
			t.Errorf("unexpected file in the package: %s", path)
		}
	}

	fields := dpkgDeb(t, "-f", file, "Package", "Version", "Architecture", "Depends", "Pre-Depends")
	version := strings.TrimPrefix(strings.TrimSuffix(name, "_amd64.deb"), "xdplb_")
	for _, want := range []string{"Package: xdplb\n", "Version: " + version + "\n", "Architecture: amd64\n"} {
		if !strings.Contains(fields, want) {
			t.Errorf("control lacks %q:\n%s", want, fields)
		}
	}
	if strings.Contains(fields, "Depends") {
		t.Errorf("a static binary needs no Depends:\n%s", fields)
	}

	ctl := t.TempDir()
	dpkgDeb(t, "--control", file, ctl)
	conffiles, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
	if string(conffiles) != "/etc/xdplb/xdplb.yaml\n" {
		t.Errorf("conffiles = %q", conffiles)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if st, err := os.Stat(filepath.Join(ctl, s)); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("maintainer script %s: %v", s, err)
		}
		if out, err := exec.Command("sh", "-n", filepath.Join(ctl, s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v %s", s, err, out)
		}
	}

	// The files as installed: md5sums match, the binary is static and
	// says its version, the unit and the keepalived sample name it.
	root := t.TempDir()
	dpkgDeb(t, "-x", file, root)
	md5 := exec.Command("md5sum", "--quiet", "-c", filepath.Join(ctl, "md5sums"))
	md5.Dir = root
	if out, err := md5.CombinedOutput(); err != nil {
		t.Errorf("md5sums: %v\n%s", err, out)
	}
	bin := filepath.Join(root, "usr/bin/xdplb")
	assertStatic(t, bin, elf.EM_X86_64)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "xdplb ") || strings.HasPrefix(string(out), "xdplb dev ") {
		t.Errorf("packaged xdplb version: %v %q", err, out)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if !strings.Contains(read("lib/systemd/system/xdplb.service"), "\nExecStart=/usr/bin/xdplb run ") {
		t.Error("the unit does not start /usr/bin/xdplb")
	}
	if !strings.Contains(read("usr/share/doc/xdplb/examples/keepalived.conf"), `script "/usr/bin/xdplb check`) {
		t.Error("the keepalived sample does not track /usr/bin/xdplb check")
	}
	if read("etc/xdplb/xdplb.yaml") != readRepo(t, "packaging/xdplb.yaml") {
		t.Error("/etc/xdplb/xdplb.yaml differs from packaging/xdplb.yaml")
	}

	// Every module linked into the binary is named in the copyright file.
	copyright := read("usr/share/doc/xdplb/copyright")
	mods, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mods), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "dep" {
			if !strings.Contains(copyright, "Files: "+f[1]+"@"+f[2]+"\n") || !strings.Contains(copyright, "License-File: LICENSE") {
				t.Errorf("copyright does not carry the licence of %s@%s", f[1], f[2])
			}
		}
	}

	// The man page and completions come from this binary's command tree.
	man, err := exec.Command("gzip", "-dc", filepath.Join(root, "usr/share/man/man8/xdplb.8.gz")).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"run", "status", "check", "backend", "flows", "detach", "version"} {
		if !bytes.Contains(man, []byte("\n.B xdplb "+sub)) {
			t.Errorf("man page lacks xdplb %s", sub)
		}
	}
	if !bytes.Contains(man, []byte(`.B \-\-xdp\-mode \fImode\fR`)) {
		t.Error("man page lacks the run flags")
	}
	if _, err := exec.LookPath("bash"); err == nil {
		// Cobra's script asks the binary (xdplb __complete): the packaged
		// one, first on PATH.
		prog := `source /usr/share/bash-completion/bash_completion; source "$1"; COMP_LINE="xdplb st"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(xdplb st); COMP_CWORD=1; __start_xdplb; echo "${COMPREPLY[*]}"; ` +
			`COMP_LINE="xdplb run --xdp-mode "; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(xdplb run --xdp-mode ''); COMP_CWORD=3; __start_xdplb; echo "${COMPREPLY[*]}"`
		cmd := exec.Command("bash", "-c", prog, "bash", filepath.Join(root, "usr/share/bash-completion/completions/xdplb"))
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(root, "usr/bin")+":"+os.Getenv("PATH"))
		// stdout only: compopt complains on stderr outside a real
		// completion, and that is harmless.
		out, err := cmd.Output()
		if err != nil || string(out) != "status\nauto native generic\n" {
			t.Errorf("bash completion: %v %q", err, out)
		}
	}
}

func readRepo(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A package for another architecture is what GOARCH says: its binary is
// for that machine (and still static), and its control file says so, so
// dpkg refuses it on amd64 (the VM matrix's guests check that refusal).
func TestDebOtherArchitecture(t *testing.T) {
	dir := t.TempDir()
	makeIn(t, []string{"GOARCH=arm64", "VERSION=v9.8.7-test"}, "deb", "DEB_DIR="+dir)
	file := filepath.Join(dir, "xdplb_9.8.7+test_arm64.deb")
	if got := dpkgDeb(t, "-f", file, "Architecture"); got != "arm64\n" {
		t.Fatalf("Architecture: %q", got)
	}
	root := t.TempDir()
	dpkgDeb(t, "-x", file, root)
	assertStatic(t, filepath.Join(root, "usr/bin/xdplb"), elf.EM_AARCH64)
	// The man page still came from the usage text (of a native build).
	var names []string
	entries, _ := os.ReadDir(filepath.Join(root, "usr/share/man/man8"))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if !slices.Equal(names, []string{"xdplb.8.gz"}) {
		t.Errorf("man8: %q", names)
	}
}
