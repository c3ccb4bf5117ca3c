package daemon

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
)

// ReloadResult is what a reload did, as `xdplb reload` and status show it.
type ReloadResult struct {
	At time.Time `json:"at"`
	OK bool      `json:"ok"`
	// Error says why nothing was applied.
	Error string `json:"error,omitempty"`
	// Changes are what was applied, one line each.
	Changes  []string `json:"changes,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// reloadLoop reloads at every SIGHUP.
func (d *Daemon) reloadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.opts.Hup:
			d.reload("SIGHUP")
		}
	}
}

// reload reads the configuration again and applies what may change live,
// or nothing: a configuration that does not load or validate, a change
// that needs a restart (config.PlanReload), or check files that do not
// load leave the running configuration as it is, and the error is logged
// and returned. Applied: the backends (balancer.Reconcile: no flow is
// touched), the check settings, timings and timers, the log level; each
// change is logged.
func (d *Daemon) reload(trigger string) ReloadResult {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	res := ReloadResult{At: time.Now()}
	d.sdNotify("RELOADING=1")
	defer d.notifyReady()
	fail := func(err error) ReloadResult {
		res.Error = err.Error()
		d.log.Error("reload failed: the running configuration stays", "trigger", trigger, "err", err)
		d.reloads[1].Add(1)
		d.setLastReload(res)
		return res
	}
	if d.opts.Reload == nil {
		return fail(errors.New("this daemon was started without a configuration to read again"))
	}
	next, warnings, err := d.opts.Reload()
	res.Warnings = warnings
	for _, w := range warnings {
		d.log.Warn(w)
	}
	if err != nil {
		return fail(err)
	}
	old := d.config()
	changes, err := config.PlanReload(&old, &next)
	if err != nil {
		return fail(err)
	}
	// Everything that can fail before anything changes: the checker's
	// files load, the timings are sound.
	var checker health.Checker
	if checkChanged(changes) {
		if checker, err = d.parts.newChecker(next.Check, next.CheckOptions(d.checkSource(next))); err != nil {
			return fail(err)
		}
	}
	params := next.HealthParams()
	if err := params.Validate(); err != nil {
		return fail(err)
	}

	bchanges, err := d.bal.Reconcile(next.ResolvedBackends())
	if err != nil {
		return fail(err)
	}
	var added []netip.AddrPort
	for _, c := range bchanges {
		if c.What == "added" {
			if err := d.mon.Add(c.Backend.Addr.String(), false); err != nil {
				d.log.Error("start checking an added backend", "backend", c.Backend.Label(), "err", err)
			}
			added = append(added, c.Backend.Addr)
		}
		res.Changes = append(res.Changes, c.String())
	}
	if len(added) > 0 && d.parts.kick != nil {
		go d.parts.kick(specsOf(added), d.checkSource(next))
	}
	if err := d.mon.SetParams(params); err != nil {
		d.log.Error("apply check timings", "err", err) // validated above: not expected
	}
	if checker != nil {
		d.mon.SetChecker(d.guard(checker))
	}
	d.cfgMu.Lock()
	d.cfg = next
	d.cfgMu.Unlock()
	if d.opts.Level != nil {
		d.opts.Level.Set(levelOf(next))
	}
	for _, c := range changes {
		if c.Key != "backend" {
			res.Changes = append(res.Changes, c.String())
		}
	}
	res.OK = true
	d.reloads[0].Add(1)
	d.setLastReload(res)
	if len(res.Changes) == 0 {
		d.log.Info("reload: nothing changed", "trigger", trigger, "config", d.opts.ConfigPath)
	} else {
		d.log.Info("reload applied", "trigger", trigger, "config", d.opts.ConfigPath, "changes", len(res.Changes))
		for _, c := range res.Changes {
			d.log.Info("reload: " + c)
		}
	}
	return res
}

// checkChanged says whether a change needs a new checker.
func checkChanged(changes []config.Change) bool {
	for _, c := range changes {
		if c.Key == "check" || strings.HasPrefix(c.Key, "check-") && c.Key != "check-timeout" {
			return true
		}
	}
	return false
}

// checkSource is where checks of cfg come from: check-source, else the
// node's own address found at start.
func (d *Daemon) checkSource(cfg config.Config) netip.Addr {
	if cfg.CheckSource.IsValid() {
		return cfg.CheckSource
	}
	return d.node.own
}

func specsOf(addrs []netip.AddrPort) []config.BackendSpec {
	out := make([]config.BackendSpec, len(addrs))
	for i, a := range addrs {
		out[i] = config.BackendSpec{Addr: a}
	}
	return out
}

func (d *Daemon) setLastReload(r ReloadResult) {
	d.gcMu.Lock()
	defer d.gcMu.Unlock()
	d.lastReload = &r
}

func (d *Daemon) lastReloadResult() *ReloadResult {
	d.gcMu.Lock()
	defer d.gcMu.Unlock()
	if d.lastReload == nil {
		return nil
	}
	r := *d.lastReload
	return &r
}
