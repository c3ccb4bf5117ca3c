package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdplb/xdplb/loader"
)

// linkWatch follows the frontend interface through netlink: whether it is
// up (administratively up and with a carrier), how often it went down,
// and its ifindex, which changes when the interface is deleted and made
// again under its name. It is the health.Link of the checks' LocalGuard.
type linkWatch struct {
	name string

	mu      sync.Mutex
	seen    bool // observed at least once
	present bool
	index   int
	up      bool
	downs   uint64
	upSince time.Time
}

func newLinkWatch(name string) *linkWatch { return &linkWatch{name: name} }

// LinkState implements health.Link.
func (w *linkWatch) LinkState() (bool, uint64, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.present && w.up, w.downs, w.upSince
}

// linkChange is what one observation changed.
type linkChange struct {
	Down, Up, Removed bool
	// Index is the interface's ifindex now (0: absent).
	Index int
}

func (c linkChange) any() bool { return c.Down || c.Up || c.Removed }

// observe records the interface's state: present (with index) and up.
func (w *linkWatch) observe(present bool, index int, up bool, now time.Time) linkChange {
	w.mu.Lock()
	defer w.mu.Unlock()
	usable := present && up
	wasUsable := w.present && w.up
	var ch linkChange
	if w.seen {
		ch.Removed = w.present && (!present || index != w.index)
		ch.Down = wasUsable && (!usable || index != w.index)
		ch.Up = usable && (!wasUsable || index != w.index)
	}
	if ch.Down {
		w.downs++
	}
	if ch.Up {
		w.upSince = now
	}
	w.seen, w.present, w.index, w.up = true, present, index, up
	if present {
		ch.Index = index
	}
	return ch
}

// linkUsable: administratively up, and the lower layer too (a veth whose
// peer is down, a NIC without carrier, are not).
func linkUsable(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

// resync reads the interface's state now.
func (w *linkWatch) resync() error {
	_, err := w.poll()
	return err
}

func (w *linkWatch) poll() (linkChange, error) {
	l, err := netlink.LinkByName(w.name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		return w.observe(false, 0, false, time.Now()), nil
	case err != nil:
		return linkChange{}, fmt.Errorf("interface %s: %w", w.name, err)
	}
	return w.observe(true, l.Attrs().Index, linkUsable(l), time.Now()), nil
}

// run follows the interface until ctx ends: netlink link notifications,
// and a poll every second in case one was lost or the subscription broke
// (it is made again, at most every 10 s). onChange is called with every
// observation that changed something.
func (w *linkWatch) run(ctx context.Context, log *slog.Logger, onChange func(linkChange)) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var (
		updates chan netlink.LinkUpdate
		done    chan struct{}
		retry   time.Time
	)
	unsubscribe := func() {
		if done != nil {
			close(done)
		}
		updates, done = nil, nil
	}
	defer unsubscribe()
	look := func() {
		// A notification says something happened; netlink says what the
		// state is now (a deletion carries the old state, a rename the
		// new name).
		ch, err := w.poll()
		if err != nil {
			log.Debug("link state", "err", err)
			return
		}
		if ch.any() || ch.Index != 0 {
			onChange(ch)
		}
	}
	for {
		if updates == nil && !time.Now().Before(retry) {
			u, d := make(chan netlink.LinkUpdate, 64), make(chan struct{})
			err := netlink.LinkSubscribeWithOptions(u, d, netlink.LinkSubscribeOptions{
				ErrorCallback: func(err error) { log.Debug("link notifications", "err", err) },
			})
			if err != nil {
				log.Warn("subscribe to link notifications; polling every second", "err", err)
				retry = time.Now().Add(10 * time.Second)
			} else {
				updates, done = u, d
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				unsubscribe() // broken: made again at the next tick
				continue
			}
			if u.Attrs().Name != w.name && u.Attrs().Index != w.lastIndex() {
				continue
			}
		case <-tick.C:
		}
		look()
	}
}

func (w *linkWatch) lastIndex() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.index
}

// onLink reports the interface's changes and, when it is there again
// under another ifindex (deleted and made again), attaches the program to
// it.
func (d *Daemon) onLink(ch linkChange) {
	iface := d.config().Iface
	switch {
	case ch.Removed:
		d.log.Error("interface removed: the program went with it; health checks are not counted until it is back",
			"iface", iface)
	case ch.Down:
		d.log.Warn("interface down: health checks are not counted until it is back, backends keep their state, flows stay",
			"iface", iface)
	}
	if ch.Up {
		d.log.Info("interface up", "iface", iface)
	}
	if ch.Index != 0 && ch.Index != d.attachment().Ifindex {
		d.reattach("interface recreated")
	}
}

// reattach attaches the program again, e.g. to an interface made again.
// A failure is retried at the next call, after a backoff of 1 s doubling
// to 30 s.
func (d *Daemon) reattach(why string) {
	if d.parts.reattach == nil {
		return
	}
	d.reattachMu.Lock()
	defer d.reattachMu.Unlock()
	if time.Now().Before(d.reattachAt) {
		return
	}
	att, err := d.parts.reattach()
	if err != nil {
		d.reattachBackoff = min(max(2*d.reattachBackoff, time.Second), 30*time.Second)
		d.reattachAt = time.Now().Add(d.reattachBackoff)
		d.log.Error("attach the program again", "why", why, "err", err, "retry_in", d.reattachBackoff)
		return
	}
	d.reattachBackoff, d.reattachAt = 0, time.Time{}
	d.setAttachment(att)
	d.log.Info("attached the program again (flow table kept)", "why", why, "attachment", att.String())
}

// watchAttachment checks every second that the program is attached, logs
// when that changes, and when the instance's pins are gone (bpffs unmounted, its
// directory removed: with a pinned bpf_link the program went with them)
// pins the maps again from the daemon's handles and attaches again,
// keeping the connection table.
func (d *Daemon) watchAttachment(ctx context.Context) {
	var lastErr string
	var nextRepin time.Time
	backoff := time.Second
	every(ctx, time.Second, func() {
		_, err := d.parts.attached()
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != lastErr {
			if err != nil {
				d.log.Error("the program is not attached as it should be: `xdplb check` fails until it is", "reason", msg)
			} else {
				d.log.Info("the program is attached again")
			}
			lastErr = msg
		}
		switch {
		case err == nil:
			backoff = time.Second
		case errors.Is(err, loader.ErrPinsGone) && d.parts.repin != nil && !time.Now().Before(nextRepin):
			att, rerr := d.parts.repin()
			if rerr != nil {
				d.log.Error("pin the instance again", "err", rerr, "retry_in", backoff)
				nextRepin = time.Now().Add(backoff)
				backoff = min(2*backoff, 30*time.Second)
				return
			}
			d.setAttachment(att)
			d.log.Warn("the instance's pins were gone: pinned its maps again and attached the program again (flow table kept)",
				"attachment", att.String())
		}
	})
}
