package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/xdplb/xdplb/tests/testenv"
)

// XDP and TC verdicts as Program.Run returns them.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4

	tcOK       = 0
	tcShot     = 2
	tcRedirect = 7
	tcUnspec   = 0xffffffff
)

var (
	vip      = netip.MustParseAddr("10.10.10.100")
	frontend = netip.AddrPortFrom(vip, 6443)
	lbMAC    = mac(0x98)
	server1  = netip.MustParseAddrPort("10.10.10.50:6443")
	server2  = netip.MustParseAddrPort("10.10.10.51:6443")
	server3  = netip.MustParseAddrPort("10.10.10.52:6443")
	agent1   = netip.MustParseAddrPort("10.10.10.101:40001")
	agentMAC = mac(0x01)
)

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t, "loads BPF programs and runs them with BPF_PROG_TEST_RUN")
}

type testBackend struct {
	id   uint32
	addr netip.AddrPort
	mac  [6]byte
}

var threeServers = []testBackend{
	{0, server1, mac(0x50)},
	{1, server2, mac(0x51)},
	{2, server3, mac(0x52)},
}

type harness struct {
	t    testing.TB
	cfg  Config
	maps *Maps
	xdp  *ebpf.Program
	tc   *ebpf.Program
}

type harnessOpt func(spec *MapSpecs)

// withMapSize shrinks a map so tests can fill it.
func withMapSize(m func(*MapSpecs) *ebpf.MapSpec, n uint32) harnessOpt {
	return func(spec *MapSpecs) { m(spec).MaxEntries = n }
}

func halfOpenSpec(s *MapSpecs) *ebpf.MapSpec { return s.XdplbHalfOpen }

func newHarness(t testing.TB, cfg Config, backends []testBackend, opts ...harnessOpt) *harness {
	t.Helper()
	requireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	if cfg.Frontend == (netip.AddrPort{}) {
		cfg.Frontend = frontend
	}
	if cfg.SNATLo == 0 {
		cfg.SNATLo, cfg.SNATHi = 20000, 29999
	}
	spec, err := LoadSpec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var specs MapSpecs
	if err := spec.Assign(&specs); err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(&specs)
	}
	var objs xdplbObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load: %+v", ve)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	h := &harness{t: t, cfg: cfg, maps: &objs.xdplbMaps, xdp: objs.XdplbXdp, tc: objs.XdplbTc}
	h.setBackends(backends)
	return h
}

// setBackends writes the backends and fills the live Maglev table with
// them in turn (slot i -> backends[i % n]); the control package builds
// real Maglev tables, the data path only reads slots.
func (h *harness) setBackends(bs []testBackend) {
	h.t.Helper()
	for _, b := range bs {
		be := Backend{Addr: BE32(b.addr.Addr()), Port: BE16(b.addr.Port()), Flags: BackendFlagMAC, Mac: b.mac, Smac: lbMAC}
		if err := h.maps.XdplbBackends.Put(b.id, be); err != nil {
			h.t.Fatal(err)
		}
	}
	table := make([]uint32, MaglevSize)
	for i := range table {
		if len(bs) == 0 {
			table[i] = emptySlot
		} else {
			table[i] = bs[i%len(bs)].id
		}
	}
	h.putTable(0, table)
	if err := h.maps.XdplbControl.Put(uint32(0), LBControl{MaglevActive: 0}); err != nil {
		h.t.Fatal(err)
	}
}

// emptySlot is a Maglev slot owned by no backend (any index at or above
// MaxBackends).
const emptySlot = ^uint32(0)

func (h *harness) putTable(half uint32, table []uint32) {
	h.t.Helper()
	if err := PutMaglev(h.maps.XdplbMaglev, half, table); err != nil {
		h.t.Fatal(err)
	}
}

// result of one run: verdict, output bytes and counter deltas.
type result struct {
	verdict uint32
	out     []byte
	stats   map[Stat]uint64
}

func (h *harness) stats() []uint64 {
	h.t.Helper()
	var per [][StatCount]uint64
	if err := h.maps.XdplbStats.Lookup(uint32(0), &per); err != nil {
		h.t.Fatal(err)
	}
	return SumStats(per)
}

func (h *harness) backendCounters(id uint32) BackendCounters {
	h.t.Helper()
	var per []BackendCounters
	if err := h.maps.XdplbBeStats.Lookup(id, &per); err != nil {
		h.t.Fatal(err)
	}
	var sum BackendCounters
	for _, c := range per {
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		sum.NewFlows += c.NewFlows
	}
	return sum
}

func (h *harness) run(prog *ebpf.Program, in []byte) result {
	h.t.Helper()
	r, err := h.tryRun(prog, in)
	if err != nil {
		h.t.Fatalf("run: %v", err)
	}
	return r
}

// tryRun is run for inputs the kernel's test harness itself may refuse.
func (h *harness) tryRun(prog *ebpf.Program, in []byte) (result, error) {
	h.t.Helper()
	before := h.stats()
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	v, err := prog.Run(opts)
	if err != nil {
		return result{}, err
	}
	after := h.stats()
	r := result{verdict: v, out: opts.DataOut, stats: map[Stat]uint64{}}
	for i := range after {
		if d := after[i] - before[i]; d != 0 {
			r.stats[Stat(i)] = d
		}
	}
	return r, nil
}

// table is the map of a flow table.
func (h *harness) table(t FlowTable) *ebpf.Map {
	if t == TableHalfOpen {
		return h.maps.XdplbHalfOpen
	}
	return h.maps.XdplbFlows
}

func (h *harness) flow(t FlowTable, k FlowKey) (Flow, bool) {
	h.t.Helper()
	var f Flow
	err := h.table(t).Lookup(k, &f)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return f, false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return f, true
}

func (h *harness) count(t FlowTable) int {
	h.t.Helper()
	n := 0
	var k FlowKey
	var f Flow
	it := h.table(t).Iterate()
	for it.Next(&k, &f) {
		n++
	}
	if err := it.Err(); err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) dump(t FlowTable) []string {
	var out []string
	var k FlowKey
	var f Flow
	it := h.table(t).Iterate()
	for it.Next(&k, &f) {
		out = append(out, fmt.Sprintf("%v->%v => %v->%v be=%d state=%v", k.Src(), k.Dst(), f.Src(), f.Dst(), f.Backend, FlowState(f.State)))
	}
	return out
}
