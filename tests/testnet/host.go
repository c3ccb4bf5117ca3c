package testnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is one network namespace attached to the bridge by a veth pair.
type Host struct {
	// Name is the short name given to AddHost ("server-1").
	Name string
	// NSName is the namespace name ("<prefix>-server-1"), as listed by
	// `ip netns list`.
	NSName string
	// NS is an open handle to the namespace, valid until Net.Close.
	NS netns.NsHandle
	// Iface is the host's interface toward the wire, always "eth1".
	Iface string
	// IfIndex is the ifindex of Iface inside the host namespace.
	IfIndex int
	// MAC is the hardware address of Iface.
	MAC net.HardwareAddr
	// Addr is the primary address given to AddHost, with its prefix length
	// (invalid when the host was added without an address).
	Addr netip.Prefix
	// PeerName is the switch end of the veth pair ("v-server-1"), inside the
	// switch namespace.
	PeerName string
	// PeerIndex is the ifindex of PeerName inside the switch namespace.
	PeerIndex int
	// PeerMAC is the hardware address of PeerName.
	PeerMAC net.HardwareAddr

	net *Net
}

// IP returns the host's primary address without prefix length.
func (h *Host) IP() netip.Addr { return h.Addr.Addr() }

// Path returns the bind mount naming the namespace, /run/netns/<NSName>.
func (h *Host) Path() string { return filepath.Join(netnsDir, h.NSName) }

// Net returns the network the host belongs to.
func (h *Host) Net() *Net { return h.net }

func (h *Host) String() string { return h.Name }

// AddHost creates namespace "<prefix>-<name>" and plugs it into the bridge:
// a veth pair with eth1 inside the host and "v-<name>" in the switch
// namespace, both up, loopback up, and addrCIDR (e.g. "10.10.10.50/24";
// empty for none) on eth1. MAC addresses are derived from the IPv4 address
// (eth1: 02:58:a:b:c:d, switch end: 02:59:a:b:c:d) so packet dumps are
// readable and runs reproducible; hosts without an address get random ones.
//
// name is at most 13 characters of [a-z0-9-]. If AddHost fails half way, what
// it created is still removed by Net.Close.
func (n *Net) AddHost(name, addrCIDR string) (*Host, error) {
	if len(name) > maxHostName || !validHostName.MatchString(name) || name == SwitchName {
		return nil, fmt.Errorf("testnet: invalid host name %q: want at most %d characters of [a-z0-9-], not %q", name, maxHostName, SwitchName)
	}
	var addr netip.Prefix
	if addrCIDR != "" {
		var err error
		if addr, err = netip.ParsePrefix(addrCIDR); err != nil {
			return nil, fmt.Errorf("testnet: host %s: address %q: %w", name, addrCIDR, err)
		}
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errors.New("testnet: net is closed")
	}
	if _, dup := n.hosts[name]; dup {
		n.mu.Unlock()
		return nil, fmt.Errorf("testnet: host %s already exists", name)
	}
	for _, other := range n.order {
		if addr.IsValid() && other.Addr.IsValid() && other.Addr.Addr() == addr.Addr() {
			n.mu.Unlock()
			return nil, fmt.Errorf("testnet: address %s already used by %s", addr.Addr(), other.Name)
		}
	}
	h := &Host{
		Name:     name,
		NSName:   n.Prefix + "-" + name,
		NS:       netns.None(),
		Iface:    HostIface,
		Addr:     addr,
		PeerName: "v-" + name,
		net:      n,
	}
	// Register first so Close cleans up whatever the steps below create.
	n.hosts[name] = h
	n.order = append(n.order, h)
	n.mu.Unlock()

	var err error
	if h.NS, err = n.newNamedNS(h.NSName); err != nil {
		return nil, err
	}
	h.MAC, h.PeerMAC = macsFor(addr.Addr())

	sw, err := netlink.NewHandleAt(n.Switch)
	if err != nil {
		return nil, fmt.Errorf("testnet: netlink handle in %s: %w", n.SwitchNS, err)
	}
	defer sw.Close()
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: h.PeerName, HardwareAddr: h.PeerMAC},
		PeerName:         HostIface,
		PeerHardwareAddr: h.MAC,
		PeerNamespace:    netlink.NsFd(h.NS),
	}
	if err := sw.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("testnet: add veth %s (switch) / %s (in %s): %w", h.PeerName, HostIface, h.NSName, err)
	}
	peer, err := sw.LinkByName(h.PeerName)
	if err != nil {
		return nil, fmt.Errorf("testnet: look up %s in %s: %w", h.PeerName, n.SwitchNS, err)
	}
	h.PeerIndex = peer.Attrs().Index
	if err := sw.LinkSetMasterByIndex(peer, n.BridgeIndex); err != nil {
		return nil, fmt.Errorf("testnet: attach %s to %s: %w", h.PeerName, BridgeName, err)
	}
	if err := sw.LinkSetUp(peer); err != nil {
		return nil, fmt.Errorf("testnet: set %s up in %s: %w", h.PeerName, n.SwitchNS, err)
	}

	nh, err := netlink.NewHandleAt(h.NS)
	if err != nil {
		return nil, fmt.Errorf("testnet: netlink handle in %s: %w", h.NSName, err)
	}
	defer nh.Close()
	if err := setUp(nh, "lo"); err != nil {
		return nil, fmt.Errorf("testnet: %s: %w", h.NSName, err)
	}
	eth, err := nh.LinkByName(HostIface)
	if err != nil {
		return nil, fmt.Errorf("testnet: look up %s in %s: %w", HostIface, h.NSName, err)
	}
	h.IfIndex = eth.Attrs().Index
	if addr.IsValid() {
		if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(addr)}); err != nil {
			return nil, fmt.Errorf("testnet: add %s to %s in %s: %w", addr, HostIface, h.NSName, err)
		}
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return nil, fmt.Errorf("testnet: set %s up in %s: %w", HostIface, h.NSName, err)
	}
	n.logf("testnet: host %s (%s) %s mac %s, switch port %s", h.Name, h.NSName, addr, h.MAC, h.PeerName)
	return h, nil
}

// macsFor derives locally administered unicast MACs from an IPv4 address.
func macsFor(ip netip.Addr) (host, peer net.HardwareAddr) {
	var tail [4]byte
	if ip.Is4() {
		tail = ip.As4()
	} else {
		_, _ = rand.Read(tail[:])
	}
	host = net.HardwareAddr{0x02, 0x58, tail[0], tail[1], tail[2], tail[3]}
	peer = net.HardwareAddr{0x02, 0x59, tail[0], tail[1], tail[2], tail[3]}
	return host, peer
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

// Do runs fn with the calling context switched into the host's namespace:
// on a fresh goroutine with its OS thread locked, joined to the namespace,
// and switched back afterwards. If switching back fails the thread is
// discarded rather than reused. A panic in fn is re-raised in the caller.
//
// Sockets opened inside fn belong to the namespace for their whole life and
// may be used from any goroutine afterwards. Goroutines that fn starts do NOT
// run inside the namespace.
func (h *Host) Do(fn func() error) error {
	if err := do(h.NS, fn); err != nil {
		return fmt.Errorf("in %s: %w", h.Name, err)
	}
	return nil
}

type doPanic struct {
	value any
	stack []byte
}

func (p *doPanic) Error() string { return fmt.Sprintf("panic: %v\n%s", p.value, p.stack) }

func do(target netns.NsHandle, fn func() error) error {
	if !target.IsOpen() {
		return errors.New("namespace handle is closed")
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
			// Otherwise the goroutine exits locked and the runtime
			// terminates the thread.
		}()
		orig, err := netns.Get()
		if err != nil {
			restored = true
			ch <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			restored = true
			ch <- fmt.Errorf("setns: %w", err)
			return
		}
		var ferr error
		func() {
			defer func() {
				if v := recover(); v != nil {
					ferr = &doPanic{v, debug.Stack()}
				}
			}()
			ferr = fn()
		}()
		if err := netns.Set(orig); err == nil {
			restored = true
		}
		ch <- ferr
	}()
	err := <-ch
	var p *doPanic
	if errors.As(err, &p) {
		panic(p.Error())
	}
	return err
}

// waitDelay bounds how long Wait waits for output pipes that a command's
// descendants still hold after the command itself exited.
const waitDelay = 2 * time.Second

// procAttr puts every command in a process group of its own (so what it
// forks can be found and ended with it) and kills it if this process dies.
func procAttr() *unix.SysProcAttr {
	return &unix.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGKILL}
}

// Command returns a command that runs name inside the host's network
// namespace through `nsenter --net=/run/netns/NAME`. Only the network
// namespace changes: /sys/fs/bpf and the rest of the file system stay as the
// caller sees them. The command runs in a process group of its own, gets
// SIGKILL if this process dies, and is killed when ctx is done.
//
// Pdeathsig is tied to the OS thread that forks the child: run such a
// command through Exec or StartCmd, which fork from a thread kept alive for
// the child's lifetime, rather than calling Start or Run on it yourself.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + h.Path(), "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = waitDelay
	return cmd
}

// Exec runs a command inside the host's namespace (see Command) and returns
// its combined output. A non-zero exit is an error that includes the output.
func (h *Host) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runCmd(h.Command(ctx, name, args...))
}

// Output runs a command inside the host's namespace (see Command) and
// returns its standard output alone, for output a program parses (JSON).
// A non-zero exit is an error that includes the standard error.
func (h *Host) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := h.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	var err error
	runLocked(func() { err = cmd.Run() })
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// ExecIPNetns runs a command through `ip netns exec NAME`. Unlike Exec, ip
// remounts /sys inside a new mount namespace so /sys/class/net shows the
// namespace's interfaces, which also hides /sys/fs/bpf: do not use it for
// anything that pins or reads BPF objects.
func (h *Host) ExecIPNetns(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{"netns", "exec", h.NSName, name}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = waitDelay
	return runCmd(cmd)
}

func runCmd(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	var err error
	runLocked(func() { err = cmd.Run() })
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Sysctl sets a sysctl of the host's namespace; key uses dots or slashes
// ("net.ipv4.ip_forward").
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error { return writeSysctl(sysctlKey(key), value) })
}

// GetSysctl reads a sysctl of the host's namespace.
func (h *Host) GetSysctl(key string) (string, error) {
	var v string
	err := h.Do(func() (err error) {
		v, err = readSysctl(sysctlKey(key))
		return err
	})
	return v, err
}

func sysctlKey(key string) string { return strings.ReplaceAll(key, ".", "/") }

func (h *Host) handle() (*netlink.Handle, error) {
	nh, err := netlink.NewHandleAt(h.NS)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", h.NSName, err)
	}
	return nh, nil
}

// AddAddr adds an address (e.g. the VIP "10.10.10.100/32") to eth1.
func (h *Host) AddAddr(cidr string) error { return h.AddAddrDev(HostIface, cidr) }

// DelAddr removes an address from eth1.
func (h *Host) DelAddr(cidr string) error { return h.DelAddrDev(HostIface, cidr) }

// AddAddrDev adds an address to any interface of the host (e.g. "lo", for
// direct server return).
func (h *Host) AddAddrDev(dev, cidr string) error {
	return h.addrOp(dev, cidr, true)
}

// DelAddrDev removes an address from any interface of the host.
func (h *Host) DelAddrDev(dev, cidr string) error {
	return h.addrOp(dev, cidr, false)
}

func (h *Host) addrOp(dev, cidr string, add bool) error {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return fmt.Errorf("testnet: %s: address %q: %w", h.Name, cidr, err)
	}
	nh, err := h.handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	l, err := nh.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("testnet: %s: look up %s: %w", h.Name, dev, err)
	}
	a := &netlink.Addr{IPNet: prefixToIPNet(p)}
	if add {
		err = nh.AddrAdd(l, a)
	} else {
		err = nh.AddrDel(l, a)
	}
	if err != nil {
		verb := "add"
		if !add {
			verb = "delete"
		}
		return fmt.Errorf("testnet: %s: %s %s on %s: %w", h.Name, verb, cidr, dev, err)
	}
	return nil
}

// Addrs lists the IPv4 addresses on eth1.
func (h *Host) Addrs() ([]netip.Prefix, error) {
	nh, err := h.handle()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	l, err := nh.LinkByIndex(h.IfIndex)
	if err != nil {
		return nil, fmt.Errorf("testnet: %s: look up %s: %w", h.Name, HostIface, err)
	}
	addrs, err := nh.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("testnet: %s: list addresses: %w", h.Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// SetLinkDown pulls the host's cable: it sets the switch end of the veth pair
// down, so eth1 inside the host loses carrier and nothing reaches or leaves
// the host, while the host's own state (addresses, sockets, processes) stays
// as it is, as for a server whose link goes down. SetLinkUp plugs it back.
func (h *Host) SetLinkDown() error { return h.setPeer(false) }

// SetLinkUp undoes SetLinkDown.
func (h *Host) SetLinkUp() error { return h.setPeer(true) }

func (h *Host) setPeer(up bool) error {
	sw, err := netlink.NewHandleAt(h.net.Switch)
	if err != nil {
		return fmt.Errorf("testnet: netlink handle in %s: %w", h.net.SwitchNS, err)
	}
	defer sw.Close()
	l, err := sw.LinkByIndex(h.PeerIndex)
	if err != nil {
		return fmt.Errorf("testnet: look up %s in %s: %w", h.PeerName, h.net.SwitchNS, err)
	}
	if up {
		err = sw.LinkSetUp(l)
	} else {
		err = sw.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("testnet: set %s up=%v: %w", h.PeerName, up, err)
	}
	return nil
}

// DisableTxOffload runs `ethtool -K eth1 tx off` inside the host. A veth
// hands locally generated TCP segments to its peer with the checksum still
// partial (CHECKSUM_PARTIAL); an XDP program that rewrites such packets and
// sends them on sees a wrong checksum in the bytes. With tx checksum offload
// off the stack computes full checksums, as a real wire would carry (and TSO,
// which depends on it, is turned off by the kernel too).
func (h *Host) DisableTxOffload() error {
	if _, err := exec.LookPath("ethtool"); err != nil {
		return errors.New("testnet: ethtool not found in PATH: install the ethtool package")
	}
	if _, err := h.Exec(context.Background(), "ethtool", "-K", HostIface, "tx", "off"); err != nil {
		return fmt.Errorf("testnet: %s: disable tx offload: %w", h.Name, err)
	}
	return nil
}

// ArpFlush removes every non-permanent neighbour entry of eth1, so the next
// packet to any address resolves it again (e.g. after the VIP moved).
func (h *Host) ArpFlush() error {
	nh, err := h.handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	neighs, err := nh.NeighList(h.IfIndex, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("testnet: %s: list neighbours: %w", h.Name, err)
	}
	var errs []error
	for i := range neighs {
		if neighs[i].State&netlink.NUD_PERMANENT != 0 || neighs[i].State == netlink.NUD_NOARP {
			continue
		}
		if err := nh.NeighDel(&neighs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("testnet: %s: flush neighbours: %w", h.Name, errors.Join(errs...))
	}
	return nil
}

// Neighbor returns the MAC that eth1's neighbour table holds for ip, if any
// entry in a usable state exists.
func (h *Host) Neighbor(ip netip.Addr) (net.HardwareAddr, bool, error) {
	nh, err := h.handle()
	if err != nil {
		return nil, false, err
	}
	defer nh.Close()
	neighs, err := nh.NeighList(h.IfIndex, netlink.FAMILY_V4)
	if err != nil {
		return nil, false, fmt.Errorf("testnet: %s: list neighbours: %w", h.Name, err)
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP.To4()); ok && a == ip && len(n.HardwareAddr) == 6 &&
			n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
			return n.HardwareAddr, true, nil
		}
	}
	return nil, false, nil
}
