package daemon

import (
	"net/netip"
	"sort"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/loader"
)

// FlowRow is one tracked connection, as `xdplb flows` lists it.
type FlowRow struct {
	Client  string `json:"client"`
	Backend string `json:"backend"`
	// Name is the backend's name, when the daemon that named it answers.
	Name     string `json:"name,omitempty"`
	SNAT     string `json:"snat"`
	State    string `json:"state"`
	AgeSec   int64  `json:"age_s"`
	IdleSec  int64  `json:"idle_s"`
	HalfOpen bool   `json:"half_open"`
}

// Flows lists an instance's tracked connections from its pinned maps (so
// it works while no daemon runs), those to backends keep accepts (nil:
// all), sorted by client.
func Flows(bpffs, instance string, keep func(backend netip.AddrPort) bool) ([]FlowRow, error) {
	m, err := loader.OpenMaps(bpffs, instance)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	dp := loader.Datapath{M: m}
	now := bpf.Now()
	var rows []FlowRow
	err = dp.ForEachFlow(func(t bpf.FlowTable, k bpf.FlowKey, f bpf.Flow) {
		if f.Dir != uint8(bpf.FlowToBackend) || keep != nil && !keep(f.Dst()) {
			return
		}
		rows = append(rows, FlowRow{Client: k.Src().String(), Backend: f.Dst().String(), SNAT: f.Src().String(),
			State: bpf.FlowState(f.State).String(), AgeSec: secondsSince(now, f.CreatedNs), IdleSec: secondsSince(now, f.LastSeenNs),
			HalfOpen: t == bpf.TableHalfOpen})
	})
	sort.Slice(rows, func(i, j int) bool { return rows[i].Client < rows[j].Client })
	return rows, err
}

func secondsSince(now, then uint64) int64 {
	if then == 0 || then > now {
		return 0
	}
	return int64((now - then) / 1e9)
}
