package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/safefile"
	flowsync "github.com/xdplb/xdplb/control/sync"
	"github.com/xdplb/xdplb/loader"
)

// prepareSync checks and opens what flow sync needs before the kernel is
// touched: a floating VIP, the key (read whole, long enough), the
// listener on this node's own address. nil when sync is not configured.
func prepareSync(cfg config.Config, node nodeFacts, log *slog.Logger) (*syncParts, error) {
	if !cfg.SyncPeer.IsValid() {
		return nil, nil
	}
	if node.local {
		return nil, fmt.Errorf("sync-peer: flow sync moves connections with a floating VIP, and vip %s is this node's own address: "+
			"remove sync-peer, or give the VIP keepalived moves", cfg.VIP)
	}
	key, err := readSyncKey(cfg.SyncKeyFile, log)
	if err != nil {
		return nil, err
	}
	peer := cfg.SyncPeerAddr()
	if peer.Addr() == node.source {
		return nil, fmt.Errorf("sync-peer %s: is this node's own address: give the other LB's", peer.Addr())
	}
	addr := netip.AddrPortFrom(node.source, peer.Port())
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("sync listener on %s: %w (the port of sync-peer is the one both LBs listen on: pick a free one on both)", addr, err)
	}
	return &syncParts{
		peer: peer, source: node.source, key: key, listener: ln,
		dial: func(ctx context.Context) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IP(node.source.AsSlice())}}
			return d.DialContext(ctx, "tcp", peer.String())
		},
	}, nil
}

// readSyncKey reads the shared key: the file's content without
// surrounding white space, at least flowsync.MinKeyLen characters.
func readSyncKey(path string, log *slog.Logger) ([]byte, error) {
	data, err := safefile.Read(path, 64<<10, safefile.Timeout)
	if err != nil {
		return nil, fmt.Errorf("sync-key-file: %w", err)
	}
	key := bytes.TrimSpace(data)
	if len(key) < flowsync.MinKeyLen {
		return nil, fmt.Errorf("sync-key-file %s: the key is %d characters; want at least %d, the same on both LBs "+
			"(e.g. `openssl rand -hex 32 > %s`, then copy it to the peer)", path, len(key), flowsync.MinKeyLen, path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("sync-key-file is readable by others than its owner: chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

// attach completes flow sync's parts once the program is loaded: the
// data path's reports, the interface's MAC and the VIP's presence.
func (sp *syncParts) attach(inst *loader.Instance, cfg config.Config) error {
	l, err := netlink.LinkByName(cfg.Iface)
	if err != nil {
		return fmt.Errorf("flow sync: interface %s: %w", cfg.Iface, err)
	}
	copy(sp.localMAC[:], l.Attrs().HardwareAddr)
	events, err := loader.OpenSyncEvents(inst.Maps, syncPerCPUBuffer)
	if err != nil {
		return err
	}
	sp.events = events
	vip := cfg.VIP
	sp.holdsVIP = func() (bool, error) { return hasAddr(cfg.Iface, vip) }
	sp.vipNotify = func(ctx context.Context, changed func()) error {
		updates, done := make(chan netlink.AddrUpdate, 64), make(chan struct{})
		defer close(done)
		if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{}); err != nil {
			return err
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case _, ok := <-updates:
				if !ok {
					return errors.New("address notifications ended")
				}
				changed()
			}
		}
	}
	return nil
}

// hasAddr says whether a is on interface name.
func hasAddr(name string, a netip.Addr) (bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			return true, nil
		}
	}
	return false, nil
}

// close releases what prepareSync and attach opened (a start that fails).
func (sp *syncParts) close() {
	if sp == nil {
		return
	}
	sp.listener.Close()
	if sp.events != nil {
		sp.events.Close()
	}
}
