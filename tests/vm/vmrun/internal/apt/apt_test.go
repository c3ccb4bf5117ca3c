package apt

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestAptURIs(t *testing.T) {
	deb822 := `Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
`
	oneLine := `# comment
deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://other.example/debian-security bookworm-security main
`
	tests := []struct {
		name             string
		text             string
		deb822           bool
		mirror, security string
	}{
		{"deb822", deb822, true, "http://mirror.example/debian", "http://mirror.example/debian-security"},
		{"one-line with options", oneLine, false, "http://other.example/debian", "http://other.example/debian-security"},
		{"no security archive", "deb http://m.example/debian bookworm main\n", false, "http://m.example/debian", "http://m.example/debian-security"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, s := pickMirrors(sourceURIs(tt.text, tt.deb822))
			if m != tt.mirror || s != tt.security {
				t.Errorf("mirrors = %q, %q; want %q, %q", m, s, tt.mirror, tt.security)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "apt", "bookworm")
	src := Sources{
		Mirror: "http://m.example/debian", Suites: []string{"bookworm", "bookworm-updates"},
		Security: "http://m.example/debian-security", SecuritySuite: "bookworm-security",
	}
	r, err := Open(dir, "bookworm", src)
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			t.Errorf("%s: not a directory (%v)", sub, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "state", "status")); err != nil || len(b) != 0 {
		t.Errorf("state/status = %q, %v; want an empty file", b, err)
	}
	opt := ""
	if _, err := os.Stat(keyring); err == nil {
		opt = "[signed-by=" + keyring + "] "
	}
	want := "# written by tests/vm/vmrun: private apt root for bookworm\n" +
		"deb " + opt + "http://m.example/debian bookworm main\n" +
		"deb " + opt + "http://m.example/debian bookworm-updates main\n" +
		"deb " + opt + "http://m.example/debian-security bookworm-security main\n"
	if b, _ := os.ReadFile(filepath.Join(dir, "sources.list")); string(b) != want {
		t.Errorf("sources.list:\n%s\nwant:\n%s", b, want)
	}
	if r.HasLists() {
		t.Error("HasLists before any update")
	}
	if err := os.WriteFile(filepath.Join(dir, "state", "lists", "m.example_debian_dists_bookworm_main_binary-amd64_Packages"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !r.HasLists() {
		t.Error("no HasLists with a Packages list")
	}

	// Opening again keeps the state and rewrites the sources.
	if err := os.WriteFile(filepath.Join(dir, "state", "status"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	src.Security = ""
	if _, err := Open(dir, "bookworm", src); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "state", "status")); string(b) != "kept" {
		t.Errorf("state/status rewritten: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sources.list")); strings.Contains(string(b), "security") {
		t.Errorf("sources.list names a security archive though none is set:\n%s", b)
	}

	// Every apt path points into the root.
	opts := r.opts()
	for i := 0; i < len(opts); i += 2 {
		if opts[i] != "-o" {
			t.Fatalf("opts = %q", opts)
		}
		if k, v, _ := strings.Cut(opts[i+1], "="); strings.HasPrefix(k, "Dir::") && !strings.HasPrefix(v, dir+"/") {
			t.Errorf("%s outside the root", opts[i+1])
		}
	}
	if !slices.Contains(opts, "Dir::State::status="+filepath.Join(dir, "state", "status")) {
		t.Errorf("opts lack the private status file: %q", opts)
	}
}

func TestDownloaded(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb", "linux-image-6.1.0-56-amd64_1%3a6.1.191-1_amd64.deb", "linux-image-amd64_6.1.192-2_amd64.deb", "other_1_amd64.deb"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	got := Downloaded(dir, "linux-image-6.1.0-56-amd64")
	for i := range got {
		got[i] = filepath.Base(got[i])
	}
	want := []string{"linux-image-6.1.0-56-amd64_1%3a6.1.191-1_amd64.deb", "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"}
	if !slices.Equal(got, want) {
		t.Errorf("Downloaded = %q, want %q", got, want)
	}
}

func TestParseSimulation(t *testing.T) {
	out := `NOTE: This is only a simulation!
Reading package lists...
Inst gcc-10-base (10.2.1-6 Debian:11.11/oldoldstable [amd64])
Inst libc6 (2.31-13+deb11u11 Debian-Security:11/oldoldstable-security [amd64])
Inst keepalived [1:2.1.4-1] (1:2.1.5-0.2+deb11u1 Debian:11.11/oldoldstable [amd64])
Inst pci.ids (0.0~2021.02.08-1 Debian:11.11/oldoldstable, Debian-Security:11/oldoldstable-security [all])
Conf libc6 (2.31-13+deb11u11 Debian-Security:11/oldoldstable-security [amd64])
`
	got := parseSimulation(out)
	want := []Package{
		{"gcc-10-base", "10.2.1-6", "amd64"},
		{"libc6", "2.31-13+deb11u11", "amd64"},
		{"keepalived", "1:2.1.5-0.2+deb11u1", "amd64"},
		{"pci.ids", "0.0~2021.02.08-1", "all"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseSimulation = %q, want %q", got, want)
	}
}

func TestAppendRequired(t *testing.T) {
	lists := "Package: libc6\nPriority: required\nVersion: 1\n\nPackage: keepalived\nPriority: optional\n\n" +
		"Package: dash\nEssential: yes\nPriority: required\n\nPackage: libc6\nPriority: required\nVersion: 2\n"
	got := appendRequired(nil, map[string]bool{}, strings.NewReader(lists))
	if !slices.Equal(got, []string{"libc6", "dash"}) {
		t.Errorf("appendRequired = %q", got)
	}
}

func TestMadisonVersions(t *testing.T) {
	out := `   bpftool | 5.10.262-1 | http://deb.debian.org/debian-security bullseye-security/main amd64 Packages
   bpftool | 5.10.223-1 | http://deb.debian.org/debian bullseye/main amd64 Packages
   bpftool | 5.10.223-1 | http://mirror.example/debian bullseye/main amd64 Packages
`
	if got := madisonVersions(out); !slices.Equal(got, []string{"5.10.262-1", "5.10.223-1"}) {
		t.Errorf("madisonVersions = %q", got)
	}
}
