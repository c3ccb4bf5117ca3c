package bpf

import "github.com/xdplb/xdplb/bpf/packet"

// mac is the test network's MAC of the host whose address ends in last.
func mac(last byte) packet.MAC { return packet.MAC{0x02, 0x00, 0x00, 0x00, 0x00, last} }
