package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// PutMaglev writes table into one half (0 or 1) of the maglev map, the half
// the data path is not reading. It writes in one batch where the kernel has
// batch operations (5.6+) and slot by slot on 5.4.
func PutMaglev(m *ebpf.Map, half uint32, table []uint32) error {
	if len(table) != int(MaglevSize) {
		return fmt.Errorf("maglev table of %d slots, want %d", len(table), MaglevSize)
	}
	if half > 1 {
		return fmt.Errorf("maglev half %d: want 0 or 1", half)
	}
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = half*MaglevSize + uint32(i)
	}
	if _, err := m.BatchUpdate(keys, table, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("write maglev table: %w", err)
	}
	for i, k := range keys {
		if err := m.Put(k, table[i]); err != nil {
			return fmt.Errorf("write maglev slot %d: %w", k, err)
		}
	}
	return nil
}
