package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdplb/xdplb/tests/testenv"
)

const (
	// BridgeName is the name of the bridge inside the switch namespace.
	BridgeName = "br0"
	// HostIface is the name of every host's interface toward the wire.
	HostIface = "eth1"
	// SwitchName is the suffix of the switch namespace ("<prefix>-sw").
	SwitchName = "sw"

	netnsDir = "/run/netns"
	// OwnerDir holds one owner file per live Net ("<prefix>.owner"), so that a
	// later run can tell what a killed run left behind.
	OwnerDir = "/run/xdplb-testnet"

	maxHostName = 13 // "v-" + name must fit IFNAMSIZ-1 (15)
	maxPrefix   = 10
)

var (
	validPrefix   = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
	validHostName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	// generatedPrefix is the shape of prefixes Create makes up; SweepStale
	// only ever touches namespaces whose prefix has this shape.
	generatedPrefix = regexp.MustCompile(`^xl[0-9a-f]{6}$`)
)

// Options configure a Net. The zero value is usable.
type Options struct {
	// Prefix of every namespace of this Net. Empty: "xl" + 6 random hex
	// digits. At most 10 characters of [a-z0-9], starting with a letter.
	Prefix string
	// IPv6 keeps IPv6 enabled in the namespaces. By default it is disabled
	// so the wire only carries what the test sends (no router solicitations,
	// MLD reports, DAD probes).
	IPv6 bool
	// NoSweep disables the removal of namespaces left by dead runs.
	NoSweep bool
	// Logf, if set, receives progress and cleanup messages.
	Logf func(format string, args ...any)
}

// Net is one private L2 network: a switch namespace with a bridge and any
// number of hosts attached to it.
type Net struct {
	// Prefix is the unique prefix of every namespace of this Net.
	Prefix string
	// Switch is a handle to the switch namespace, which holds the bridge.
	Switch netns.NsHandle
	// SwitchNS is the name of the switch namespace ("<prefix>-sw").
	SwitchNS string
	// BridgeIndex is the ifindex of the bridge inside the switch namespace.
	BridgeIndex int

	opts Options

	mu      sync.Mutex
	hosts   map[string]*Host
	order   []*Host
	procs   []*Process
	closed  bool
	nsNames []string // every named namespace created, in creation order
}

// Create builds an empty network (switch namespace and bridge) for callers
// that are not tests, such as the demo and benchmark binaries. The caller
// must call Close; defer it and also call it from a signal handler.
func Create(opts Options) (_ *Net, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testnet: creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
	}
	if opts.Prefix == "" {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("testnet: random prefix: %w", err)
		}
		opts.Prefix = "xl" + hex.EncodeToString(b[:])
	}
	if len(opts.Prefix) > maxPrefix || !validPrefix.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("testnet: invalid prefix %q: want at most %d characters of [a-z0-9] starting with a letter", opts.Prefix, maxPrefix)
	}
	if !opts.NoSweep {
		removed, err := SweepStale()
		if err != nil {
			logf(opts.Logf, "testnet: sweeping stale namespaces: %v", err)
		}
		for _, name := range removed {
			logf(opts.Logf, "testnet: removed stale namespace %s", name)
		}
	}

	n := &Net{
		Prefix:   opts.Prefix,
		SwitchNS: opts.Prefix + "-" + SwitchName,
		Switch:   netns.None(),
		opts:     opts,
		hosts:    make(map[string]*Host),
	}
	if err := n.writeOwner(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := n.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()

	if n.Switch, err = n.newNamedNS(n.SwitchNS); err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(n.Switch)
	if err != nil {
		return nil, fmt.Errorf("testnet: netlink handle in %s: %w", n.SwitchNS, err)
	}
	defer h.Close()
	if err := setUp(h, "lo"); err != nil {
		return nil, fmt.Errorf("testnet: %s: %w", n.SwitchNS, err)
	}
	snooping := false
	br := &netlink.Bridge{
		LinkAttrs:         netlink.LinkAttrs{Name: BridgeName},
		MulticastSnooping: &snooping,
	}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("testnet: add bridge %s in %s: %w", BridgeName, n.SwitchNS, err)
	}
	if err := setUp(h, BridgeName); err != nil {
		return nil, fmt.Errorf("testnet: %s: %w", n.SwitchNS, err)
	}
	l, err := h.LinkByName(BridgeName)
	if err != nil {
		return nil, fmt.Errorf("testnet: look up bridge in %s: %w", n.SwitchNS, err)
	}
	n.BridgeIndex = l.Attrs().Index
	n.logf("testnet: created switch namespace %s with bridge %s", n.SwitchNS, BridgeName)
	return n, nil
}

// New is Create for tests: it skips the test when not running as root, fails
// it on error, and registers Close with t.Cleanup (which also runs when the
// test fails or panics). When the test failed, the output of every process
// started with Host.Start is logged before it is stopped.
func New(tb testing.TB, opts Options) *Net {
	tb.Helper()
	testenv.RequireRoot(tb, "creates network namespaces, veth pairs and bridges")
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	n, err := Create(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			n.logProcessOutput(tb)
		}
		if err := n.Close(); err != nil {
			tb.Errorf("testnet: close: %v", err)
		}
	})
	return n
}

// Host returns the host called name, or nil.
func (n *Net) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hosts[name]
}

// Hosts returns every host in the order they were added.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.order...)
}

// Namespaces returns the names of all namespaces of this Net (switch first).
func (n *Net) Namespaces() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.nsNames...)
}

// SwitchDo runs fn inside the switch namespace, like Host.Do.
func (n *Net) SwitchDo(fn func() error) error {
	return do(n.Switch, fn)
}

// Close stops every process started through Host.Start, deletes the veth
// pairs and the bridge, and removes the namespaces. It is safe to call more
// than once and from several goroutines; it keeps going after an error and
// returns all of them.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	procs := n.procs
	hosts := n.order
	names := n.nsNames
	n.mu.Unlock()

	var errs []error
	// 1. Processes first, so nothing holds a namespace open.
	for _, p := range procs {
		// A process that exits badly is the test's business, not a
		// cleanup failure: log it only.
		if err := p.Stop(2 * time.Second); err != nil {
			n.logf("testnet: stop %s: %v", p, err)
		}
	}
	// 2. Veth pairs: deleting the switch end deletes both ends, even if a
	// stray process keeps a host namespace alive.
	if n.Switch.IsOpen() {
		if h, err := netlink.NewHandleAt(n.Switch); err != nil {
			errs = append(errs, fmt.Errorf("netlink handle in %s: %w", n.SwitchNS, err))
		} else {
			for _, host := range hosts {
				if host.PeerName == "" {
					continue
				}
				if l, err := h.LinkByName(host.PeerName); err == nil {
					if err := h.LinkDel(l); err != nil {
						errs = append(errs, fmt.Errorf("delete veth %s in %s: %w", host.PeerName, n.SwitchNS, err))
					}
				}
			}
			if l, err := h.LinkByName(BridgeName); err == nil {
				if err := h.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete bridge in %s: %w", n.SwitchNS, err))
				}
			}
			h.Close()
		}
	}
	// 3. Handles, then the bind mounts that name the namespaces.
	for _, host := range hosts {
		if host.NS.IsOpen() {
			host.NS.Close()
		}
	}
	if n.Switch.IsOpen() {
		n.Switch.Close()
	}
	for i := len(names) - 1; i >= 0; i-- {
		if err := deleteNamedNS(names[i]); err != nil {
			errs = append(errs, err)
		}
	}
	// 4. The owner file last: if anything above failed hard, a later sweep
	// still knows this prefix belonged to a run that is gone.
	if len(errs) == 0 {
		if err := os.Remove(n.ownerPath()); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove owner file: %w", err))
		}
	}
	n.logf("testnet: removed %d namespaces of %s", len(names), n.Prefix)
	if len(errs) > 0 {
		return fmt.Errorf("testnet: close %s: %w", n.Prefix, errors.Join(errs...))
	}
	return nil
}

func (n *Net) logf(format string, args ...any) { logf(n.opts.Logf, format, args...) }

func logf(f func(string, ...any), format string, args ...any) {
	if f != nil {
		f(format, args...)
	}
}

func (n *Net) logProcessOutput(tb testing.TB) {
	n.mu.Lock()
	procs := append([]*Process(nil), n.procs...)
	n.mu.Unlock()
	for _, p := range procs {
		tb.Logf("testnet: output of %s:\n--- stdout ---\n%s\n--- stderr ---\n%s", p, p.Stdout(), p.Stderr())
	}
}

// newNamedNS creates a network namespace bind-mounted at /run/netns/name. The
// namespace is created by a goroutine that locks its OS thread and never
// unlocks it, so the runtime throws that thread away instead of reusing it in
// the wrong namespace.
func (n *Net) newNamedNS(name string) (netns.NsHandle, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return netns.None(), errors.New("testnet: net is closed")
	}
	n.mu.Unlock()

	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread has left the root namespace and
		// dies with this goroutine.
		h, err := netns.NewNamed(name)
		if err != nil {
			ch <- result{netns.None(), fmt.Errorf("testnet: create namespace %s: %w", name, err)}
			return
		}
		err = configureNS(n.opts.IPv6)
		if err != nil {
			err = fmt.Errorf("testnet: configure namespace %s: %w", name, err)
		}
		ch <- result{h, err}
	}()
	r := <-ch
	if r.h.IsOpen() {
		n.mu.Lock()
		n.nsNames = append(n.nsNames, name)
		n.mu.Unlock()
	}
	return r.h, r.err
}

// configureNS runs on a thread inside a fresh namespace.
func configureNS(ipv6 bool) error {
	if ipv6 {
		return nil
	}
	for _, key := range []string{"net/ipv6/conf/default/disable_ipv6", "net/ipv6/conf/all/disable_ipv6"} {
		if err := writeSysctl(key, "1"); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", filepath.FromSlash(key))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", filepath.FromSlash(key)))
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", key, err)
	}
	return string(trimNewline(b)), nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func deleteNamedNS(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
		// Not mounted (creation failed half way): remove the file.
		if rerr := os.Remove(filepath.Join(netnsDir, name)); rerr != nil && !os.IsNotExist(rerr) {
			return fmt.Errorf("delete namespace %s: %w", name, errors.Join(err, rerr))
		}
	}
	return nil
}

func setUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// Owner files: "<pid> <start time in clock ticks>\n".

func (n *Net) ownerPath() string { return filepath.Join(OwnerDir, n.Prefix+".owner") }

func (n *Net) writeOwner() error {
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return fmt.Errorf("testnet: create %s: %w", OwnerDir, err)
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("testnet: %w", err)
	}
	f, err := os.OpenFile(n.ownerPath(), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if os.IsExist(err) {
			return fmt.Errorf("testnet: prefix %s is already in use (%s exists)", n.Prefix, n.ownerPath())
		}
		return fmt.Errorf("testnet: write owner file: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d %s\n", os.Getpid(), start)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("testnet: write owner file: %w", err)
	}
	return nil
}

// procStartTime returns field 22 of /proc/PID/stat (start time since boot in
// clock ticks), which together with the PID identifies a process even after
// its PID has been reused.
func procStartTime(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may contain spaces; it ends at the last ')'.
	s := string(b)
	end := -1
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ')' {
			end = i
			break
		}
	}
	if end < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[end+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat: too few fields", pid)
	}
	return fields[19], nil
}

func ownerAlive(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return !os.IsNotExist(err) // unreadable: assume alive, touch nothing
	}
	var pid int
	var start string
	if _, err := fmt.Sscanf(string(b), "%d %s", &pid, &start); err != nil || pid <= 0 {
		// Being written right now, or garbage: only a file older than a
		// minute counts as dead.
		st, serr := os.Stat(path)
		return serr != nil || time.Since(st.ModTime()) < time.Minute
	}
	cur, err := procStartTime(pid)
	if err != nil {
		return false // no such process
	}
	return cur == start
}

// SweepStale removes the namespaces of Nets whose owning process is gone
// (killed before its cleanup could run). It only touches prefixes of the
// shape Create generates ("xl" + 6 hex digits) that have an owner file under
// OwnerDir naming a dead process, and returns the namespaces it removed.
func SweepStale() ([]string, error) {
	owners, err := filepath.Glob(filepath.Join(OwnerDir, "*.owner"))
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, owner := range owners {
		prefix := filepath.Base(owner)
		prefix = prefix[:len(prefix)-len(".owner")]
		if !generatedPrefix.MatchString(prefix) || ownerAlive(owner) {
			continue
		}
		names, err := filepath.Glob(filepath.Join(netnsDir, prefix+"-*"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sort.Sort(sort.Reverse(sort.StringSlice(names)))
		ok := true
		for _, path := range names {
			name := filepath.Base(path)
			if err := deleteNamedNS(name); err != nil {
				errs = append(errs, err)
				ok = false
				continue
			}
			removed = append(removed, name)
		}
		if ok {
			if err := os.Remove(owner); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}
