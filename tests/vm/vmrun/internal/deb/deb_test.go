package deb

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/deb/debtest"
)

func TestFields(t *testing.T) {
	deb := debtest.Build(t, "xdplb-test", "1:2.3-4", map[string]string{"usr/share/doc/xdplb-test/README": "hi"}, "X-Note: first line", " second line")
	got, err := Fields(deb, "Package", "Version")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Package": "xdplb-test", "Version": "1:2.3-4"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Fields = %q, want %q", got, want)
	}
	all, err := Fields(deb)
	if err != nil {
		t.Fatal(err)
	}
	if all["Architecture"] != "amd64" || all["X-Note"] != "first line\nsecond line" {
		t.Errorf("Fields (all) = %q", all)
	}
	if _, err := Fields(filepath.Join(t.TempDir(), "missing.deb")); err == nil {
		t.Error("Fields of a missing file: no error")
	}
}

func TestExtract(t *testing.T) {
	deb := debtest.Build(t, "xdplb-test", "1:2.3-4", map[string]string{
		"boot/vmlinuz-1.0":              "kernel",
		"usr/lib/modules/1.0/a/b/x.ko":  "module x",
		"usr/lib/modules/1.0/skip/y.ko": "module y",
		"usr/share/doc/xdplb-test/doc":  "doc",
	})
	var seen []string
	dir := t.TempDir()
	err := Extract(deb, dir, func(name string) (string, bool) {
		seen = append(seen, name)
		name = strings.TrimPrefix(name, "./")
		switch {
		case strings.Contains(name, "/skip/"), strings.HasPrefix(name, "usr/share"):
			return "", false
		case strings.HasPrefix(name, "usr/lib/"):
			return strings.TrimPrefix(name, "usr/"), true
		}
		return name, true
	})
	if err != nil {
		t.Fatal(err)
	}
	got := readTree(t, dir)
	want := map[string]string{
		"boot/":                    "",
		"boot/vmlinuz-1.0":         "kernel",
		"lib/":                     "",
		"lib/modules/":             "",
		"lib/modules/1.0/":         "",
		"lib/modules/1.0/a/":       "",
		"lib/modules/1.0/a/b/":     "",
		"lib/modules/1.0/a/b/x.ko": "module x",
		"usr/":                     "", // "./usr/" itself was kept
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("extracted %q\nwant %q", got, want)
	}
	if !containsAll(seen, "./boot/vmlinuz-1.0", "./usr/lib/modules/1.0/skip/y.ko") {
		t.Errorf("keep saw %q", seen)
	}
	if err := Extract(filepath.Join(t.TempDir(), "missing.deb"), dir, func(string) (string, bool) { return "", false }); err == nil {
		t.Error("Extract of a missing file: no error")
	}
}

// TestExtractTarStaysInDir feeds a hand-made tar whose names try to leave
// the directory.
func TestExtractTarStaysInDir(t *testing.T) {
	for _, name := range []string{"../evil", "./lib/../../evil", "/abs/../../evil"} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 4})
			tw.Write([]byte("evil"))
			tw.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "dir")
			os.Mkdir(dir, 0o755)
			err := extractTar(&buf, dir, func(n string) (string, bool) { return n, true })
			if err == nil || !strings.Contains(err.Error(), "outside") {
				t.Errorf("err = %v, want one about writing outside", err)
			}
			if got := readTree(t, parent); !reflect.DeepEqual(got, map[string]string{"dir/": ""}) {
				t.Errorf("wrote %q", got)
			}
		})
	}
}

func TestParseControl(t *testing.T) {
	got := ParseControl("\nPackage: a\nDepends: b,\n c (>= 1)\nDescription:short\n\tlong\nbad line\n\nPackage: second\n")
	want := map[string]string{"Package": "a", "Depends": "b,\nc (>= 1)", "Description": "short\nlong"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseControl = %q, want %q", got, want)
	}
}

// readTree maps every path under dir to its content ("" and a trailing
// slash for directories).
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			tree[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		tree[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func containsAll(list []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, s := range list {
			found = found || s == w
		}
		if !found {
			return false
		}
	}
	return true
}

// Unpack keeps what an installed system needs: modes (setuid too), symbolic
// links (absolute ones stored as they are), hard links, owners, and
// replaces a file an earlier package wrote.
func TestUnpackTar(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	add(tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(tar.Header{Name: "./bin/dash", Typeflag: tar.TypeReg, Mode: 0o755}, "#!dash")
	add(tar.Header{Name: "./bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash", Mode: 0o777}, "")
	add(tar.Header{Name: "./bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, "su")
	add(tar.Header{Name: "./bin/su2", Typeflag: tar.TypeLink, Linkname: "./bin/su"}, "")
	add(tar.Header{Name: "./lib64/ld.so", Typeflag: tar.TypeSymlink, Linkname: "/lib/x86_64-linux-gnu/ld-2.31.so"}, "")
	add(tar.Header{Name: "./tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, "")
	add(tar.Header{Name: "./etc/shadow", Typeflag: tar.TypeReg, Mode: 0o640, Gid: 42}, "x")
	tw.Close()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "sh"), []byte("an older file"), 0o644)
	chown := os.Geteuid() == 0
	paths, err := unpackTar(&buf, dir, chown)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/.", "/bin", "/bin/dash", "/bin/sh", "/bin/su", "/bin/su2", "/lib64/ld.so", "/tmp", "/etc/shadow"}
	if !reflect.DeepEqual(paths, want) {
		t.Errorf("paths %q, want %q", paths, want)
	}
	mode := func(p string) os.FileMode {
		st, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}
	if m := mode("bin/dash"); m != 0o755 {
		t.Errorf("bin/dash mode %v", m)
	}
	if m := mode("bin/su"); m != 0o755|os.ModeSetuid {
		t.Errorf("bin/su mode %v", m)
	}
	if m := mode("tmp"); m != 0o777|os.ModeDir|os.ModeSticky {
		t.Errorf("tmp mode %v", m)
	}
	for link, target := range map[string]string{"bin/sh": "dash", "lib64/ld.so": "/lib/x86_64-linux-gnu/ld-2.31.so"} {
		if got, err := os.Readlink(filepath.Join(dir, link)); err != nil || got != target {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, target)
		}
	}
	a, _ := os.Stat(filepath.Join(dir, "bin/su"))
	b, _ := os.Stat(filepath.Join(dir, "bin/su2"))
	if !os.SameFile(a, b) {
		t.Error("bin/su2 is not a hard link to bin/su")
	}
	if chown {
		st, _ := os.Stat(filepath.Join(dir, "etc/shadow"))
		if gid := st.Sys().(*syscall.Stat_t).Gid; gid != 42 {
			t.Errorf("etc/shadow gid %d, want 42", gid)
		}
	}
}

func TestUnpackTarStaysInDir(t *testing.T) {
	for name, h := range map[string]tar.Header{
		"dot-dot":             {Name: "./a/../../evil", Typeflag: tar.TypeReg, Mode: 0o644},
		"hard link outside":   {Name: "./x", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"},
		"through a link":      {Name: "./up/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		"device (not wanted)": {Name: "./dev/null", Typeflag: tar.TypeChar, Mode: 0o666},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			if name == "through a link" {
				tw.WriteHeader(&tar.Header{Name: "./up", Typeflag: tar.TypeSymlink, Linkname: "/"})
			}
			tw.WriteHeader(&h)
			tw.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "dir")
			os.Mkdir(dir, 0o755)
			if _, err := unpackTar(&buf, dir, false); err == nil {
				t.Error("no error")
			}
			if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
				t.Error("wrote outside")
			}
		})
	}
}

func TestUnpackAndControl(t *testing.T) {
	deb := debtest.Build(t, "xdplb-test", "1.0", map[string]string{"usr/bin/tool": "tool"}, "Depends: libc6")
	dir := t.TempDir()
	paths, err := Unpack(deb, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !containsAll(paths, "/.", "/usr", "/usr/bin", "/usr/bin/tool") {
		t.Errorf("paths %q", paths)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "usr/bin/tool")); err != nil || string(b) != "tool" {
		t.Errorf("usr/bin/tool: %q %v", b, err)
	}
	ctl, err := Control(deb)
	if err != nil || !strings.HasPrefix(ctl, "Package: xdplb-test\nVersion: 1.0\n") || !strings.Contains(ctl, "\nDepends: libc6\n") {
		t.Errorf("Control = %q, %v", ctl, err)
	}
}
