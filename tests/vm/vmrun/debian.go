package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/xdplb/xdplb/tests/vm/vmrun/internal/apt"
)

// dist is a Debian release whose generic amd64 kernel the matrix can boot.
type dist struct {
	name     string
	suites   []string // in the main archive
	security string   // suite in the security archive
	aliases  []string
}

var dists = []dist{
	{"bullseye", []string{"bullseye"}, "bullseye-security", []string{"5.10", "debian11"}},
	{"bookworm", []string{"bookworm", "bookworm-updates"}, "bookworm-security", []string{"6.1", "debian12"}},
	{"trixie", []string{"trixie", "trixie-updates"}, "trixie-security", []string{"6.12", "debian13"}},
}

// findDist finds the release a kernel spec names (bullseye, 5.10, debian11).
func findDist(spec string) (dist, bool) {
	for _, d := range dists {
		if spec == d.name || slices.Contains(d.aliases, spec) {
			return d, true
		}
	}
	return dist{}, false
}

func distNames() string {
	var names []string
	for _, d := range dists {
		names = append(names, d.name)
	}
	return strings.Join(names, ", ")
}

// sources are the suites of d in the given archives.
func (d dist) sources(mirror, security string) apt.Sources {
	return apt.Sources{Mirror: mirror, Suites: d.suites, Security: security, SecuritySuite: d.security}
}

// mirrors are the Debian archive and security archive the private apt roots
// use: XDPLB_VM_MIRROR and XDPLB_VM_SECURITY_MIRROR, or else those of the
// host's apt.
func mirrors() (mirror, security string, err error) {
	mirror, security = os.Getenv("XDPLB_VM_MIRROR"), os.Getenv("XDPLB_VM_SECURITY_MIRROR")
	if mirror == "" || security == "" {
		m, s := apt.HostMirrors()
		if mirror == "" {
			mirror = m
		}
		if security == "" {
			security = s
		}
	}
	if mirror == "" {
		return "", "", errors.New("no Debian archive in /etc/apt/sources.list{,.d}: set XDPLB_VM_MIRROR to a Debian mirror URI (…/debian)")
	}
	return mirror, security, nil
}

// kernelPackage is the versioned package that linux-image-amd64 points to in
// root, e.g. linux-image-6.1.0-56-amd64.
func kernelPackage(ctx context.Context, root *apt.Root) (string, error) {
	meta, err := root.Show(ctx, "linux-image-amd64")
	if err != nil {
		return "", err
	}
	pkg := kernelDep(meta["Depends"])
	if pkg == "" {
		return "", fmt.Errorf("linux-image-amd64 in %s depends on no kernel image: %q", root.Name, meta["Depends"])
	}
	return pkg, nil
}

// kernelDep picks the generic kernel image out of a Depends field such as
// "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
func kernelDep(depends string) string {
	for _, alt := range strings.FieldsFunc(depends, func(r rune) bool { return r == ',' || r == '|' }) {
		name, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
		if strings.HasPrefix(name, "linux-image-") && strings.HasSuffix(name, "-amd64") && !strings.Contains(name, "cloud") && !strings.Contains(name, "-rt-") {
			return name
		}
	}
	return ""
}
