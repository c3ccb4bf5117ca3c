// Package deb reads Debian binary packages (.deb files) of any kind: their
// control fields, the files of their data archive, and Debian control data in
// general (a package's control file, `apt-cache show`, deb822 .sources).
//
// It reads packages with dpkg-deb, which knows every compression a .deb may
// use (xz, zstd, gzip or none), and installs nothing: Extract writes files
// into a directory the caller names, and nowhere else.
package deb

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Fields returns the named control fields of the package in file (all of
// them when no name is given), e.g. Fields(f, "Package", "Version").
func Fields(file string, names ...string) (map[string]string, error) {
	out, err := exec.Command("dpkg-deb", append([]string{"-f", file}, names...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("dpkg-deb -f %s: %w: %s", file, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("run dpkg-deb (apt-get install dpkg): %w", err)
	}
	return ParseControl(string(out)), nil
}

// KeepFunc says where a path of the data archive goes under the directory
// Extract writes to, or that it is not wanted (false). It sees names as
// dpkg-deb lists them ("./usr/lib/...").
type KeepFunc func(name string) (dst string, keep bool)

// Extract writes the files of the package's data archive that keep wants into
// dir. A destination that would leave dir is an error. Directories and
// regular files are written (0755 and 0644: modes and owners are not kept);
// links and special files are skipped.
func Extract(file, dir string, keep KeepFunc) error {
	return readData(file, func(r io.Reader) error { return extractTar(r, dir, keep) })
}

// Unpack writes the whole data archive of the package into dir as dpkg
// would install it below dir: directories, regular files, symbolic and hard
// links, with their modes (setuid bits included) and, when the caller is
// root, their owners. A file already there is replaced; a name that would
// leave dir, through ".." or a symbolic link, is an error. It returns the
// package's paths as dpkg lists them ("/", "/usr", "/usr/bin/x"), in
// archive order.
func Unpack(file, dir string) ([]string, error) {
	var paths []string
	err := readData(file, func(r io.Reader) error {
		var err error
		paths, err = unpackTar(r, dir, os.Geteuid() == 0)
		return err
	})
	return paths, err
}

// Control returns the package's control file as it is (dpkg-deb -f with no
// field names).
func Control(file string) (string, error) {
	out, err := exec.Command("dpkg-deb", "-f", file).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("dpkg-deb -f %s: %w: %s", file, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("run dpkg-deb (apt-get install dpkg): %w", err)
	}
	return string(out), nil
}

// ControlFiles returns the files of the package's control archive by name
// ("control", "md5sums", "conffiles", "postinst", ...).
func ControlFiles(file string) (map[string]string, error) {
	files := map[string]string{}
	err := readArchive(file, "--ctrl-tarfile", func(r io.Reader) error {
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read control archive: %w", err)
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			b, err := io.ReadAll(io.LimitReader(tr, 16<<20))
			if err != nil {
				return err
			}
			files[strings.TrimPrefix(h.Name, "./")] = string(b)
		}
	})
	return files, err
}

// readData streams the package's data archive (a tar) to read.
func readData(file string, read func(io.Reader) error) error {
	return readArchive(file, "--fsys-tarfile", read)
}

// readArchive streams one of the package's archives, as dpkg-deb's option
// which (--fsys-tarfile, --ctrl-tarfile) gives it, to read.
func readArchive(file, which string, read func(io.Reader) error) error {
	cmd := exec.Command("dpkg-deb", which, file)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run dpkg-deb (apt-get install dpkg): %w", err)
	}
	xerr := read(out)
	io.Copy(io.Discard, out) // let dpkg-deb finish writing
	werr := cmd.Wait()
	if xerr != nil {
		return xerr
	}
	if werr != nil {
		return fmt.Errorf("dpkg-deb %s: %w: %s", which, werr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// extractTar writes the entries of the tar stream r that keep wants into dir,
// through an os.Root so that no name can reach outside it.
func extractTar(r io.Reader, dir string, keep KeepFunc) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read package data: %w", err)
		}
		name, ok := keep(h.Name)
		if !ok || name == "" || filepath.Clean(name) == "." { // dir itself
			continue
		}
		if !filepath.IsLocal(name) {
			return fmt.Errorf("package data: %q would be written outside %s", h.Name, dir)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return err
			}
			f, err := root.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}

// unpackTar is Unpack's work on the tar stream r; chown says whether to set
// owners.
func unpackTar(r io.Reader, dir string, chown bool) ([]string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var paths []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return paths, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read package data: %w", err)
		}
		name := filepath.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." || name == "/" {
			paths = append(paths, "/.")
			continue
		}
		if !filepath.IsLocal(name) {
			return nil, fmt.Errorf("package data: %q would be written outside %s", h.Name, dir)
		}
		paths = append(paths, "/"+name)
		mode := h.FileInfo().Mode()
		if h.Typeflag != tar.TypeDir {
			if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return nil, err
			}
			// Replace what is there (a file of another package, or a link).
			if st, err := root.Lstat(name); err == nil && !st.IsDir() {
				if err := root.Remove(name); err != nil {
					return nil, err
				}
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return nil, err
			}
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return nil, err
			}
		case tar.TypeLink:
			target := filepath.Clean(strings.TrimPrefix(h.Linkname, "./"))
			if !filepath.IsLocal(target) {
				return nil, fmt.Errorf("package data: hard link %q to %q outside %s", h.Name, h.Linkname, dir)
			}
			if err := root.Link(target, name); err != nil {
				return nil, err
			}
			continue // shares the target's mode and owner
		default:
			return nil, fmt.Errorf("package data: %q is a %q entry, which no Debian package here should hold", h.Name, h.Typeflag)
		}
		if chown {
			if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
				return nil, err
			}
		}
		if h.Typeflag != tar.TypeSymlink {
			// After chown, which clears setuid bits.
			if err := root.Chmod(name, mode.Perm()|mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
				return nil, err
			}
		}
	}
}

// ParseControl reads the first stanza of Debian control data: "Key: value"
// lines, with continuation lines (starting with a space or a tab) appended to
// the field's value after a newline.
func ParseControl(s string) map[string]string {
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}
