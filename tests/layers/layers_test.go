// Package layers checks the shape of the module: xdplb's packages form
// layers, bpf <- loader <- control decisions <- control/daemon <- cmd, and
// no package imports one above it; the decision packages never reach the
// kernel; every package says in its doc what it holds and may touch.
package layers

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/xdplb/xdplb"

// layer of each product package; a package may import only packages of
// its layer or below. Packages not listed (tests/, bench/) are above all.
var layer = map[string]int{
	"bpf":                           0,
	"bpf/packet":                    0,
	"loader":                        1,
	"control/config":                2,
	"control/health":                2,
	"control/maglev":                2,
	"control/balancer":              2,
	"control/balancer/balancertest": 2,
	"control/safefile":              2,
	"control/preflight":             2,
	"control/sync":                  2,
	"control/daemon":                3,
	"cmd/xdplb":                     4,
}

// decisions are the control plane's pure packages.
var decisions = []string{"control/config", "control/health", "control/maglev", "control/balancer", "control/balancer/balancertest", "control/safefile", "control/preflight", "control/sync"}

// kernel are the imports that reach the kernel: BPF, netlink, raw
// syscalls, other programs. Only bpf, loader and control/daemon may use
// them directly (and tests). The syscall package is not among them: the
// checks read its errno values to tell one failure from another.
var kernel = []string{"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/vishvananda/netns", "golang.org/x/sys/unix", "os/exec"}

// testLeaves are test support packages any test may import.
var testLeaves = []string{"tests/testenv", "bpf/packet", "control/balancer/balancertest"}

type pkg struct {
	ImportPath   string
	Name         string
	Doc          string
	Imports      []string
	Deps         []string
	TestImports  []string
	XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps=false", "-json", module+"/...").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < len(layer) {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	return pkgs
}

func rel(path string) (string, bool) {
	if path == module {
		return "", true
	}
	return strings.CutPrefix(path, module+"/")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestNoUpwardImports(t *testing.T) {
	for _, p := range listPackages(t) {
		name, _ := rel(p.ImportPath)
		own, product := layer[name]
		if !product {
			continue
		}
		for _, imp := range p.Imports {
			dep, ours := rel(imp)
			if !ours {
				continue
			}
			l, ok := layer[dep]
			if !ok || l > own {
				t.Errorf("%s (layer %d) imports %s (layer %v): an upward import", name, own, dep, describe(dep))
			}
			if dep == "control/balancer/balancertest" {
				t.Errorf("%s imports test support %s outside its tests", name, dep)
			}
		}
		for _, imp := range append(append([]string{}, p.TestImports...), p.XTestImports...) {
			dep, ours := rel(imp)
			if !ours || dep == name || contains(testLeaves, dep) {
				continue
			}
			if l, ok := layer[dep]; !ok || l > own {
				t.Errorf("tests of %s (layer %d) import %s (layer %v)", name, own, dep, describe(dep))
			}
		}
	}
}

func describe(dep string) string {
	if l, ok := layer[dep]; ok {
		return string(rune('0' + l))
	}
	return "tests/bench: above every product package"
}

func TestDecisionsDoNotReachTheKernel(t *testing.T) {
	for _, p := range listPackages(t) {
		name, _ := rel(p.ImportPath)
		if !contains(decisions, name) {
			continue
		}
		for _, imp := range p.Imports {
			for _, k := range kernel {
				if imp == k || strings.HasPrefix(imp, k+"/") {
					t.Errorf("decision package %s imports %s: it must not touch the kernel (move that to loader or control/daemon)", name, imp)
				}
			}
		}
		for _, dep := range p.Deps {
			d, ours := rel(dep)
			if ours && (d == "loader" || d == "control/daemon") {
				t.Errorf("decision package %s depends on %s", name, d)
			}
		}
	}
}

func TestPackagesSayWhatTheyMayTouch(t *testing.T) {
	for _, p := range listPackages(t) {
		name, _ := rel(p.ImportPath)
		if _, product := layer[name]; !product || p.Name == "main" {
			continue
		}
		if len(p.Doc) < 40 {
			t.Errorf("package %s has no doc comment saying what it holds", name)
		}
	}
}
