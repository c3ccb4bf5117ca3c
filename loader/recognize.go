package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// recognized says whether program id is an instance's own although no pin
// names it: a program of the hook's name (xdplb_xdp or xdplb_tc) that uses
// the instance's pinned connection table. That is how a program left on an
// interface without its pin (a start killed between the netlink attach and
// the pin, a pin removed by hand, a bpffs unmounted and its maps pinned
// again by the daemon) is taken over by the next start and removed by
// detach, instead of blocking both as someone else's.
func recognized(dir string, hook bpf.Hook, id ebpf.ProgramID) bool {
	if id == 0 {
		return false
	}
	flows, err := pinnedMapID(filepath.Join(dir, bpf.TableEstablished.MapName()))
	if err != nil || flows == 0 {
		return false
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil || info.Name != hook.Prog() {
		return false
	}
	ids, ok := info.MapIDs()
	if !ok {
		return false
	}
	for _, m := range ids {
		if m == flows {
			return true
		}
	}
	return false
}

// owns says whether program id, attached on the hook, is the instance's:
// pinned by it, or recognized.
func owns(dir string, hook bpf.Hook, id ebpf.ProgramID) bool {
	return ours(dir, hook, id) || recognized(dir, hook, id)
}

func pinnedMapID(path string) (ebpf.MapID, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

// linkIfindex is the interface a pinned XDP or tcx link is attached to: 0
// when its interface was deleted (the link is severed: it can be neither
// updated nor detached, only replaced).
func linkIfindex(l link.Link) (int, bool) {
	info, err := l.Info()
	if err != nil {
		return 0, false
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex), true
	}
	if t := info.TCX(); t != nil {
		return int(t.Ifindex), true
	}
	return 0, false
}

// pinnedLinkFor opens the instance's pinned link at path for an attach to
// iface. A link severed by the deletion of its interface is unpinned
// (the instance is then attached anew); a link on another live interface
// is an error: an instance is never moved by a start.
func pinnedLinkFor(path string, iface netlink.Link, instance string, log *slog.Logger) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return nil, nil // none
	}
	idx, ok := linkIfindex(l)
	switch {
	case !ok || idx == iface.Attrs().Index:
		return l, nil
	case idx == 0:
		log.Info("the instance's pinned link was severed (its interface was deleted): attaching anew",
			"iface", iface.Attrs().Name, "link", filepath.Base(path))
		if err := l.Unpin(); err != nil {
			l.Close()
			return nil, fmt.Errorf("remove the severed link %s: %w", path, err)
		}
		l.Close()
		return nil, nil
	default:
		l.Close()
		name := fmt.Sprintf("ifindex %d", idx)
		if other, err := netlink.LinkByIndex(idx); err == nil {
			name = other.Attrs().Name
		}
		return nil, fmt.Errorf("instance %q is attached to %s, not %s: run `xdplb detach --instance %s` before moving it to another interface",
			instance, name, iface.Attrs().Name, instance)
	}
}

// checkNotMoved refuses a start on another interface than the one the
// instance's pinned program is attached to. pinnedLinkFor sees this from a
// pinned link; an instance attached through netlink (Linux 5.4, or
// --no-bpf-link) has none, and without this check a start would attach a
// second copy to the new interface and leave the first one orphaned.
func checkNotMoved(opts Options, iface netlink.Link) error {
	att, err := Attached(opts.BPFFS, opts.Instance)
	if err != nil || att.Ifindex == 0 || att.Ifindex == iface.Attrs().Index {
		return nil // attached nowhere (yet, or any more), or here
	}
	return fmt.Errorf("instance %q is attached to %s, not %s: run `xdplb detach --instance %s` before moving it to another interface",
		opts.Instance, att.Iface, iface.Attrs().Name, opts.Instance)
}

// mapsByName lists an instance's maps under the names they are pinned by
// (the ebpf struct tags bpf2go generated).
func mapsByName(m *bpf.Maps) map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if mp, ok := v.Field(i).Interface().(*ebpf.Map); ok && name != "" && mp != nil {
			out[name] = mp
		}
	}
	return out
}

// RepinMaps pins an instance's maps again from the handles a running
// daemon holds, after its pins were lost (bpffs unmounted, the directory
// removed): bpffs is mounted again where it is missing, and each map is
// pinned under its name in the instance's directory. The maps are the
// same objects, so the connection table is kept; a Start then loads and
// attaches a program against them (taking over the running one, see
// recognized). A name already pinned must be the same map.
func RepinMaps(bpffs, instance string, maps *bpf.Maps) error {
	if bpffs == "" {
		bpffs = bpf.DefaultBPFFS
	}
	dir, err := bpf.InstanceDir(bpffs, instance)
	if err != nil {
		return err
	}
	if err := ensureBPFFS(bpffs); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for name, m := range mapsByName(maps) {
		path := filepath.Join(dir, name)
		if id, err := pinnedMapID(path); err != nil {
			return err
		} else if id != 0 {
			info, err := m.Info()
			if err != nil {
				return err
			}
			if own, _ := info.ID(); own != id {
				return fmt.Errorf("%s pins another map (id %d, the daemon's is %d): left in place", path, id, own)
			}
			continue
		}
		// A clone: Pin is a no-op on a map whose recorded pin path is this one.
		c, err := m.Clone()
		if err != nil {
			return err
		}
		err = c.Pin(path)
		c.Close()
		if err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	return nil
}

// mounted says whether a bpffs is mounted at root.
func mounted(root string) bool {
	var st unix.Statfs_t
	return unix.Statfs(root, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}
