// Package loader is xdplb's boundary with the kernel's BPF: it loads the
// data path with its load-time constants, pins its maps and program under
// <bpffs>/xdplb/<instance>/, attaches it to an interface (bpf_link where the
// kernel has it, netlink where it doesn't), replaces it atomically on
// restart while keeping the pinned connection table, detaches it, and gives
// the control plane the pinned maps (Datapath).
//
// It may touch BPF objects, bpffs and the interface's attachments (through
// netlink), and nothing else of the node. Of xdplb it imports only bpf: it
// knows nothing of configuration files, health or balancing.
package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// Options say what to load and where.
type Options struct {
	BPFFS    string // bpffs mount point; default bpf.DefaultBPFFS
	Instance string
	Iface    string
	Hook     bpf.Hook
	XDPMode  bpf.XDPMode
	Data     bpf.Config
	// Verbose makes verifier errors print whole.
	Verbose bool
	// NoLink attaches through netlink (XDP) and clsact (TC) even where the
	// kernel has bpf_link: the path kernels before 5.9 (XDP) and 6.6 (tcx)
	// take, so tests exercise it on any kernel.
	NoLink bool
	Logger *slog.Logger
}

// Attachment describes how the program is attached.
type Attachment struct {
	Iface   string
	Ifindex int
	Hook    bpf.Hook
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
	Maps       *bpf.Maps
	Prog       *ebpf.Program
	Attachment Attachment
	// Replaced is true when an already attached instance was upgraded in
	// place (its connection table kept).
	Replaced bool
}

// Close releases this process's handles; pins and attachment stay.
func (i *Instance) Close() {
	if i.Maps != nil {
		i.Maps.Close()
	}
	if i.Prog != nil {
		i.Prog.Close()
	}
}

// crashPoint, when set (by the loader's tests only), is called at each
// step of Start that a crash could interrupt, with the step's name; the
// test's child process kills itself there.
var crashPoint func(step string)

func crashAt(step string) {
	if crashPoint != nil {
		crashPoint(step)
	}
}

// Start loads, pins and attaches the data path, or upgrades an instance
// that already exists: the new program is loaded against the pinned maps
// and swapped in atomically, so no tracked connection is lost.
//
// A new instance is built in a temporary directory next to its final one
// (maps and program pinned there) and renamed into place before anything
// is attached, so the instance directory exists only whole: a start killed
// at any point leaves either nothing the next start would mistake for an
// instance, or a whole instance the next start takes over. On error
// nothing new is left attached or pinned.
func Start(opts Options) (_ *Instance, err error) {
	if opts.BPFFS == "" {
		opts.BPFFS = bpf.DefaultBPFFS
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Hook != bpf.HookXDP && opts.Hook != bpf.HookTC {
		return nil, fmt.Errorf("hook %q: want xdp or tc", opts.Hook)
	}
	if opts.XDPMode == "" {
		opts.XDPMode = bpf.XDPAuto
	}
	dir, err := bpf.InstanceDir(opts.BPFFS, opts.Instance)
	if err != nil {
		return nil, err
	}
	iface, err := interfaceByName(opts.Iface)
	if err != nil {
		return nil, err
	}
	// Before any BPF call (LoadSpec probes the clock helper): on kernels
	// before 5.11 BPF memory counts against RLIMIT_MEMLOCK (64 KiB for root
	// on Ubuntu 20.04), and cilium/ebpf remembers a probe that failed for
	// lack of it (object names then go unset for the whole process).
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock rlimit: %w", err)
	}
	spec, err := bpf.LoadSpec(opts.Data)
	if err != nil {
		return nil, err
	}
	if err := ensureBPFFS(opts.BPFFS); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(bpf.StateDir(opts.BPFFS), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", bpf.StateDir(opts.BPFFS), err)
	}
	names := pinNames(spec)
	removeStaleBuilds(opts.BPFFS, opts.Instance, names, opts.Logger)

	fresh := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fresh = true
	} else if err != nil {
		return nil, fmt.Errorf("instance %q: %w", opts.Instance, err)
	}
	if !fresh {
		if err := checkLegacyLayout(dir, opts.Instance); err != nil {
			return nil, err
		}
		if err := checkHookConflict(dir, opts.Hook); err != nil {
			return nil, err
		}
		if err := checkNotMoved(opts, iface); err != nil {
			return nil, err
		}
		if err := checkTableSize(dir, spec, opts); err != nil {
			return nil, err
		}
		if err := replaceCounterMaps(dir, spec, opts.Logger); err != nil {
			return nil, err
		}
	}
	if err := checkForeignProgram(opts, iface); err != nil {
		return nil, err
	}

	pinDir := dir
	if fresh {
		pinDir = filepath.Join(bpf.StateDir(opts.BPFFS), buildDirPrefix(opts.Instance)+strconv.Itoa(os.Getpid()))
		if err := os.Mkdir(pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", pinDir, err)
		}
		defer func() {
			if err != nil {
				// Whatever the step that failed, the build directory
				// (or, once renamed, the instance) holds only our pins.
				if _, serr := os.Stat(pinDir); serr == nil {
					removePins(pinDir, names)
				} else {
					removeInstance(opts.BPFFS, opts.Instance, dir, names)
				}
			}
		}()
	}

	inst, err := load(spec, opts, pinDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			inst.Close()
		}
	}()
	crashAt("loaded")
	if fresh {
		if err := repin(inst.Prog, pinDir, opts.Hook.ProgPin()); err != nil {
			return nil, err
		}
		crashAt("pinned")
		if err := os.Rename(pinDir, dir); err != nil {
			return nil, fmt.Errorf("move instance %q into place: %w", opts.Instance, err)
		}
		crashAt("renamed")
	}
	inst.Dir = dir

	var att Attachment
	switch opts.Hook {
	case bpf.HookXDP:
		att, inst.Replaced, err = attachXDP(opts, dir, iface, inst.Prog)
	case bpf.HookTC:
		att, inst.Replaced, err = attachTC(opts, dir, iface, inst.Prog)
	}
	if err != nil {
		return nil, err
	}
	crashAt("attached")
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

// load loads the maps (pinned by name in pinDir, reused where pinned
// already) and the one program the hook runs.
func load(spec *ebpf.CollectionSpec, opts Options, pinDir string) (*Instance, error) {
	for name, m := range spec.Maps {
		if isDataPathMap(name) {
			m.Pinning = ebpf.PinByName
		}
	}
	// Load only the program this hook runs.
	for name := range spec.Programs {
		if name != opts.Hook.Prog() {
			delete(spec.Programs, name)
		}
	}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	if opts.Verbose {
		copts.Programs.LogLevel = ebpf.LogLevelInstruction
	}
	var maps bpf.Maps
	var prog *ebpf.Program
	var err error
	switch opts.Hook {
	case bpf.HookXDP:
		var objs struct {
			bpf.Maps
			Prog *ebpf.Program `ebpf:"xdplb_xdp"`
		}
		err = spec.LoadAndAssign(&objs, copts)
		maps, prog = objs.Maps, objs.Prog
	case bpf.HookTC:
		var objs struct {
			bpf.Maps
			Prog *ebpf.Program `ebpf:"xdplb_tc"`
		}
		err = spec.LoadAndAssign(&objs, copts)
		maps, prog = objs.Maps, objs.Prog
	}
	if err != nil {
		return nil, loadError(err, pinDir, opts)
	}
	return &Instance{Maps: &maps, Prog: prog}, nil
}

// isDataPathMap tells the data path's maps from the internal ones
// (.rodata, .bss) that hold global variables and are never pinned.
func isDataPathMap(name string) bool { return !strings.HasPrefix(name, ".") }

// pinNames lists every name xdplb pins in an instance directory: the data
// path's maps, and each hook's program and link.
func pinNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Maps {
		if isDataPathMap(name) {
			names = append(names, name)
		}
	}
	for _, h := range bpf.Hooks {
		names = append(names, h.ProgPin(), h.LinkPin(), h.ProgPin()+pinNewSuffix)
	}
	return append(names, legacyMapPins...)
}

// legacyMapPins are the map names xdplb pinned before its maps were named
// xdplb_*, so that detach removes an instance an older release left.
var legacyMapPins = []string{"flows", "half_open", "backends", "backend_refused", "maglev", "control", "stats", "backend_stats"}

// checkLegacyLayout refuses an instance pinned by an xdplb release from
// before the xdplb_* map names: its flow table has another layout, so its
// connections cannot be taken over; the operator decides when to drop them.
func checkLegacyLayout(dir, instance string) error {
	if _, err := os.Stat(filepath.Join(dir, legacyMapPins[0])); err != nil {
		return nil
	}
	return fmt.Errorf("instance %q was pinned by an older xdplb (maps %s under %s) whose flow table this release cannot take over: "+
		"run `xdplb detach --instance %s` (it drops the tracked connections; new ones go on at once) and start again",
		instance, strings.Join(legacyMapPins[:3], ", ")+", ...", dir, instance)
}

// buildDirPrefix names the temporary directories an instance is built in:
// _build-<instance>-<pid> (bpffs refuses dots; an instance name never starts
// with "_", so no instance is mistaken for a build).
func buildDirPrefix(instance string) string { return "_build-" + instance + "-" }

// removeStaleBuilds removes the build directories of this instance that a
// start killed before its rename left behind (their process is gone):
// only the pins xdplb makes are unlinked, then the empty directory.
func removeStaleBuilds(bpffs, instance string, names []string, log *slog.Logger) {
	entries, err := os.ReadDir(bpf.StateDir(bpffs))
	if err != nil {
		return
	}
	prefix := buildDirPrefix(instance)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		dir := filepath.Join(bpf.StateDir(bpffs), e.Name())
		if err := removePins(dir, names); err != nil {
			log.Warn("stale build directory of a killed start left in place", "dir", dir, "err", err)
			continue
		}
		log.Info("removed the build directory of a start that was killed", "dir", dir)
	}
}

func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// removePins unlinks the names xdplb pins in dir, then removes dir if it
// is empty. Anything else found there is left alone, and reported.
func removePins(dir string, names []string) error {
	var errs []error
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.ENOTEMPTY) {
			left, _ := os.ReadDir(dir)
			var ls []string
			for _, e := range left {
				ls = append(ls, e.Name())
			}
			errs = append(errs, fmt.Errorf("%s holds files xdplb did not pin (%s): left in place", dir, strings.Join(ls, ", ")))
		} else {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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

// checkTableSize refuses a start whose connection table is not the size of
// the pinned one: a hash map cannot be resized in place, and a start that
// made a new one would drop every tracked connection.
func checkTableSize(dir string, spec *ebpf.CollectionSpec, opts Options) error {
	name := bpf.TableEstablished.MapName()
	ms, ok := spec.Maps[name]
	if !ok {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		return nil // no table pinned: the load pins one
	}
	defer m.Close()
	if have := m.MaxEntries(); have != ms.MaxEntries {
		return fmt.Errorf("max-conns %d: the pinned connection table of instance %q holds %d connections, and a table "+
			"cannot be resized in place: keep max-conns %d, or run `xdplb detach --instance %s` (drops tracked connections) "+
			"and start again", ms.MaxEntries/2, opts.Instance, have/2, have/2, opts.Instance)
	}
	return nil
}

// checkHookConflict refuses to start an instance on a hook other than the
// one it is attached with: the two would both translate packets.
func checkHookConflict(dir string, hook bpf.Hook) error {
	for _, other := range bpf.Hooks {
		if other == hook {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, other.ProgPin())); err == nil {
			return fmt.Errorf("this instance is attached on the %s hook: run `xdplb detach` before switching to %s", other, hook)
		}
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
	entries, err := os.ReadDir(bpf.StateDir(bpffs))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && bpf.ValidateInstance(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
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

// pinNewSuffix names the pin a program is first made under before it is
// renamed over the old one (bpffs refuses names with dots).
const pinNewSuffix = "_new"

// repin pins prog at dir/name, replacing a program pinned there before.
func repin(prog *ebpf.Program, dir, name string) error {
	if err := pinNew(prog, dir, name); err != nil {
		return err
	}
	return commitPin(dir, name)
}

// pinNew pins prog at dir/name_new, the name a program is pinned under
// while it is being swapped in.
func pinNew(prog *ebpf.Program, dir, name string) error {
	tmp := filepath.Join(dir, name+pinNewSuffix)
	os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	return nil
}

// commitPin renames dir/name_new over dir/name.
func commitPin(dir, name string) error {
	path := filepath.Join(dir, name)
	if err := os.Rename(path+pinNewSuffix, path); err != nil {
		os.Remove(path + pinNewSuffix)
		return fmt.Errorf("pin program: %w", err)
	}
	return nil
}

// OpenMaps opens an instance's pinned maps, for inspection without the
// daemon (flows, counters). It never creates a map.
func OpenMaps(bpffs, instance string) (*bpf.Maps, error) {
	dir, err := bpf.InstanceDir(bpffs, instance)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("instance %q: nothing pinned at %s: %w", instance, dir, err)
	}
	spec, err := bpf.EmbeddedSpec()
	if err != nil {
		return nil, err
	}
	pinned := map[string]*ebpf.Map{}
	closeAll := func() {
		for _, m := range pinned {
			m.Close()
		}
	}
	for name := range spec.Maps {
		if !isDataPathMap(name) {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		pinned[name] = m
	}
	var maps bpf.Maps
	if err := spec.LoadAndAssign(&maps, &ebpf.CollectionOptions{MapReplacements: pinned}); err != nil {
		closeAll()
		return nil, fmt.Errorf("instance %q: pinned maps: %w", instance, err)
	}
	// LoadAndAssign cloned the replacements: ours go.
	closeAll()
	return &maps, nil
}
