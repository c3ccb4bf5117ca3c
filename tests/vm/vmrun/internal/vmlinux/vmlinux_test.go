package vmlinux

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// note is one ELF note: name, type, descriptor.
type note struct {
	name string
	typ  uint32
	desc []byte
}

// fakeVmlinux builds a tiny x86-64 ELF executable with one PT_NOTE segment
// holding notes, as a vmlinux holds its Xen and GNU notes.
func fakeVmlinux(t *testing.T, notes ...note) []byte {
	t.Helper()
	var data bytes.Buffer
	for _, n := range notes {
		name := append([]byte(n.name), 0)
		binary.Write(&data, binary.LittleEndian, [3]uint32{uint32(len(name)), uint32(len(n.desc)), n.typ})
		data.Write(name)
		data.Write(make([]byte, align4(len(name))-len(name)))
		data.Write(n.desc)
		data.Write(make([]byte, align4(len(n.desc))-len(n.desc)))
	}
	const ehsize, phsize = 64, 56
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: 0x1000000, Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: 1, Shentsize: 64,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	prog := elf.Prog64{
		Type: uint32(elf.PT_NOTE), Flags: uint32(elf.PF_R), Off: ehsize + phsize,
		Filesz: uint64(data.Len()), Memsz: uint64(data.Len()), Align: 4,
	}
	var img bytes.Buffer
	binary.Write(&img, binary.LittleEndian, hdr)
	binary.Write(&img, binary.LittleEndian, prog)
	img.Write(data.Bytes())
	return img.Bytes()
}

var (
	gnuNote = note{"GNU", 3, []byte("build-id")}
	pvhNote = note{"Xen", xenElfnotePhys32Entry, []byte{0, 0, 0, 1}}
)

func TestHasPVHEntry(t *testing.T) {
	tests := []struct {
		name string
		img  []byte
		want bool
	}{
		{"PVH note after another note", fakeVmlinux(t, gnuNote, pvhNote), true},
		{"PVH note alone", fakeVmlinux(t, pvhNote), true},
		{"no PVH note", fakeVmlinux(t, gnuNote), false},
		{"Xen note of another type", fakeVmlinux(t, note{"Xen", 17, []byte{1, 2, 3, 4}}), false},
		{"type 18 of another name", fakeVmlinux(t, note{"Linux", xenElfnotePhys32Entry, []byte{1, 2, 3, 4}}), false},
		{"not ELF", []byte("MZ not a kernel"), false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := HasPVHEntry(tt.img); got != tt.want {
				t.Errorf("HasPVHEntry = %v, want %v", got, tt.want)
			}
		})
	}
}

// compressors make a payload as the kernel's build does, each with its own tool.
var compressors = []struct {
	name     string
	compress func(t *testing.T, b []byte) []byte
}{
	{"gzip", func(t *testing.T, b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}},
	{"xz", func(t *testing.T, b []byte) []byte { return compressWith(t, b, "xz", "-c", "--check=crc32") }},
	{"zstd", func(t *testing.T, b []byte) []byte { return compressWith(t, b, "zstd", "-c", "-q") }},
}

func compressWith(t *testing.T, b []byte, tool string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("no %s (apt-get install xz-utils zstd)", tool)
	}
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return out
}

// TestExtract puts a fake vmlinux, compressed, between a setup header and
// trailing data, as in a bzImage, and expects it back byte for byte.
func TestExtract(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("no gzip")
	}
	vmlinux := fakeVmlinux(t, gnuNote, pvhNote)
	for _, c := range compressors {
		t.Run(c.name, func(t *testing.T) {
			var bz bytes.Buffer
			bz.WriteString("MZ\x00\x00 setup code and header ")
			bz.Write(c.compress(t, vmlinux))
			bz.WriteString("\x00\x00\x00\x00 trailing size and padding")
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
			if err := os.WriteFile(src, bz.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := Extract(src, dst); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, vmlinux) {
				t.Errorf("extracted %d bytes, want the %d of the fake vmlinux", len(got), len(vmlinux))
			}
			if _, err := os.Stat(dst + ".tmp"); err == nil {
				t.Error("left dst.tmp behind")
			}
		})
	}
}

// TestExtractRefuses: without a PVH ELF inside, Extract writes nothing.
func TestExtractRefuses(t *testing.T) {
	tests := map[string][]byte{
		"not a kernel":        []byte("MZ not a kernel"),
		"ELF without PVH":     append([]byte("MZ"), compressors[0].compress(t, fakeVmlinux(t, gnuNote))...),
		"broken gzip payload": []byte("MZ\x1f\x8b\x08 not really gzip"),
	}
	for name, bz := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
			if err := os.WriteFile(src, bz, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := Extract(src, dst); err == nil {
				t.Error("Extract accepted a file without a PVH kernel")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("Extract left files behind: %v", entries)
			}
		})
	}
	if err := Extract(filepath.Join(t.TempDir(), "missing"), filepath.Join(t.TempDir(), "vmlinux")); err == nil {
		t.Error("Extract of a missing file: no error")
	}
}
