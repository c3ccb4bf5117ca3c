package loader

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// counterMaps are the pinned maps that hold only counters. A start whose
// layout of one differs from the pinned one (an upgrade across a change of
// it: the stats map's one value of named counters replaced an array of
// them) replaces it, its counters starting again from 0, rather than
// refuse the upgrade, which would ask for a detach and drop every
// tracked connection. State maps (flows, backends, ...) are never
// replaced.
var counterMaps = []string{"xdplb_stats"}

// replaceCounterMaps unpins each counter map of dir whose type, key,
// value or size is not the spec's; the load pins a new one.
func replaceCounterMaps(dir string, spec *ebpf.CollectionSpec, log *slog.Logger) error {
	for _, name := range counterMaps {
		ms, ok := spec.Maps[name]
		if !ok {
			continue
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			continue // none pinned: the load pins one
		}
		same := m.Type() == ms.Type && m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize && m.MaxEntries() == ms.MaxEntries
		desc := fmt.Sprintf("%s, %d entries of %d bytes", m.Type(), m.MaxEntries(), m.ValueSize())
		m.Close()
		if same {
			continue
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replace the counters map %s of another layout: %w", path, err)
		}
		log.Info("counters map of another layout replaced: its counters start again from 0 (tracked connections are kept)",
			"map", name, "was", desc, "now", fmt.Sprintf("%s, %d entries of %d bytes", ms.Type, ms.MaxEntries, ms.ValueSize))
	}
	return nil
}
