package daemon

import (
	"context"
	"time"

	"github.com/xdplb/xdplb/control/config"
)

// failingOpen says whether this node sees no backend that can take a new
// connection (noBackendWhy) and forwards new connections anyway, to every
// configured backend that is not drained (the all-down policy "open": the
// balancer's table then holds them all, or they are up but this node
// cannot reach them by its own checks).
func failingOpen(policy config.AllDownPolicy, bs []BackendStatus) bool {
	if policy == config.AllDownDrop || noBackendWhy(bs) == "" {
		return false
	}
	for _, b := range bs {
		if !b.Drained && b.State != StateRetiring && b.Weight > 0 {
			return true
		}
	}
	return false
}

// allDownLoop says, every second, when this node starts and stops failing
// open.
func (d *Daemon) allDownLoop(ctx context.Context) {
	every(ctx, time.Second, func() {
		st := d.status()
		open := st.FailingOpen
		if d.failOpen.Swap(open) == open {
			return
		}
		if open {
			d.log.Warn("failing open: no backend can take new connections as far as this node sees; new connections go to every configured backend "+
				"(those that refuse are skipped; a client none takes gets a RST at once); `xdplb check --backends` fails, `xdplb check` passes",
				"why", noBackendWhy(st.Backends))
		} else {
			d.log.Info("no longer failing open: a backend can take new connections")
		}
	})
}
