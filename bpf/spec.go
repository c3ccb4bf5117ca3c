package bpf

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Config is what the data path fixes at load time.
type Config struct {
	Frontend     netip.AddrPort // the VIP or the node's own address, and port
	SNATLo       uint16         // SNAT port pool, inclusive
	SNATHi       uint16
	SynTimeout   time.Duration // half-open flows
	IdleTimeout  time.Duration // established flows without traffic
	CloseTimeout time.Duration // after a FIN
	ResetTimeout time.Duration // after a RST
	RefusedHold  time.Duration // how long a backend that refused a SYN is skipped
	HashSeed     uint32        // 0 keeps the compiled-in seed
	Clock        Clock         // which clock flows age by
	// MaxConns sizes the established table (two entries a connection);
	// 0 keeps FlowsMax/2.
	MaxConns uint32
	// MaxConnsPerClient caps one client address's established
	// connections; 0: no cap.
	MaxConnsPerClient uint32
	// NoBackendReset: a new connection no backend can take gets a RST at
	// once instead of its SYN being dropped, always (the xdplb_policy map
	// can also ask for it at run time: PolicyResetNoBackend).
	NoBackendReset bool
	// Sync makes the data path report connections (SyncEvent) for the
	// peer LB, again every SyncRefresh at most while packets flow
	// (default 10 s).
	Sync        bool
	SyncRefresh time.Duration
}

// Clock selects the data path's clock.
type Clock int

const (
	// ClockAuto picks ClockCoarse where the kernel has it (5.11+).
	ClockAuto Clock = iota
	// ClockPrecise is bpf_ktime_get_ns: every kernel, slow in VMs.
	ClockPrecise
	// ClockCoarse is bpf_ktime_get_coarse_ns: 5.11+, a memory read.
	ClockCoarse
)

func (c Clock) String() string {
	switch c {
	case ClockPrecise:
		return "bpf_ktime_get_ns"
	case ClockCoarse:
		return "bpf_ktime_get_coarse_ns"
	}
	return "auto"
}

// ResolveClock turns ClockAuto into the clock this kernel supports.
func ResolveClock(c Clock) Clock {
	if c != ClockAuto {
		return c
	}
	if features.HaveProgramHelper(ebpf.XDP, asm.FnKtimeGetCoarseNs) == nil {
		return ClockCoarse
	}
	return ClockPrecise
}

// withDefaults fills unset timeouts.
func (c Config) withDefaults() Config {
	if c.SynTimeout == 0 {
		c.SynTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Hour
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 10 * time.Second
	}
	if c.ResetTimeout == 0 {
		c.ResetTimeout = 2 * time.Second
	}
	if c.RefusedHold == 0 {
		c.RefusedHold = 10 * time.Second
	}
	if c.SyncRefresh == 0 {
		c.SyncRefresh = 10 * time.Second
	}
	return c
}

// Validate reports a configuration the data path cannot work with.
func (c Config) Validate() error {
	if !c.Frontend.Addr().Is4() {
		return fmt.Errorf("frontend %s: need an IPv4 address", c.Frontend)
	}
	if c.Frontend.Port() == 0 {
		return fmt.Errorf("frontend %s: need a port", c.Frontend)
	}
	if c.SNATLo == 0 || c.SNATLo > c.SNATHi {
		return fmt.Errorf("snat ports %d-%d: need 1 <= lo <= hi", c.SNATLo, c.SNATHi)
	}
	if p := c.Frontend.Port(); p >= c.SNATLo && p <= c.SNATHi {
		return fmt.Errorf("snat ports %d-%d contain the frontend port %d", c.SNATLo, c.SNATHi, p)
	}
	if c.MaxConns > MaxConnsLimit {
		return fmt.Errorf("max conns %d: at most %d", c.MaxConns, MaxConnsLimit)
	}
	return nil
}

// MaxConnsLimit bounds the established table: 4M connections, 8M entries
// of ~100 bytes with the hash map's overhead, about 1 GiB of kernel memory.
const MaxConnsLimit = 1 << 22

// FlowEntries is the size of the established table for cfg.
func (c Config) FlowEntries() uint32 {
	if c.MaxConns == 0 {
		return FlowsMax
	}
	return 2 * c.MaxConns
}

// LoadSpec returns the data path's collection spec with cfg set into its
// load-time constants.
func LoadSpec(cfg Config) (*ebpf.CollectionSpec, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	load := loadXdplb
	if ResolveClock(cfg.Clock) == ClockCoarse {
		load = loadXdplbCoarse
	}
	spec, err := load()
	if err != nil {
		return nil, fmt.Errorf("parse embedded bpf object: %w", err)
	}
	var objs struct {
		MapSpecs
		VariableSpecs
	}
	if err := spec.Assign(&objs); err != nil {
		return nil, fmt.Errorf("bpf object: %w", err)
	}
	objs.XdplbFlows.MaxEntries = cfg.FlowEntries()
	vars := objs.VariableSpecs
	var noBackendReset, syncEnabled uint32
	if cfg.NoBackendReset {
		noBackendReset = 1
	}
	if cfg.Sync {
		syncEnabled = 1
	}
	set := []struct {
		v     *ebpf.VariableSpec
		value any
	}{
		{vars.FrontendAddr, BE32(cfg.Frontend.Addr())},
		{vars.FrontendPort, BE16(cfg.Frontend.Port())},
		{vars.SnatPortLo, cfg.SNATLo},
		{vars.SnatPortHi, cfg.SNATHi},
		{vars.TimeoutSynNs, uint64(cfg.SynTimeout)},
		{vars.TimeoutEstablishedNs, uint64(cfg.IdleTimeout)},
		{vars.TimeoutClosingNs, uint64(cfg.CloseTimeout)},
		{vars.TimeoutResetNs, uint64(cfg.ResetTimeout)},
		{vars.RefusedHoldNs, uint64(cfg.RefusedHold)},
		{vars.MaxConnsPerClient, cfg.MaxConnsPerClient},
		{vars.NoBackendReset, noBackendReset},
		{vars.SyncEnabled, syncEnabled},
		{vars.SyncRefreshNs, uint64(cfg.SyncRefresh)},
	}
	if cfg.HashSeed != 0 {
		set = append(set, struct {
			v     *ebpf.VariableSpec
			value any
		}{vars.HashSeed, cfg.HashSeed})
	}
	for _, s := range set {
		if err := s.v.Set(s.value); err != nil {
			return nil, fmt.Errorf("set %s: %w", s.v.Name, err)
		}
	}
	return spec, nil
}

// Timeout returns the idle timeout of a flow in state s under cfg, as the
// data path applies it; userspace GC uses the same rule.
func (c Config) Timeout(s FlowState) time.Duration {
	c = c.withDefaults()
	switch s {
	case FlowSynSent:
		return c.SynTimeout
	case FlowEstablished:
		return c.IdleTimeout
	case FlowClosing:
		return c.CloseTimeout
	}
	return c.ResetTimeout
}

// EmbeddedSpec returns the data path's collection spec as compiled, without
// configuration: its maps and programs, for code that opens or removes an
// instance's pins rather than loading it.
func EmbeddedSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadXdplb()
	if err != nil {
		return nil, fmt.Errorf("parse embedded bpf object: %w", err)
	}
	return spec, nil
}

// LoadFloorSpec returns the MAC-swap XDP_TX program benchmarks compare with.
func LoadFloorSpec() (*ebpf.CollectionSpec, error) { return loadFloor() }
