package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// This file: kernels that are in no Debian archive (Linux 5.4, Ubuntu
// 20.04's GA kernel) and are built for the tests, kept as linux-image .deb
// files in ../shared/kernels beside the repository (its README says how
// they were built), or in $XDPLB_VM_KERNEL_DIR. A clone of a repository on
// this machine (git clone /work/main /tmp/ci) also looks beside the one it
// was cloned from.

// sharedKernelSeries are the kernel series found there by name.
var sharedKernelSeries = []string{"5.4"}

// sharedSeries says whether spec names one of them ("5.4", "linux-5.4").
func sharedSeries(spec string) (string, bool) {
	s := strings.TrimPrefix(spec, "linux-")
	return s, slices.Contains(sharedKernelSeries, s)
}

// sharedKernelDirs are where the .deb files are looked for.
func sharedKernelDirs() ([]string, error) {
	if d := os.Getenv("XDPLB_VM_KERNEL_DIR"); d != "" {
		return []string{d}, nil
	}
	repo, err := repoRoot()
	if err != nil {
		return nil, err
	}
	dirs := []string{filepath.Join(filepath.Dir(repo), "shared", "kernels")}
	if origin := localOrigin(repo); origin != "" {
		if d := filepath.Join(filepath.Dir(origin), "shared", "kernels"); d != dirs[0] {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// localOrigin is the directory repo was cloned from when that is a
// repository on this machine ("" when it has no such origin).
func localOrigin(repo string) string {
	out, err := exec.Command("git", "-C", repo, "remote", "get-url", "origin").Output()
	if err != nil {
		return ""
	}
	u := strings.TrimPrefix(strings.TrimSpace(string(out)), "file://")
	if !filepath.IsAbs(u) {
		return ""
	}
	u = strings.TrimSuffix(filepath.Clean(u), "/.git")
	if fi, err := os.Stat(u); err != nil || !fi.IsDir() {
		return ""
	}
	return u
}

// sharedKernelDeb is the newest linux-image-<series>.*.deb there.
func sharedKernelDeb(series string) (string, error) {
	dirs, err := sharedKernelDirs()
	if err != nil {
		return "", fmt.Errorf("kernel %s: %w", series, err)
	}
	var found []string
	for _, d := range dirs {
		m, _ := filepath.Glob(filepath.Join(d, "linux-image-"+series+".*.deb"))
		found = append(found, m...)
	}
	if len(found) == 0 {
		return "", fmt.Errorf("kernel %s: no linux-image-%s.*.deb in %s (the test kernels beside the repository; "+
			"set XDPLB_VM_KERNEL_DIR to the directory holding one, or name a .deb file; shared/kernels/build.sh builds it from a %s source tree)",
			series, series, strings.Join(dirs, ", "), series)
	}
	slices.SortFunc(found, func(a, b string) int { return compareSublevel(a, b, series) })
	return found[len(found)-1], nil
}

// compareSublevel orders linux-image-5.4.286-... before linux-image-5.4.290-...
func compareSublevel(a, b, series string) int {
	sub := func(p string) int {
		rest := strings.TrimPrefix(filepath.Base(p), "linux-image-"+series+".")
		n, _ := strconv.Atoi(strings.FieldsFunc(rest, func(r rune) bool { return r < '0' || r > '9' })[0])
		return n
	}
	if d := sub(a) - sub(b); d != 0 {
		return d
	}
	return strings.Compare(a, b)
}

// module is the import path of the repository's go.mod.
const module = "github.com/xdplb/xdplb"

// repoRoot finds the repository: the current directory or the nearest
// parent whose go.mod is xdplb's, else the one vmrun's binary (bin/vmrun)
// was built in.
func repoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if isRepo(d) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("cannot find the xdplb repository (run from inside it, or set XDPLB_VM_KERNEL_DIR)")
}

func isRepo(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "module "+module {
			return true
		}
	}
	return false
}
