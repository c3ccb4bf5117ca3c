// Package apt runs apt-get and apt-cache against a private apt root: a
// sources.list, state and cache of its own in one directory, so that the
// packages of any Debian release can be looked up and downloaded without the
// host's apt configuration and without installing anything on the host.
//
// A root only finds and downloads packages; package deb reads them, and the
// caller decides what to do with their files.
package apt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/deb"
)

// Sources are the archive suites a root reads, main component only.
type Sources struct {
	Mirror        string   // the Debian archive, e.g. http://deb.debian.org/debian
	Suites        []string // suites in Mirror, e.g. bookworm bookworm-updates
	Security      string   // the security archive; "" for none
	SecuritySuite string   // its suite, e.g. bookworm-security; "" for none
}

// keyring signs the Debian archive; sources name it when the host has it.
const keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// list is the one-line sources.list text for s; name says whose root it is.
func (s Sources) list(name string) string {
	opt := ""
	if _, err := os.Stat(keyring); err == nil {
		opt = "[signed-by=" + keyring + "] "
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by tests/vm/vmrun: private apt root for %s\n", name)
	for _, suite := range s.Suites {
		fmt.Fprintf(&b, "deb %s%s %s main\n", opt, s.Mirror, suite)
	}
	if s.Security != "" && s.SecuritySuite != "" {
		fmt.Fprintf(&b, "deb %s%s %s main\n", opt, s.Security, s.SecuritySuite)
	}
	return b.String()
}

// Root is a private apt configuration and state in one directory:
//
//	sources.list, sources.list.d/, preferences.d/  what apt reads
//	state/lists/                                   the package lists (Update)
//	state/status                                   empty: nothing is installed
//	cache/archives/                                apt's own download cache
type Root struct {
	Dir  string
	Name string // whose root it is (a Debian release), for messages
}

// Open makes the root in dir if it is not there yet and (re)writes its
// sources.list from src.
func Open(dir, name string, src Sources) (*Root, error) {
	r := &Root{Dir: dir, Name: name}
	for _, sub := range []string{"sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create private apt root: %w", err)
		}
	}
	status := filepath.Join(dir, "state", "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sources.list"), []byte(src.list(name)), 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

// HasLists says whether the root has package lists (an Update has run).
func (r *Root) HasLists() bool {
	lists, _ := filepath.Glob(filepath.Join(r.Dir, "state", "lists", "*Packages*"))
	return len(lists) > 0
}

// Update fetches the package lists (apt-get update).
func (r *Root) Update(ctx context.Context) error {
	if _, err := r.run(ctx, "", "apt-get", "-q", "update"); err != nil {
		return fmt.Errorf("apt-get update for %s (private root %s): %w", r.Name, r.Dir, err)
	}
	return nil
}

// Show returns the control fields of pkg's candidate version.
func (r *Root) Show(ctx context.Context, pkg string) (map[string]string, error) {
	out, err := r.run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return nil, err
	}
	fields := deb.ParseControl(out)
	if fields["Package"] != pkg {
		return nil, fmt.Errorf("apt-cache show %s: no such package in %s", pkg, r.Name)
	}
	return fields, nil
}

// Download fetches version of pkg into dir (apt-get download) and returns the
// .deb's path.
func (r *Root) Download(ctx context.Context, pkg, version, dir string) (string, error) {
	if _, err := r.run(ctx, dir, "apt-get", "-q", "download", pkg+"="+version); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	// apt-get names it pkg_version_arch.deb, with ':' in version as %3a.
	var file string
	for _, m := range Downloaded(dir, pkg) {
		if strings.Contains(m, "_"+strings.ReplaceAll(version, ":", "%3a")+"_") {
			file = m
		}
	}
	if file == "" {
		return "", fmt.Errorf("download %s: apt-get reported success but no .deb in %s", pkg, dir)
	}
	return file, nil
}

// Package is one package of a resolved set.
type Package struct {
	Name, Version, Arch string
}

func (p Package) String() string { return p.Name + "=" + p.Version }

// Resolve returns the packages apt would install on an empty system to
// have pkgs (their dependencies, without Recommends), in apt's order.
func (r *Root) Resolve(ctx context.Context, pkgs ...string) ([]Package, error) {
	out, err := r.run(ctx, "", "apt-get", append([]string{"-s", "-q", "install", "--no-install-recommends"}, pkgs...)...)
	if err != nil {
		return nil, fmt.Errorf("resolve %d packages in %s: %w", len(pkgs), r.Name, err)
	}
	res := parseSimulation(out)
	if len(res) == 0 {
		return nil, fmt.Errorf("resolve packages in %s: apt-get -s installs nothing:\n%s", r.Name, lastLines(out, 5))
	}
	return res, nil
}

// inst is a line of apt-get -s: "Inst libc6 (2.31-13+deb11u11 Debian-Security:11/oldoldstable-security [amd64])",
// with "[old version] " before the parenthesis for an upgrade.
var inst = regexp.MustCompile(`^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) [^\[]*\[([^\]]+)\]\)`)

func parseSimulation(out string) []Package {
	var pkgs []Package
	for _, line := range strings.Split(out, "\n") {
		if m := inst.FindStringSubmatch(line); m != nil {
			pkgs = append(pkgs, Package{Name: m[1], Version: m[2], Arch: m[3]})
		}
	}
	return pkgs
}

// DownloadAll fetches the packages into dir and returns their files, in
// the order of pkgs. A version the mirror no longer has (an index ahead of
// its pool, or a superseded security update) is replaced by the newest
// other version of that package the mirror has, and pkgs is updated; logf
// says so.
func (r *Root) DownloadAll(ctx context.Context, pkgs []Package, dir string, logf func(string, ...any)) ([]string, error) {
	args := []string{"-q", "download"}
	for _, p := range pkgs {
		args = append(args, p.String())
	}
	if _, err := r.run(ctx, dir, "apt-get", args...); err != nil {
		// One at a time, to find the missing ones.
		for i, p := range pkgs {
			if _, err := os.Stat(debFile(dir, p)); err == nil {
				continue
			}
			if _, derr := r.run(ctx, dir, "apt-get", "-q", "download", p.String()); derr == nil {
				continue
			}
			alt, aerr := r.downloadOther(ctx, p, dir)
			if aerr != nil {
				return nil, fmt.Errorf("download %d packages of %s: %w (and %s: %v)", len(pkgs), r.Name, err, p, aerr)
			}
			logf("%s: %s is not on the mirror; took %s", r.Name, p, alt.Version)
			pkgs[i] = alt
		}
	}
	files := make([]string, len(pkgs))
	for i, p := range pkgs {
		f := debFile(dir, p)
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("download %s: apt-get reported success but %s is missing", p, f)
		}
		files[i] = f
	}
	return files, nil
}

// debFile is where apt-get download puts p: pkg_version_arch.deb, with ':'
// in the version as %3a.
func debFile(dir string, p Package) string {
	return filepath.Join(dir, p.Name+"_"+strings.ReplaceAll(p.Version, ":", "%3a")+"_"+p.Arch+".deb")
}

// downloadOther downloads the newest version of p.Name other than
// p.Version that the mirror serves.
func (r *Root) downloadOther(ctx context.Context, p Package, dir string) (Package, error) {
	out, err := r.run(ctx, "", "apt-cache", "madison", p.Name)
	if err != nil {
		return p, err
	}
	var errs []error
	for _, v := range madisonVersions(out) {
		if v == p.Version {
			continue
		}
		alt := Package{Name: p.Name, Version: v, Arch: p.Arch}
		if _, err := r.run(ctx, dir, "apt-get", "-q", "download", alt.String()); err != nil {
			errs = append(errs, err)
			continue
		}
		return alt, nil
	}
	return p, fmt.Errorf("no other version of %s on the mirror: %w", p.Name, errors.Join(errs...))
}

// madisonVersions lists the versions in apt-cache madison's output
// (" bpftool | 5.10.262-1 | http://... Packages"), newest first as apt
// prints them, each once.
func madisonVersions(out string) []string {
	var vs []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "|")
		if len(f) < 3 {
			continue
		}
		if v := strings.TrimSpace(f[1]); v != "" && !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	return vs
}

// Required lists the packages of priority "required" in the root's lists
// (apt-cache dumpavail): what debootstrap's minbase variant installs,
// short of apt.
func (r *Root) Required(ctx context.Context) ([]string, error) {
	cmd := exec.CommandContext(ctx, "apt-cache", append(r.opts(), "dumpavail")...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("apt-cache dumpavail: %w", err)
	}
	names := appendRequired(nil, map[string]bool{}, out)
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("apt-cache dumpavail for %s: %w: %s", r.Name, err, lastLines(stderr.String(), 5))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no package of priority required in the lists of %s (update them?)", r.Name)
	}
	slices.Sort(names)
	return names, nil
}

// appendRequired adds the packages of priority required in the Packages
// file r to names, once each.
func appendRequired(names []string, seen map[string]bool, r io.Reader) []string {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var pkg string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			pkg = ""
		case strings.HasPrefix(line, "Package: "):
			pkg = strings.TrimSpace(strings.TrimPrefix(line, "Package: "))
		case line == "Priority: required" && pkg != "" && !seen[pkg]:
			seen[pkg] = true
			names = append(names, pkg)
		}
	}
	return names
}

// Downloaded lists the .deb files of pkg in dir, of any version.
func Downloaded(dir, pkg string) []string {
	matches, _ := filepath.Glob(filepath.Join(dir, pkg+"_*_amd64.deb"))
	return matches
}

// opts point apt at the root instead of the host's configuration.
func (r *Root) opts() []string {
	var args []string
	for _, kv := range []string{
		"Dir::Etc::SourceList=" + filepath.Join(r.Dir, "sources.list"),
		"Dir::Etc::SourceParts=" + filepath.Join(r.Dir, "sources.list.d"),
		"Dir::Etc::Preferences=" + filepath.Join(r.Dir, "preferences"),
		"Dir::Etc::PreferencesParts=" + filepath.Join(r.Dir, "preferences.d"),
		"Dir::State=" + filepath.Join(r.Dir, "state"),
		"Dir::State::status=" + filepath.Join(r.Dir, "state", "status"),
		"Dir::Cache=" + filepath.Join(r.Dir, "cache"),
		"APT::Architecture=amd64",
		"Acquire::Languages=none",
		"APT::Sandbox::User=root",
	} {
		args = append(args, "-o", kv)
	}
	return args
}

// run runs apt-get or apt-cache against the root, in dir if set, and
// returns its standard output.
func (r *Root) run(ctx context.Context, dir, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, append(r.opts(), args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	var out, stderr strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// HostMirrors finds the Debian archive and security archive the host's apt
// uses (/etc/apt/sources.list and sources.list.d/*.{list,sources}), so that
// private roots go where the host's apt goes. Either is "" when not found;
// without a security archive of its own it guesses one beside the archive.
func HostMirrors() (mirror, security string) {
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, more...)
	var uris []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".list") && !strings.HasSuffix(f, ".sources") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		uris = append(uris, sourceURIs(string(b), strings.HasSuffix(f, ".sources"))...)
	}
	return pickMirrors(uris)
}

// sourceURIs lists the URIs of the deb (binary) sources in a sources.list
// (one-line format) or a .sources (deb822) file.
func sourceURIs(text string, deb822 bool) []string {
	var uris []string
	if deb822 {
		for _, stanza := range strings.Split(text, "\n\n") {
			f := deb.ParseControl(stanza)
			if f["Enabled"] == "no" || (f["Types"] != "" && !slices.Contains(strings.Fields(f["Types"]), "deb")) {
				continue
			}
			uris = append(uris, strings.Fields(f["URIs"])...)
		}
		return uris
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		i := 1
		if strings.HasPrefix(fields[1], "[") {
			for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
				i++
			}
			i++
		}
		if i < len(fields) {
			uris = append(uris, fields[i])
		}
	}
	return uris
}

// pickMirrors takes the first URI ending in /debian as the archive and the
// first ending in /debian-security as the security archive; without the
// latter it guesses the security archive beside the archive.
func pickMirrors(uris []string) (mirror, security string) {
	for _, u := range uris {
		u = strings.TrimSuffix(u, "/")
		switch {
		case strings.HasSuffix(u, "/debian-security") && security == "":
			security = u
		case strings.HasSuffix(u, "/debian") && mirror == "":
			mirror = u
		}
	}
	if security == "" && mirror != "" {
		security = mirror + "-security"
	}
	return mirror, security
}
