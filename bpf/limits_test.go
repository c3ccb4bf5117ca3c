package bpf

import (
	"testing"

	"github.com/cilium/ebpf"
)

// TestLimitsMatchMaps: the Go limits (generated from enum xdplb_limit) are
// the sizes of the maps in both compiled objects, and the Go default hash
// seed is the C one.
func TestLimitsMatchMaps(t *testing.T) {
	for name, load := range map[string]func() (specs MapSpecs, seed uint32, err error){
		"precise": func() (MapSpecs, uint32, error) { return specsOf(loadXdplb) },
		"coarse":  func() (MapSpecs, uint32, error) { return specsOf(loadXdplbCoarse) },
	} {
		m, seed, err := load()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, c := range []struct {
			what      string
			got, want uint32
		}{
			{"flows", m.XdplbFlows.MaxEntries, FlowsMax},
			{"half_open", m.XdplbHalfOpen.MaxEntries, HalfOpenMax},
			{"backends", m.XdplbBackends.MaxEntries, MaxBackends},
			{"backend_refused", m.XdplbRefused.MaxEntries, MaxBackends},
			{"backend_stats", m.XdplbBeStats.MaxEntries, MaxBackends},
			{"maglev", m.XdplbMaglev.MaxEntries, 2 * MaglevSize},
			{"stats", m.XdplbStats.MaxEntries, 1},
			{"stats value", m.XdplbStats.ValueSize, uint32(8 * StatCount)},
		} {
			if c.got != c.want {
				t.Errorf("%s: map %s has %d entries, Go says %d", name, c.what, c.got, c.want)
			}
		}
		if seed != DefaultHashSeed {
			t.Errorf("%s: C hash_seed %#x, Go DefaultHashSeed %#x", name, seed, DefaultHashSeed)
		}
	}
}

func specsOf(load func() (*ebpf.CollectionSpec, error)) (MapSpecs, uint32, error) {
	var out struct {
		MapSpecs
		VariableSpecs
	}
	spec, err := load()
	if err != nil {
		return out.MapSpecs, 0, err
	}
	if err := spec.Assign(&out); err != nil {
		return out.MapSpecs, 0, err
	}
	var seed uint32
	err = out.HashSeed.Get(&seed)
	return out.MapSpecs, seed, err
}
