// Package loader is xdplb's boundary with the kernel: it loads the data
// path with its load-time constants, pins its maps and programs under
// <bpffs>/xdplb/<instance>/, attaches it to an interface (bpf_link where the
// kernel has it, netlink where it doesn't), replaces it atomically on
// restart while keeping the pinned connection table, and detaches it.
package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// Hook is where the program runs.
type Hook string

const (
	HookXDP Hook = "xdp"
	HookTC  Hook = "tc"
)

// XDPMode is the XDP attach mode asked for.
type XDPMode string

const (
	XDPAuto    XDPMode = "auto"
	XDPNative  XDPMode = "native"
	XDPGeneric XDPMode = "generic"
)

// DefaultBPFFS is where bpffs lives unless told otherwise.
const DefaultBPFFS = "/sys/fs/bpf"

// Options say what to load and where.
type Options struct {
	BPFFS    string // bpffs mount point; default DefaultBPFFS
	Instance string
	Iface    string
	Hook     Hook
	XDPMode  XDPMode
	Data     bpf.Config
	// Verbose makes verifier errors print whole.
	Verbose bool
	// NoLink attaches through netlink (XDP) and clsact (TC) even where the
	// kernel has bpf_link: the path kernels before 5.9 (XDP) and 6.6 (tcx)
	// take, so tests exercise it on any kernel.
	NoLink bool
	Logger *slog.Logger
}

// Maps are the data path's maps, pinned.
type Maps struct {
	Flows, HalfOpen, Backends, BackendRefused, Maglev, Control, Stats, BackendStats *ebpf.Map
}

func (m *Maps) close() {
	for _, mp := range []*ebpf.Map{m.Flows, m.HalfOpen, m.Backends, m.BackendRefused, m.Maglev, m.Control, m.Stats, m.BackendStats} {
		if mp != nil {
			mp.Close()
		}
	}
}

// Attachment describes how the program is attached.
type Attachment struct {
	Iface   string
	Ifindex int
	Hook    Hook
	Mode    string // native, generic (XDP); tcx, clsact (TC)
	Via     string // bpf_link or netlink
	ProgID  ebpf.ProgramID
	Reason  string // why the mode is not the one asked for, if it isn't
	Clock   string
	Insns   int // instructions the verifier saw (xlated)
}

func (a Attachment) String() string {
	s := fmt.Sprintf("%s %s on %s via %s (prog id %d)", a.Hook, a.Mode, a.Iface, a.Via, a.ProgID)
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

// Instance is a loaded, pinned and attached data path.
type Instance struct {
	Dir        string
	Maps       Maps
	Prog       *ebpf.Program
	Attachment Attachment
	// Replaced is true when an already attached instance was upgraded in
	// place (its connection table kept).
	Replaced bool
}

// Close releases this process's handles; pins and attachment stay.
func (i *Instance) Close() {
	i.Maps.close()
	if i.Prog != nil {
		i.Prog.Close()
	}
}

// PinDir is the directory holding an instance's pins.
func PinDir(bpffs, instance string) string {
	if bpffs == "" {
		bpffs = DefaultBPFFS
	}
	return filepath.Join(bpffs, "xdplb", instance)
}

const (
	pinLinkXDP = "link_xdp"
	pinLinkTC  = "link_tc"
	pinProgXDP = "prog_xdp"
	pinProgTC  = "prog_tc"
)

var mapNames = []string{bpf.MapFlows, bpf.MapHalfOpen, bpf.MapBackends, bpf.MapBackendRefused,
	bpf.MapMaglev, bpf.MapControl, bpf.MapStats, bpf.MapBackendStats}

// Start loads, pins and attaches the data path, or upgrades an instance
// that is already attached: the new program is loaded against the pinned
// maps and swapped in atomically, so no tracked connection is lost. On
// error nothing new is left attached or pinned.
func Start(opts Options) (_ *Instance, err error) {
	if opts.BPFFS == "" {
		opts.BPFFS = DefaultBPFFS
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Hook != HookXDP && opts.Hook != HookTC {
		return nil, fmt.Errorf("hook %q: want xdp or tc", opts.Hook)
	}
	if opts.XDPMode == "" {
		opts.XDPMode = XDPAuto
	}
	iface, err := interfaceByName(opts.Iface)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock rlimit: %w", err)
	}
	if err := ensureBPFFS(opts.BPFFS); err != nil {
		return nil, err
	}
	dir := PinDir(opts.BPFFS, opts.Instance)
	fresh := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fresh = true
	}
	if err := checkHookConflict(dir, opts.Hook); err != nil {
		return nil, err
	}
	if err := checkForeignProgram(opts, iface); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	defer func() {
		if err != nil && fresh {
			os.RemoveAll(dir)
		}
	}()

	spec, err := bpf.LoadSpec(opts.Data)
	if err != nil {
		return nil, err
	}
	for _, name := range mapNames {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	progName := bpf.ProgXDP
	if opts.Hook == HookTC {
		progName = bpf.ProgTC
	}
	// Load only the program this hook runs.
	for name := range spec.Programs {
		if name != progName {
			delete(spec.Programs, name)
		}
	}
	copts := ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}}
	if opts.Verbose {
		copts.Programs.LogLevel = ebpf.LogLevelInstruction
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, copts)
	if err != nil {
		return nil, loadError(err, dir, opts)
	}
	inst := &Instance{Dir: dir, Prog: coll.Programs[progName]}
	delete(coll.Programs, progName)
	inst.Maps = Maps{
		Flows: coll.Maps[bpf.MapFlows], HalfOpen: coll.Maps[bpf.MapHalfOpen], Backends: coll.Maps[bpf.MapBackends],
		BackendRefused: coll.Maps[bpf.MapBackendRefused], Maglev: coll.Maps[bpf.MapMaglev],
		Control: coll.Maps[bpf.MapControl], Stats: coll.Maps[bpf.MapStats], BackendStats: coll.Maps[bpf.MapBackendStats],
	}
	for _, name := range mapNames {
		delete(coll.Maps, name)
	}
	coll.Close() // the internal .rodata/.bss handles; the program holds its own
	defer func() {
		if err != nil {
			inst.Close()
		}
	}()

	if err := initControl(inst.Maps.Control); err != nil {
		return nil, err
	}
	var att Attachment
	switch opts.Hook {
	case HookXDP:
		att, inst.Replaced, err = attachXDP(opts, dir, iface, inst.Prog)
	case HookTC:
		att, inst.Replaced, err = attachTC(opts, dir, iface, inst.Prog)
	}
	if err != nil {
		return nil, err
	}
	if info, ierr := inst.Prog.Info(); ierr == nil {
		att.ProgID, _ = info.ID()
		if insns, ierr := info.Instructions(); ierr == nil {
			att.Insns = len(insns)
		}
	}
	att.Clock = bpf.ResolveClock(opts.Data.Clock).String()
	inst.Attachment = att
	return inst, nil
}

// initControl makes sure the control entry exists (it does: array maps
// are zeroed), and leaves an existing instance's live table as it is.
func initControl(m *ebpf.Map) error {
	var c bpf.LBControl
	if err := m.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read control map: %w", err)
	}
	return nil
}

func loadError(err error, dir string, opts Options) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		if opts.Verbose {
			return fmt.Errorf("the kernel's verifier rejected the data path:\n%+v", ve)
		}
		return fmt.Errorf("the kernel's verifier rejected the data path: %v (run with --verbose for the whole log)", ve)
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return fmt.Errorf("pinned maps under %s have another layout (left by another xdplb version?): "+
			"run `xdplb detach --instance %s` first, which drops tracked connections: %w", dir, opts.Instance, err)
	}
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("load bpf objects: %w (needs root: CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)", err)
	}
	return fmt.Errorf("load bpf objects: %w", err)
}

// checkHookConflict refuses to start an instance on a hook other than the
// one it is attached with: the two would both translate packets.
func checkHookConflict(dir string, hook Hook) error {
	other, otherHook := pinProgTC, HookTC
	if hook == HookTC {
		other, otherHook = pinProgXDP, HookXDP
	}
	if _, err := os.Stat(filepath.Join(dir, other)); err == nil {
		return fmt.Errorf("this instance is attached on the %s hook: run `xdplb detach` before switching to %s", otherHook, hook)
	}
	return nil
}

// ensureBPFFS mounts bpffs at root when nothing is mounted there.
func ensureBPFFS(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", root, err)
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w (mount it yourself: mount -t bpf bpf %s)", root, err, root)
	}
	return nil
}

// Instances lists the instance names pinned under bpffs.
func Instances(bpffs string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(bpffsOrDefault(bpffs), "xdplb"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func bpffsOrDefault(s string) string {
	if s == "" {
		return DefaultBPFFS
	}
	return s
}

// pinnedProgID returns the ID of a pinned program, 0 if none is pinned.
func pinnedProgID(path string) (ebpf.ProgramID, error) {
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open pinned program %s: %w", path, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

// repin pins prog at dir/name, replacing a program pinned there before.
func repin(prog *ebpf.Program, dir, name string) error {
	path := filepath.Join(dir, name)
	tmp := path + "_new" // bpffs refuses names with dots
	os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin program: %w", err)
	}
	return nil
}

// OpenMaps opens an instance's pinned maps, for inspection without the
// daemon (flows, counters).
func OpenMaps(bpffs, instance string) (*Maps, error) {
	dir := PinDir(bpffs, instance)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("instance %q: nothing pinned at %s: %w", instance, dir, err)
	}
	m := &Maps{}
	targets := map[string]**ebpf.Map{
		bpf.MapFlows: &m.Flows, bpf.MapHalfOpen: &m.HalfOpen, bpf.MapBackends: &m.Backends,
		bpf.MapBackendRefused: &m.BackendRefused, bpf.MapMaglev: &m.Maglev, bpf.MapControl: &m.Control,
		bpf.MapStats: &m.Stats, bpf.MapBackendStats: &m.BackendStats,
	}
	for name, dst := range targets {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*dst = mp
	}
	return m, nil
}

// Close releases the maps.
func (m *Maps) Close() { m.close() }
