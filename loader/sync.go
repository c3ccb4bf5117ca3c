package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/perf"
	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf"
)

// ErrTableFull: the connection table has no room for an entry.
var ErrTableFull = errors.New("connection table full")

// LookupFlow reads the entry keyed k of table t.
func (d Datapath) LookupFlow(t bpf.FlowTable, k bpf.FlowKey) (bpf.Flow, bool, error) {
	var f bpf.Flow
	err := d.table(t).Lookup(k, &f)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return f, false, nil
	}
	return f, err == nil, err
}

// PutConnection writes a connection's two entries into the established
// table: the reply entry first, so that the data path never forwards a
// client's packet whose answer it could not translate back.
func (d Datapath) PutConnection(ck bpf.FlowKey, client bpf.Flow, rk bpf.FlowKey, reply bpf.Flow) error {
	if err := d.putFlow(rk, reply); err != nil {
		return err
	}
	if err := d.putFlow(ck, client); err != nil {
		d.M.XdplbFlows.Delete(rk)
		return err
	}
	return nil
}

// SetSNATNext sets where the data path's next search for a SNAT port to a
// backend starts: the offset in the SNAT range plus one (xdplb_snat_next).
func (d Datapath) SetSNATNext(backend uint32, next uint32) error {
	return d.M.XdplbSnatNext.Put(backend, next)
}

func (d Datapath) putFlow(k bpf.FlowKey, f bpf.Flow) error {
	err := d.M.XdplbFlows.Put(k, f)
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("%w (%d entries)", ErrTableFull, d.M.XdplbFlows.MaxEntries())
	}
	return err
}

// SyncEvents reads the data path's flow sync reports (the xdplb_sync_ev
// perf event array).
type SyncEvents struct{ r *perf.Reader }

// OpenSyncEvents starts reading the reports, with a buffer of perCPU bytes
// per CPU.
func OpenSyncEvents(m *bpf.Maps, perCPU int) (*SyncEvents, error) {
	r, err := perf.NewReader(m.XdplbSyncEv, perCPU)
	if err != nil {
		return nil, fmt.Errorf("read the data path's sync events: %w", err)
	}
	return &SyncEvents{r: r}, nil
}

// ErrClosed: the reader was closed.
var ErrClosed = perf.ErrClosed

// Read returns the next report, or the number of reports the kernel
// dropped because the buffer was full (lost > 0, no event); a deadline
// that passes gives os.ErrDeadlineExceeded.
func (s *SyncEvents) Read(deadline time.Time) (ev bpf.SyncEvent, lost uint64, err error) {
	s.r.SetDeadline(deadline)
	rec, err := s.r.Read()
	if err != nil {
		return ev, 0, err
	}
	if rec.LostSamples > 0 {
		return ev, rec.LostSamples, nil
	}
	ev, err = DecodeSyncEvent(rec.RawSample)
	return ev, 0, err
}

// Close stops reading.
func (s *SyncEvents) Close() error { return s.r.Close() }

// syncEventLen is the size of struct sync_event.
const syncEventLen = 64

// DecodeSyncEvent reads a struct sync_event as the data path wrote it
// (host byte order; keys and ports as the packet's bytes), without
// reflection: the daemon decodes one per connection change.
func DecodeSyncEvent(b []byte) (bpf.SyncEvent, error) {
	var ev bpf.SyncEvent
	if len(b) < syncEventLen {
		return ev, fmt.Errorf("sync event of %d bytes, want %d", len(b), syncEventLen)
	}
	ne := binary.NativeEndian
	ev.Kind, ev.State, ev.ClientFlags, ev.BackendFlags = b[0], b[1], b[2], b[3]
	ev.Backend = ne.Uint32(b[4:])
	ev.Key.Saddr = ne.Uint32(b[8:])
	ev.Key.Daddr = ne.Uint32(b[12:])
	ev.Key.Sport = ne.Uint16(b[16:])
	ev.Key.Dport = ne.Uint16(b[18:])
	ev.Key.Proto = b[20]
	ev.SnatPort = ne.Uint16(b[24:])
	copy(ev.ClientMac[:], b[26:32])
	ev.ClientSeq = ne.Uint32(b[32:])
	ev.BackendSeq = ne.Uint32(b[36:])
	ev.CreatedNs = ne.Uint64(b[48:])
	ev.LastSeenNs = ne.Uint64(b[56:])
	return ev, nil
}
