package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDpkgEntry(t *testing.T) {
	ctl := "Package: libc6\nSource: glibc\nVersion: 2.31-13\nArchitecture: amd64\nMulti-Arch: same\nDescription: GNU C Library\n long text\n"
	entry, name := dpkgEntry(ctl, "amd64")
	if name != "libc6:amd64" {
		t.Errorf("info name %q", name)
	}
	if !strings.HasPrefix(entry, "Package: libc6\nStatus: install ok installed\nSource: glibc\n") || !strings.HasSuffix(entry, " long text\n") {
		t.Errorf("entry %q", entry)
	}
	if _, name := dpkgEntry("Package: dash\nVersion: 1\n", "amd64"); name != "dash" {
		t.Errorf("info name of a package that is not Multi-Arch: same: %q", name)
	}
	if got := dpkgList([]string{"/.", "/usr", "/usr/bin", "/usr/bin/", "/usr/bin/x"}); !slices.Equal(got, []string{"/.", "/usr", "/usr/bin", "/usr/bin/x"}) {
		t.Errorf("dpkgList = %q", got)
	}
}

// configureRoot on a tiny root: the users and groups from base-passwd, the
// links, directories and dpkg files, and ldconfig run chrooted (here a
// script standing in for the release's static ldconfig).
func TestConfigureRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs chroot: needs root")
	}
	bb, err := staticBusybox()
	if err != nil {
		t.Skip(err)
	}
	root := t.TempDir()
	files := map[string]string{
		"usr/share/base-passwd/passwd.master": "root:x:0:0:root:/root:/bin/bash\n",
		"usr/share/base-passwd/group.master":  "root:x:0:\n",
		"usr/share/base-files/nsswitch.conf":  "hosts: files dns\n",
		"sbin/ldconfig":                       "#!/bin/sh\n: >/etc/ld.so.cache\n",
		"usr/bin/mawk":                        "",
	}
	for name, content := range files {
		if err := writeRootFile(root, name, content, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(bb)
	writeRootFile(root, "bin/sh", string(b), 0o755)
	if err := configureRoot(root); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(root, p)); return string(b) }
	if read("etc/passwd") != files["usr/share/base-passwd/passwd.master"] || read("etc/group") != "root:x:0:\n" || read("etc/nsswitch.conf") != "hosts: files dns\n" {
		t.Error("passwd, group or nsswitch.conf not taken from base-passwd and base-files")
	}
	for link, want := range map[string]string{"etc/mtab": "../proc/self/mounts", "usr/bin/awk": "/etc/alternatives/awk", "etc/alternatives/awk": "/usr/bin/mawk", "var/run": "/run"} {
		if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, want)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "tmp")); err != nil || st.Mode() != os.ModeDir|os.ModeSticky|0o777 {
		t.Errorf("tmp: %v %v", st.Mode(), err)
	}
	for _, f := range []string{"etc/ld.so.cache", "var/lib/dpkg/available", "etc/hosts", "proc", "sys", "dev", "run", "var/lib/dpkg/updates"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// A userland of the current recipe is found in the cache; one of another
// recipe, or half assembled, is not.
func TestCachedUserland(t *testing.T) {
	c, _ := testCache(t)
	put := func(name, rcp string, whole bool, at time.Time) {
		dir := c.path("userlands", name)
		os.MkdirAll(filepath.Join(dir, "root", "usr", "bin"), 0o755)
		if whole {
			os.WriteFile(filepath.Join(dir, "root", "usr", "bin", "ldd"), nil, 0o755)
		}
		u := &Userland{Dist: "bullseye", ID: strings.TrimPrefix(name, "bullseye-"), Recipe: rcp, AssembledAt: at, Dir: dir}
		b, _ := json.Marshal(u)
		os.WriteFile(filepath.Join(dir, "userland.json"), b, 0o644)
	}
	now := time.Now()
	put("bullseye-aaaa", recipe("bullseye"), true, now.Add(-time.Hour))
	put("bullseye-bbbb", "format 0; old", true, now)
	put("bullseye-cccc", recipe("bullseye"), false, now)
	us := c.userlands("bullseye")
	if len(us) != 2 || us[0].ID != "bbbb" || us[1].ID != "aaaa" {
		t.Fatalf("userlands = %v", us)
	}
	u, err := c.userland(t.Context(), "bullseye", false)
	if err != nil || u.ID != "aaaa" {
		t.Fatalf("userland = %v, %v; want the whole one of this recipe", u, err)
	}
	if _, err := c.userland(t.Context(), "jessie", false); err == nil || !strings.Contains(err.Error(), "bullseye") {
		t.Errorf("unknown release: %v", err)
	}
}
