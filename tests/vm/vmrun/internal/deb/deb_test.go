package deb

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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
