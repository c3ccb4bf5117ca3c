// Package debtest builds small Debian packages for tests, with dpkg-deb and
// without root.
package debtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build makes pkg_version_amd64.deb in a temporary directory from files
// (path in the package → content) and returns its path. The control file
// names pkg and version; extra control lines ("Depends: x") are added as
// they are. It skips the test when the host has no dpkg-deb.
func Build(t testing.TB, pkg, version string, files map[string]string, control ...string) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("no dpkg-deb (apt-get install dpkg)")
	}
	tree := t.TempDir()
	all := map[string]string{
		"DEBIAN/control": "Package: " + pkg + "\nVersion: " + version + "\nArchitecture: amd64\n" +
			"Maintainer: xdplb <dev@xdplb.invalid>\n" + strings.Join(append(control, ""), "\n") +
			"Description: a package made by a test of tests/vm/vmrun\n",
	}
	for name, content := range files {
		all[name] = content
	}
	for name, content := range all {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(t.TempDir(), pkg+"_"+strings.ReplaceAll(version, ":", "%3a")+"_amd64.deb")
	// xz, as Debian builds its packages; --root-owner-group so no root is needed.
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zxz", "--build", tree, deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	return deb
}
