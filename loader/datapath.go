package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/bpf"
)

// Datapath is the control plane's view of an instance's pinned maps: the
// operations the balancer needs (its Datapath interface, which lives with
// it in control/balancer; the daemon asserts that this type satisfies it).
type Datapath struct{ M *bpf.Maps }

// Backends returns the used backend slots.
func (d Datapath) Backends() (map[uint32]bpf.Backend, error) {
	out := map[uint32]bpf.Backend{}
	var id uint32
	var be bpf.Backend
	it := d.M.XdplbBackends.Iterate()
	for it.Next(&id, &be) {
		if be != (bpf.Backend{}) {
			out[id] = be
		}
	}
	return out, it.Err()
}

// PutBackend writes a backend slot.
func (d Datapath) PutBackend(id uint32, b bpf.Backend) error { return d.M.XdplbBackends.Put(id, b) }

// ActiveMaglev says which half of the maglev map the data path reads.
func (d Datapath) ActiveMaglev() (uint32, error) {
	var c bpf.LBControl
	err := d.M.XdplbControl.Lookup(uint32(0), &c)
	return c.MaglevActive, err
}

// PutMaglev writes a table into one half of the maglev map.
func (d Datapath) PutMaglev(half uint32, table []uint32) error {
	return bpf.PutMaglev(d.M.XdplbMaglev, half, table)
}

// SetActiveMaglev makes a half live, in one store. The other fields of
// lb_control are kept: the caller serialises its writes of lb_control.
func (d Datapath) SetActiveMaglev(half uint32) error {
	return d.updateControl(func(c *bpf.LBControl) { c.MaglevActive = half })
}

// SetRefuseNew sets lb_control.refuse_new: the data path refuses every new
// connection with a RST while it is set. The live Maglev half is kept.
func (d Datapath) SetRefuseNew(refuse bool) error {
	var v uint32
	if refuse {
		v = 1
	}
	return d.updateControl(func(c *bpf.LBControl) { c.RefuseNew = v })
}

// SetNoBackendReset sets or clears the data path's run-time policy of
// resetting (rather than dropping) a new connection no backend can take.
func (d Datapath) SetNoBackendReset(reset bool) error {
	var v uint32
	if reset {
		v = bpf.PolicyResetNoBackend
	}
	return d.M.XdplbPolicy.Put(uint32(0), v)
}

// updateControl rewrites lb_control; the data path only reads it.
func (d Datapath) updateControl(change func(*bpf.LBControl)) error {
	var c bpf.LBControl
	if err := d.M.XdplbControl.Lookup(uint32(0), &c); err != nil {
		return err
	}
	change(&c)
	return d.M.XdplbControl.Put(uint32(0), c)
}

// SetClientConns rewrites the client_conns map: each listed client gets
// its count, every other entry is deleted.
func (d Datapath) SetClientConns(counts map[netip.Addr]uint32) error {
	var stale []uint32
	var k, v uint32
	it := d.M.XdplbClients.Iterate()
	for it.Next(&k, &v) {
		if _, ok := counts[bpf.Addr(k)]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate client_conns: %w", err)
	}
	var errs []error
	for _, k := range stale {
		if err := d.M.XdplbClients.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for a, n := range counts {
		if err := d.M.XdplbClients.Put(bpf.BE32(a), n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d Datapath) table(t bpf.FlowTable) *ebpf.Map {
	if t == bpf.TableHalfOpen {
		return d.M.XdplbHalfOpen
	}
	return d.M.XdplbFlows
}

// ForEachFlow calls fn with every entry of both flow tables.
func (d Datapath) ForEachFlow(fn func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow)) error {
	for _, t := range bpf.FlowTables {
		var k bpf.FlowKey
		var f bpf.Flow
		it := d.table(t).Iterate()
		for it.Next(&k, &f) {
			fn(t, k, f)
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("iterate %s: %w", t, err)
		}
	}
	return nil
}

// DeleteFlows deletes entries; ones already gone are not an error.
func (d Datapath) DeleteFlows(t bpf.FlowTable, keys []bpf.FlowKey) error {
	var errs []error
	for _, k := range keys {
		if err := d.table(t).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Refused returns when the data path last saw backend id refuse a SYN (0: never).
func (d Datapath) Refused(id uint32) (uint64, error) {
	var ts uint64
	err := d.M.XdplbRefused.Lookup(id, &ts)
	return ts, err
}

// ClearRefused clears backend id's refusal flag.
func (d Datapath) ClearRefused(id uint32) error { return d.M.XdplbRefused.Put(id, uint64(0)) }

// Stats sums the per-CPU packet counters, indexed by bpf.Stat (the stats
// map's one value holds them all, in the enum's order).
func (d Datapath) Stats() ([]uint64, error) {
	var per [][bpf.StatCount]uint64
	if err := d.M.XdplbStats.Lookup(uint32(0), &per); err != nil {
		return nil, err
	}
	return bpf.SumStats(per), nil
}

// BackendCounters sums backend id's per-CPU counters.
func (d Datapath) BackendCounters(id uint32) (bpf.BackendCounters, error) {
	var per []bpf.BackendCounters
	var sum bpf.BackendCounters
	if err := d.M.XdplbBeStats.Lookup(id, &per); err != nil {
		return sum, err
	}
	for _, c := range per {
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		sum.NewFlows += c.NewFlows
	}
	return sum, nil
}

// TableCapacity is the number of entries a flow table holds.
func (d Datapath) TableCapacity(t bpf.FlowTable) uint32 { return d.table(t).MaxEntries() }
