package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// EphemeralRangePath is where Linux keeps the range of source ports it hands
// out to the node's own connections.
const EphemeralRangePath = "/proc/sys/net/ipv4/ip_local_port_range"

// minSNATPort keeps translated flows off the well-known ports.
const minSNATPort = 1024

// minPreferredSNATPorts is the size under which the range above the kernel's
// ephemeral range is not worth preferring over a wider one below it.
const minPreferredSNATPorts = 1024

// PortRange is an inclusive range of ports, Lo-Hi. The zero value means
// "not set".
type PortRange struct {
	Lo, Hi uint16
}

// ParsePortRange parses "LO-HI", e.g. "61000-65535", with 1 <= LO <= HI.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return PortRange{}, fmt.Errorf("port range %q: want LO-HI, e.g. 61000-65535", s)
	}
	var r PortRange
	var err error
	if r.Lo, err = parsePort(lo); err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	if r.Hi, err = parsePort(hi); err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	if r.Lo > r.Hi {
		return PortRange{}, fmt.Errorf("port range %q: %d is above %d: write the lower port first", s, r.Lo, r.Hi)
	}
	return r, nil
}

// parsePort parses a port number, 1-65535.
func parsePort(s string) (uint16, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d out of range 1-65535", n)
	}
	return uint16(n), nil
}

// String returns "LO-HI", the form ParsePortRange and the sysctls read.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// IsZero reports whether r is unset.
func (r PortRange) IsZero() bool { return r == PortRange{} }

// Size returns the number of ports in r, 0 if r is unset or Lo > Hi.
func (r PortRange) Size() int {
	if r.IsZero() || r.Lo > r.Hi {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// Contains reports whether port is in r.
func (r PortRange) Contains(port uint16) bool { return r.Lo <= port && port <= r.Hi }

// Overlaps reports whether r and o share a port.
func (r PortRange) Overlaps(o PortRange) bool {
	return r.Size() > 0 && o.Size() > 0 && r.Lo <= o.Hi && o.Lo <= r.Hi
}

// ReadEphemeralRange reads the kernel's ephemeral port range from path,
// normally EphemeralRangePath, which holds "32768\t60999".
func ReadEphemeralRange(path string) (PortRange, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return PortRange{}, fmt.Errorf("read the kernel's ephemeral port range: %w", err)
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return PortRange{}, fmt.Errorf("parse %s: %q: want two ports", path, strings.TrimSpace(string(b)))
	}
	r, err := ParsePortRange(fields[0] + "-" + fields[1])
	if err != nil {
		return PortRange{}, fmt.Errorf("parse %s: %w", path, err)
	}
	return r, nil
}

// DefaultSNATPorts chooses the source ports of translated flows when the
// config leaves snat-ports unset. The range always excludes the ports below
// 1024 and the frontend port: a translated flow's source can never look like
// a new connection to the frontend.
//
// When the frontend is a VIP that nothing but xdplb uses as a source
// (frontendIsLocalAddr false), no other connection can collide, so it is the
// widest such range: frontendPort+1 to 65535 for 6443 (59092 ports).
//
// When the frontend is the node's own address, the node's connections take
// their source ports from the kernel's ephemeral range, so the range must lie
// outside it (the daemon also adds it to net.ipv4.ip_local_reserved_ports, in
// case the ephemeral range is widened later). It is the range above the
// ephemeral one if that holds at least 1024 ports: 61000-65535 with the usual
// 32768-60999, i.e. 4536 concurrent flows per backend. Otherwise it is the
// widest free range.
//
// The zero PortRange means there is no free port: the ephemeral range covers
// 1024-65535 and must be narrowed.
func DefaultSNATPorts(frontendPort uint16, frontendIsLocalAddr bool, ephemeral PortRange) PortRange {
	taken := []PortRange{{frontendPort, frontendPort}}
	if frontendIsLocalAddr {
		taken = append(taken, ephemeral)
		free := freePortRanges(taken)
		for _, r := range free {
			if ephemeral.Size() > 0 && r.Lo > ephemeral.Hi && r.Size() >= minPreferredSNATPorts {
				return r
			}
		}
		return widest(free)
	}
	return widest(freePortRanges(taken))
}

// ValidateSNATAgainstKernel checks snat against the kernel's ephemeral port
// range: when the frontend is the node's own address, the node's connections
// and the translated flows share the source address, so they must not share
// source ports either.
func ValidateSNATAgainstKernel(frontendLocal bool, snat, ephemeral PortRange) error {
	if !frontendLocal || !snat.Overlaps(ephemeral) {
		return nil
	}
	advice := "narrow net.ipv4.ip_local_port_range"
	if free := widestAbove(freePortRanges([]PortRange{ephemeral}), ephemeral.Hi); !free.IsZero() {
		advice = fmt.Sprintf("set snat-ports outside it, e.g. %s, or leave it unset to have one chosen", free)
	}
	return fmt.Errorf("snat-ports %s overlap the kernel's ephemeral ports %s (net.ipv4.ip_local_port_range) "+
		"and the frontend is this node's own address, so its own connections could take a translated flow's port: %s",
		snat, ephemeral, advice)
}

// freePortRanges returns the ranges of 1024-65535 not covered by taken, in
// ascending order.
func freePortRanges(taken []PortRange) []PortRange {
	var free []PortRange
	lo := uint32(minSNATPort)
	for lo <= 65535 {
		// Find the first taken range at or after lo that starts the
		// earliest, skipping any that covers lo.
		hi := uint32(65535)
		covered := false
		for _, t := range taken {
			if t.Size() == 0 {
				continue
			}
			if uint32(t.Lo) <= lo && lo <= uint32(t.Hi) {
				lo = uint32(t.Hi) + 1
				covered = true
				break
			}
			if uint32(t.Lo) > lo {
				hi = min(hi, uint32(t.Lo)-1)
			}
		}
		if covered {
			continue
		}
		free = append(free, PortRange{uint16(lo), uint16(hi)})
		lo = hi + 1
	}
	return free
}

// widest returns the widest range, the highest of equals; zero if none.
func widest(rs []PortRange) PortRange {
	var best PortRange
	for _, r := range rs {
		if r.Size() >= best.Size() {
			best = r
		}
	}
	return best
}

// widestAbove is widest among the ranges above port, else among all.
func widestAbove(rs []PortRange, port uint16) PortRange {
	var above []PortRange
	for _, r := range rs {
		if r.Lo > port {
			above = append(above, r)
		}
	}
	if best := widest(above); !best.IsZero() {
		return best
	}
	return widest(rs)
}
