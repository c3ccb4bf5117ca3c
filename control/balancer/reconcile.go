package balancer

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
)

// A reload hands the balancer the backends the configuration now lists;
// Reconcile applies the difference without touching a flow:
//
//   - a backend added gets a free slot and starts down: it takes new
//     connections once its checks pass (rise), not before;
//   - a backend removed retires: it leaves the table (no new
//     connections) but keeps its established ones, which go on as long as
//     it answers its checks (a retiring backend that fails them is taken
//     down and its connections reset as any other); the GC frees its slot
//     when the last one has ended. Listed again before that, it comes back
//     with its slot, state and connections;
//   - a weight or a name that changed is applied; the file's weight wins
//     over one set with `xdplb backend weight`, as at a restart; a drain
//     stays (it is the operator's, kept across restarts too).
//
// The table is rebuilt once, into the spare half, then flipped.

// BackendChange is one thing Reconcile did to a backend.
type BackendChange struct {
	Backend Backend
	// What: added, retired, restored, weight, name.
	What string
	// Old and New values, for weight and name.
	Old, New string
}

func (c BackendChange) String() string {
	switch c.What {
	case "added":
		return fmt.Sprintf("backend %s added (weight %d; takes connections once its checks pass)", c.Backend.Label(), c.Backend.Weight)
	case "retired":
		return fmt.Sprintf("backend %s removed: no new connections; its established ones stay until they end", c.Backend.Label())
	case "restored":
		return fmt.Sprintf("backend %s listed again: takes new connections again", c.Backend.Label())
	}
	return fmt.Sprintf("backend %s %s %s -> %s", c.Backend.Label(), c.What, quote(c.Old), quote(c.New))
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// ReconcilePlan is what Reconcile will do, decided from the balancer's
// backends and the configured ones alone.
type ReconcilePlan struct {
	Changes []BackendChange
}

// PlanReconcile decides what Reconcile does with specs (ports resolved),
// without changing anything.
func PlanReconcile(current []Backend, specs []config.BackendSpec) ReconcilePlan {
	var plan ReconcilePlan
	byAddr := map[netip.AddrPort]Backend{}
	for _, b := range current {
		byAddr[b.Addr] = b
	}
	listed := map[netip.AddrPort]bool{}
	for _, s := range specs {
		listed[s.Addr] = true
		b, ok := byAddr[s.Addr]
		if !ok {
			plan.Changes = append(plan.Changes, BackendChange{Backend: Backend{Addr: s.Addr, Name: s.Name, Weight: s.Weight}, What: "added"})
			continue
		}
		if b.Retired {
			plan.Changes = append(plan.Changes, BackendChange{Backend: b, What: "restored"})
		}
		if b.Weight != s.Weight {
			plan.Changes = append(plan.Changes, BackendChange{Backend: b, What: "weight", Old: fmt.Sprint(b.Weight), New: fmt.Sprint(s.Weight)})
		}
		if b.Name != s.Name {
			plan.Changes = append(plan.Changes, BackendChange{Backend: b, What: "name", Old: b.Name, New: s.Name})
		}
	}
	for _, b := range current {
		if !listed[b.Addr] && !b.Retired {
			plan.Changes = append(plan.Changes, BackendChange{Backend: b, What: "retired"})
		}
	}
	return plan
}

// Reconcile makes the balancer's backends those of specs (ports
// resolved), as PlanReconcile decides, and writes the data path's entries
// and a new table. It returns what it changed; the caller starts checking
// the backends added (they start down).
func (b *Balancer) Reconcile(specs []config.BackendSpec) ([]BackendChange, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	current := make([]Backend, 0, len(b.backends))
	for _, st := range b.backends {
		current = append(current, *st)
	}
	slices.SortFunc(current, func(x, y Backend) int { return x.Addr.Compare(y.Addr) })
	plan := PlanReconcile(current, specs)
	if len(plan.Changes) == 0 {
		return nil, nil
	}
	used := map[uint32]bool{}
	for _, st := range b.backends {
		used[st.ID] = true
	}
	spec := map[netip.AddrPort]config.BackendSpec{}
	for _, s := range specs {
		spec[s.Addr] = s
	}
	for i, c := range plan.Changes {
		switch c.What {
		case "added":
			id, ok := freeSlot(used)
			if !ok {
				return nil, fmt.Errorf("backend %s: more than %d backends (retiring ones hold their slot until their last connection ends)", c.Backend.Label(), bpf.MaxBackends)
			}
			used[id] = true
			st := &Backend{ID: id, Addr: c.Backend.Addr, Name: c.Backend.Name, Weight: c.Backend.Weight}
			b.backends[st.Addr] = st
			// A slot freed earlier may still carry a refusal flag.
			if err := b.dp.ClearRefused(id); err != nil {
				return nil, err
			}
			plan.Changes[i].Backend = *st
		case "retired":
			b.backends[c.Backend.Addr].Retired = true
		case "restored":
			b.backends[c.Backend.Addr].Retired = false
		case "weight":
			b.backends[c.Backend.Addr].Weight = spec[c.Backend.Addr].Weight
		case "name":
			b.backends[c.Backend.Addr].Name = spec[c.Backend.Addr].Name
		}
	}
	if err := b.syncLocked(); err != nil {
		return plan.Changes, err
	}
	return plan.Changes, nil
}

func freeSlot(used map[uint32]bool) (uint32, bool) {
	for id := uint32(0); id < bpf.MaxBackends; id++ {
		if !used[id] {
			return id, true
		}
	}
	return 0, false
}

// freeRetired frees the slots of retired backends no flow refers to any
// more (refs: entries per backend index, as the GC just counted them).
func (b *Balancer) freeRetired(refs map[uint32]int) ([]Backend, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var freed []Backend
	for addr, st := range b.backends {
		if !st.Retired || refs[st.ID] > 0 {
			continue
		}
		if err := b.dp.PutBackend(st.ID, bpf.Backend{}); err != nil {
			return freed, fmt.Errorf("free the slot of retired backend %s: %w", st.Label(), err)
		}
		delete(b.backends, addr)
		freed = append(freed, *st)
	}
	return freed, nil
}
