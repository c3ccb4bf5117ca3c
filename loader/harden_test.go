package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// attachCases are the ways an instance attaches: bpf_link (XDP, tcx) and
// the netlink/clsact paths of kernels without it.
var attachCases = []struct {
	name   string
	hook   bpf.Hook
	mode   bpf.XDPMode
	noLink bool
}{
	{"xdp-link", bpf.HookXDP, bpf.XDPGeneric, false},
	{"xdp-netlink", bpf.HookXDP, bpf.XDPGeneric, true},
	{"tcx", bpf.HookTC, "", false},
	{"tc-clsact", bpf.HookTC, "", true},
}

// collect gathers a test's failures made inside inNetns, whose function
// runs on a goroutine of its own.
type collect []string

func (c *collect) fail(format string, args ...any) { *c = append(*c, fmt.Sprintf(format, args...)) }

func (c collect) report(t *testing.T) {
	t.Helper()
	if len(c) > 0 {
		t.Fatal(strings.Join(c, "\n"))
	}
}

var testFlowKey = bpf.Key(netip.MustParseAddrPort("10.10.10.101:40000"), netip.MustParseAddrPort("10.10.10.100:6443"))

func putTestFlow(m *bpf.Maps) error {
	return m.XdplbFlows.Put(testFlowKey, bpf.Flow{State: uint8(bpf.FlowEstablished), LastSeenNs: 1})
}

func hasTestFlow(m *bpf.Maps) bool {
	var f bpf.Flow
	return m.XdplbFlows.Lookup(testFlowKey, &f) == nil
}

// recreateEth1 deletes the veth pair and adds it again under the same
// names, as a NIC driver reload, a VM's hot-unplug and plug, or a
// container runtime's network restart does.
func recreateEth1() error {
	l, err := netlink.LinkByName("eth1")
	if err != nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil {
		return err
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth1"}, PeerName: "peer1"}); err != nil {
		return err
	}
	for _, n := range []string{"eth1", "peer1"} {
		l, _ := netlink.LinkByName(n)
		netlink.LinkSetUp(l)
	}
	return nil
}

// interfaceClean says what of an instance is left on eth1.
func interfaceClean() error {
	l, err := netlink.LinkByName("eth1")
	if err != nil {
		return err
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return fmt.Errorf("xdp prog %d still attached", x.ProgId)
	}
	if ids, _ := tcProgIDs(l); len(ids) > 0 {
		return fmt.Errorf("tc filters left: %v", ids)
	}
	if ids := tcxProgIDs(l); len(ids) > 0 {
		return fmt.Errorf("tcx programs left: %v", ids)
	}
	return nil
}

// TestRecreatedInterface (issue 10 §8): eth1 deleted and added again
// under its name. The severed pinned link (or the program gone with the
// interface) does not block the next start: it attaches to the new
// interface, keeps the pinned connection table, and detach cleans up.
// Before, every start failed with "update link: link has been severed"
// until someone ran detach.
func TestRecreatedInterface(t *testing.T) {
	for _, c := range attachCases {
		t.Run(c.name, func(t *testing.T) {
			var errs collect
			inNetns(t, func(bpffs string) {
				opts := testOptions(bpffs, c.hook, c.mode)
				opts.NoLink = c.noLink
				inst, err := Start(opts)
				if err != nil {
					errs.fail("start: %v", err)
					return
				}
				if err := putTestFlow(inst.Maps); err != nil {
					errs.fail("put flow: %v", err)
				}
				inst.Close()
				if err := recreateEth1(); err != nil {
					errs.fail("recreate eth1: %v", err)
					return
				}
				if _, err := Attached(bpffs, opts.Instance); err == nil {
					errs.fail("Attached says attached with its interface deleted")
				}
				inst, err = Start(opts)
				if err != nil {
					errs.fail("start after the interface was recreated: %v", err)
					return
				}
				defer inst.Close()
				l, _ := netlink.LinkByName("eth1")
				att, err := Attached(bpffs, opts.Instance)
				if err != nil || att.Ifindex != l.Attrs().Index || att.ProgID != inst.Attachment.ProgID {
					errs.fail("after the restart: %+v %v; want prog %d on the new eth1 (ifindex %d)", att, err, inst.Attachment.ProgID, l.Attrs().Index)
				}
				if !hasTestFlow(inst.Maps) {
					errs.fail("the connection table was not kept")
				}
				if err := Detach(bpffs, opts.Instance); err != nil {
					errs.fail("detach: %v", err)
				}
				if err := interfaceClean(); err != nil {
					errs.fail("after detach: %v", err)
				}
			})
			errs.report(t)
		})
	}
}

// TestMovedInstanceRefused: a start naming another interface than the one
// the instance is attached to is refused, and the instance left alone:
// through a pinned link, and through netlink (5.4, --no-bpf-link), where
// no link says where the instance is.
func TestMovedInstanceRefused(t *testing.T) {
	for _, noLink := range []bool{false, true} {
		t.Run(fmt.Sprintf("nolink=%v", noLink), func(t *testing.T) {
			var errs collect
			inNetns(t, func(bpffs string) {
				if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth2"}, PeerName: "peer2"}); err != nil {
					errs.fail("add eth2: %v", err)
					return
				}
				opts := testOptions(bpffs, bpf.HookXDP, bpf.XDPGeneric)
				opts.NoLink = noLink
				inst, err := Start(opts)
				if err != nil {
					errs.fail("start: %v", err)
					return
				}
				inst.Close()
				defer Detach(bpffs, opts.Instance)
				moved := opts
				moved.Iface = "eth2"
				if _, err := Start(moved); err == nil || !strings.Contains(err.Error(), "is attached to eth1, not eth2") {
					errs.fail("start on eth2: %v", err)
				}
				if att, err := Attached(bpffs, opts.Instance); err != nil || att.Iface != "eth1" || att.ProgID != inst.Attachment.ProgID {
					errs.fail("the refused move disturbed the instance: %+v %v", att, err)
				}
				if l, err := netlink.LinkByName("eth2"); err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
					errs.fail("eth2 runs a program after the refused move")
				}
			})
			errs.report(t)
		})
	}
}

// TestOrphanTakenOver (issue 10 §11): the instance's program on the
// interface without a pin naming it (a start killed between the netlink
// attach and the pin, a pin removed by hand) is recognised by its name and
// its maps: the next start takes it over (replace, table kept) instead of
// refusing it as someone else's, and detach removes it.
func TestOrphanTakenOver(t *testing.T) {
	for _, c := range attachCases {
		if !c.noLink {
			continue // a bpf_link without a pin or a holder does not exist
		}
		t.Run(c.name, func(t *testing.T) {
			var errs collect
			inNetns(t, func(bpffs string) {
				opts := testOptions(bpffs, c.hook, c.mode)
				opts.NoLink = true
				inst, err := Start(opts)
				if err != nil {
					errs.fail("start: %v", err)
					return
				}
				putTestFlow(inst.Maps)
				orphan := inst.Attachment.ProgID
				inst.Close()
				dir := instanceDir(bpffs, opts.Instance)
				unpin := func() {
					if err := os.Remove(filepath.Join(dir, c.hook.ProgPin())); err != nil {
						errs.fail("remove the program's pin: %v", err)
					}
				}
				unpin()
				if !recognized(dir, c.hook, orphan) {
					errs.fail("program %d not recognised", orphan)
				}
				other := testOptions(bpffs, c.hook, c.mode)
				other.NoLink = true
				if _, err := Start(other); err == nil || !strings.Contains(err.Error(), "already runs xdplb instance "+fmt.Sprintf("%q", opts.Instance)) {
					errs.fail("another instance on the orphan's interface: %v", err)
				}
				inst, err = Start(opts)
				if err != nil {
					errs.fail("start over the orphan: %v", err)
					return
				}
				defer inst.Close()
				if !inst.Replaced || inst.Attachment.ProgID == orphan || !hasTestFlow(inst.Maps) {
					errs.fail("start over the orphan: replaced=%v prog %d (orphan %d), table kept=%v", inst.Replaced, inst.Attachment.ProgID, orphan, hasTestFlow(inst.Maps))
				}
				if att, err := Attached(bpffs, opts.Instance); err != nil || att.ProgID != inst.Attachment.ProgID {
					errs.fail("after the take-over: %+v %v", att, err)
				}
				unpin()
				if err := Detach(bpffs, opts.Instance); err != nil {
					errs.fail("detach: %v", err)
				}
				if err := interfaceClean(); err != nil {
					errs.fail("detach left the orphan: %v", err)
				}
				if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
					errs.fail("pins left: %v", err)
				}
			})
			errs.report(t)
		})
	}
}

// TestTableSizeChange: a restart with another max-conns is refused with
// what to do, and the instance left as it was.
func TestTableSizeChange(t *testing.T) {
	var errs collect
	inNetns(t, func(bpffs string) {
		opts := testOptions(bpffs, bpf.HookXDP, bpf.XDPGeneric)
		opts.Data.MaxConns = 1000
		inst, err := Start(opts)
		if err != nil {
			errs.fail("start: %v", err)
			return
		}
		defer Detach(bpffs, opts.Instance)
		if got := inst.Maps.XdplbFlows.MaxEntries(); got != 2000 {
			errs.fail("max-conns 1000 made a table of %d entries", got)
		}
		inst.Close()
		opts.Data.MaxConns = 2000
		if _, err := Start(opts); err == nil || !strings.Contains(err.Error(), "holds 1000 connections") || !strings.Contains(err.Error(), "keep max-conns 1000") {
			errs.fail("restart with max-conns 2000: %v", err)
		}
		if att, err := Attached(bpffs, opts.Instance); err != nil || att.ProgID != inst.Attachment.ProgID {
			errs.fail("the refused restart disturbed the instance: %+v %v", att, err)
		}
	})
	errs.report(t)
}

// TestBPFFSUnmounted (issue 10 §15): unmounting bpffs takes the pins, and
// with a pinned bpf_link the program too. Attached says so (ErrPinsGone,
// naming the mount); RepinMaps from the handles a daemon holds, then a
// start, bring the instance back whole, with its connection table.
func TestBPFFSUnmounted(t *testing.T) {
	for _, c := range attachCases {
		t.Run(c.name, func(t *testing.T) {
			var errs collect
			inNetns(t, func(bpffs string) {
				opts := testOptions(bpffs, c.hook, c.mode)
				opts.NoLink = c.noLink
				inst, err := Start(opts)
				if err != nil {
					errs.fail("start: %v", err)
					return
				}
				defer inst.Close()
				putTestFlow(inst.Maps)
				if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
					errs.fail("unmount: %v", err)
					return
				}
				_, err = Attached(bpffs, opts.Instance)
				if !errors.Is(err, ErrPinsGone) || !strings.Contains(err.Error(), "no bpffs is mounted at "+bpffs) {
					errs.fail("Attached with bpffs unmounted: %v", err)
				}
				if err := RepinMaps(bpffs, opts.Instance, inst.Maps); err != nil {
					errs.fail("repin: %v", err)
					return
				}
				again, err := Start(opts)
				if err != nil {
					errs.fail("start after the repin: %v", err)
					return
				}
				defer again.Close()
				if !hasTestFlow(again.Maps) {
					errs.fail("connection table lost")
				}
				if att, err := Attached(bpffs, opts.Instance); err != nil || att.ProgID != again.Attachment.ProgID {
					errs.fail("after the repin: %+v %v", att, err)
				}
				if err := Detach(bpffs, opts.Instance); err != nil {
					errs.fail("detach: %v", err)
				}
				if err := interfaceClean(); err != nil {
					errs.fail("after detach: %v", err)
				}
			})
			errs.report(t)
		})
	}
}
