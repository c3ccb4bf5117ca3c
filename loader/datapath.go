package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control"
)

// Datapath gives the control plane its view of the pinned maps
// (control.Datapath).
type Datapath struct{ M *Maps }

var _ control.Datapath = Datapath{}

func (d Datapath) Backends() (map[uint32]bpf.Backend, error) {
	out := map[uint32]bpf.Backend{}
	var id uint32
	var be bpf.Backend
	it := d.M.Backends.Iterate()
	for it.Next(&id, &be) {
		if be != (bpf.Backend{}) {
			out[id] = be
		}
	}
	return out, it.Err()
}

func (d Datapath) PutBackend(id uint32, b bpf.Backend) error { return d.M.Backends.Put(id, b) }

func (d Datapath) ActiveMaglev() (uint32, error) {
	var c bpf.LBControl
	err := d.M.Control.Lookup(uint32(0), &c)
	return c.MaglevActive, err
}

func (d Datapath) PutMaglev(half uint32, table []uint32) error {
	if len(table) != bpf.MaglevSize {
		return fmt.Errorf("maglev table of %d slots, want %d", len(table), bpf.MaglevSize)
	}
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = half*bpf.MaglevSize + uint32(i)
	}
	if _, err := d.M.Maglev.BatchUpdate(keys, table, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	// Kernels before 5.6 have no batch operations.
	for i, k := range keys {
		if err := d.M.Maglev.Put(k, table[i]); err != nil {
			return err
		}
	}
	return nil
}

func (d Datapath) SetActiveMaglev(half uint32) error {
	return d.M.Control.Put(uint32(0), bpf.LBControl{MaglevActive: half})
}

func (d Datapath) table(t control.FlowTable) *ebpf.Map {
	if t == control.TableHalfOpen {
		return d.M.HalfOpen
	}
	return d.M.Flows
}

func (d Datapath) ForEachFlow(fn func(t control.FlowTable, k bpf.FlowKey, f bpf.Flow)) error {
	for _, t := range []control.FlowTable{control.TableEstablished, control.TableHalfOpen} {
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

func (d Datapath) DeleteFlows(t control.FlowTable, keys []bpf.FlowKey) error {
	var errs []error
	for _, k := range keys {
		if err := d.table(t).Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d Datapath) Refused(id uint32) (uint64, error) {
	var ts uint64
	err := d.M.BackendRefused.Lookup(id, &ts)
	return ts, err
}

func (d Datapath) ClearRefused(id uint32) error { return d.M.BackendRefused.Put(id, uint64(0)) }

func (d Datapath) Stats() ([]uint64, error) {
	out := make([]uint64, bpf.StatCount)
	for i := range out {
		var per []uint64
		if err := d.M.Stats.Lookup(uint32(i), &per); err != nil {
			return nil, err
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

func (d Datapath) BackendCounters(id uint32) (bpf.BackendCounters, error) {
	var per []bpf.BackendCounters
	var sum bpf.BackendCounters
	if err := d.M.BackendStats.Lookup(id, &per); err != nil {
		return sum, err
	}
	for _, c := range per {
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		sum.NewFlows += c.NewFlows
	}
	return sum, nil
}
