// Package vmlinux takes the uncompressed ELF kernel (vmlinux) out of a
// compressed x86 kernel image (bzImage), so that qemu can boot it directly
// through its PVH entry point: under TCG, decompressing the kernel at every
// boot costs seconds of emulated time.
//
// It looks for the payload by the magic number of each compressor a bzImage
// may use and decompresses it with the compressor's own tool (xz, zstd,
// gzip); it reads no header of the bzImage, so it does not care which
// kernel version made it.
package vmlinux

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
)

// payloadFormats are the magic numbers of the compressors a bzImage payload
// may use, and the tool that undoes each.
var payloadFormats = []struct {
	magic string
	tool  []string
}{
	{"\xfd7zXZ\x00", []string{"xz", "-dc", "--single-stream"}},
	{"\x28\xb5\x2f\xfd", []string{"zstd", "-dc"}},
	{"\x1f\x8b\x08", []string{"gzip", "-dc"}},
}

// Extract writes the ELF kernel inside bzImage to dst, if it has a PVH entry
// note (the way qemu can boot it). It writes dst.tmp and renames it, so dst
// is either whole or absent.
func Extract(bzImage, dst string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	for _, f := range payloadFormats {
		i := bytes.Index(b, []byte(f.magic))
		if i < 0 {
			continue
		}
		cmd := exec.Command(f.tool[0], f.tool[1:]...)
		cmd.Stdin = bytes.NewReader(b[i:])
		out, _ := cmd.Output() // trailing data after the stream makes some tools complain
		if !HasPVHEntry(out) {
			continue
		}
		tmp := dst + ".tmp"
		if err := os.WriteFile(tmp, out, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	}
	return errors.New("no ELF kernel with a PVH entry inside " + bzImage)
}

// xenElfnotePhys32Entry is the note type of the PVH entry point
// (XEN_ELFNOTE_PHYS32_ENTRY), in a note named "Xen".
const xenElfnotePhys32Entry = 18

// HasPVHEntry says whether img is an ELF file with a PVH entry note.
func HasPVHEntry(img []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		// Each note: namesz, descsz, type (uint32 each), then the name and
		// the descriptor, each padded to 4 bytes.
		for len(data) >= 12 {
			namesz := binary.LittleEndian.Uint32(data[0:4])
			descsz := binary.LittleEndian.Uint32(data[4:8])
			typ := binary.LittleEndian.Uint32(data[8:12])
			name := data[12:min(len(data), 12+int(namesz))]
			if typ == xenElfnotePhys32Entry && strings.TrimRight(string(name), "\x00") == "Xen" {
				return true
			}
			next := 12 + align4(int(namesz)) + align4(int(descsz))
			if next > len(data) || next <= 0 {
				break
			}
			data = data[next:]
		}
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }
