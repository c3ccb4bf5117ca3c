package testnet

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// Addresses of the K3s HA guide's network.
const (
	// Subnet is the guide's LAN.
	Subnet = "10.10.10.0/24"
	// VIP is the floating address that keepalived (VRRP) moves between the
	// LB pair; agents join via https://VIP:6443.
	VIP = "10.10.10.100"
	// APIPort is the K3s API server port.
	APIPort = 6443
)

// ServerAddr returns the address of server-i (1-based): 10.10.10.50+i-1.
func ServerAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 10, 10, byte(49 + i)}) }

// LBAddr returns the address of lb-i (1-based): 10.10.10.98, 10.10.10.99.
func LBAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 10, 10, byte(97 + i)}) }

// AgentAddr returns the address of agent-i (1-based): 10.10.10.100+i.
func AgentAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 10, 10, byte(100 + i)}) }

// VIPAddr returns VIP as a netip.Addr.
func VIPAddr() netip.Addr { return netip.MustParseAddr(VIP) }

// Spec chooses which of the guide's hosts exist and how they are prepared.
type Spec struct {
	// Servers is the number of K3s servers, server-1.. at 10.10.10.50.. (max 48).
	Servers int
	// LBs is the number of load balancers, lb-1 at .98 and lb-2 at .99 (max 2).
	LBs int
	// Agents is the number of agents, agent-1.. at 10.10.10.101.. (max 150).
	Agents int
	// TxOffloadOff runs DisableTxOffload on every host, so every packet on
	// the wire carries a full checksum as on a real network.
	TxOffloadOff bool
	// PassXDPOnLBPeers attaches an XDP_PASS program to the switch end of
	// every LB's veth pair, so XDP_TX out of the LB's eth1 is not lost.
	PassXDPOnLBPeers bool
}

// Guide is the network of the K3s HA guide: server-1..3 (10.10.10.50-52),
// lb-1/lb-2 (10.10.10.98/99), agent-1..3 (10.10.10.101-103), all /24 on one
// bridge, with tx offload off and XDP pass programs on the LBs' switch ports.
var Guide = Spec{Servers: 3, LBs: 2, Agents: 3, TxOffloadOff: true, PassXDPOnLBPeers: true}

// Topology is a Net built from a Spec, with its hosts by role.
type Topology struct {
	*Net
	Servers []*Host
	LBs     []*Host
	Agents  []*Host
}

// Build adds the hosts of spec to n.
func (n *Net) Build(spec Spec) (*Topology, error) {
	switch {
	case spec.Servers < 0 || spec.Servers > 48:
		return nil, fmt.Errorf("testnet: %d servers: want 0..48", spec.Servers)
	case spec.LBs < 0 || spec.LBs > 2:
		return nil, fmt.Errorf("testnet: %d LBs: want 0..2", spec.LBs)
	case spec.Agents < 0 || spec.Agents > 150:
		return nil, fmt.Errorf("testnet: %d agents: want 0..150", spec.Agents)
	}
	t := &Topology{Net: n}
	add := func(role string, i int, addr netip.Addr) (*Host, error) {
		return n.AddHost(fmt.Sprintf("%s-%d", role, i), netip.PrefixFrom(addr, 24).String())
	}
	for i := 1; i <= spec.Servers; i++ {
		h, err := add("server", i, ServerAddr(i))
		if err != nil {
			return nil, err
		}
		t.Servers = append(t.Servers, h)
	}
	for i := 1; i <= spec.LBs; i++ {
		h, err := add("lb", i, LBAddr(i))
		if err != nil {
			return nil, err
		}
		t.LBs = append(t.LBs, h)
	}
	for i := 1; i <= spec.Agents; i++ {
		h, err := add("agent", i, AgentAddr(i))
		if err != nil {
			return nil, err
		}
		t.Agents = append(t.Agents, h)
	}
	if spec.TxOffloadOff {
		for _, h := range n.Hosts() {
			if err := h.DisableTxOffload(); err != nil {
				return nil, err
			}
		}
	}
	if spec.PassXDPOnLBPeers {
		for _, h := range t.LBs {
			if err := h.AttachPassXDPToPeer(); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// CreateTopology is Create followed by Build, for programs; the caller must
// Close the result.
func CreateTopology(opts Options, spec Spec) (*Topology, error) {
	n, err := Create(opts)
	if err != nil {
		return nil, err
	}
	t, err := n.Build(spec)
	if err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return t, nil
}

// NewTopology is New followed by Build, for tests.
func NewTopology(tb testing.TB, opts Options, spec Spec) *Topology {
	tb.Helper()
	n := New(tb, opts)
	t, err := n.Build(spec)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// Server returns server-i (1-based), or nil.
func (t *Topology) Server(i int) *Host { return pick(t.Servers, i) }

// LB returns lb-i (1-based), or nil.
func (t *Topology) LB(i int) *Host { return pick(t.LBs, i) }

// Agent returns agent-i (1-based), or nil.
func (t *Topology) Agent(i int) *Host { return pick(t.Agents, i) }

func pick(hs []*Host, i int) *Host {
	if i < 1 || i > len(hs) {
		return nil
	}
	return hs[i-1]
}
