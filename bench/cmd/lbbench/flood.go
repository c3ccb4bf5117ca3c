package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdplb/xdplb/bpf/packet"
	"github.com/xdplb/xdplb/tests/testnet"
)

// floodStats is what the flooder did.
type floodStats struct {
	TargetPPS   int     `json:"target_pps"`
	Sent        uint64  `json:"sent"`
	SendErrors  uint64  `json:"send_errors"`
	Skipped     uint64  `json:"skipped"` // fell behind the schedule (CPU stalls)
	FirstError  string  `json:"first_error,omitempty"`
	ElapsedS    float64 `json:"elapsed_s"`
	AchievedPPS float64 `json:"achieved_pps"`
}

// synFlood sends pure SYNs with random spoofed sources in 10.20.0.0/16 from
// the flood host to dst, at pps for dur: at most pps*dur packets, and never
// past dur+1 s, whatever happens. The socket is a raw IPv4 socket opened
// inside the flood host's namespace, so nothing leaves it but toward the
// test bridge.
func synFlood(ctx context.Context, h *testnet.Host, dst netip.AddrPort, pps int, dur time.Duration) (floodStats, error) {
	st := floodStats{TargetPPS: pps}
	var fd int
	if err := h.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IP_HDRINCL implied
		return err
	}); err != nil {
		return st, fmt.Errorf("raw socket on %s: %w", h.Name, err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x5eed))
	total := uint64(float64(pps) * dur.Seconds())
	start := time.Now()
	hardStop := start.Add(dur + time.Second)
	for st.Sent+st.SendErrors+st.Skipped < total && ctx.Err() == nil {
		now := time.Now()
		if now.After(hardStop) {
			break
		}
		due := uint64(float64(pps) * now.Sub(start).Seconds())
		if due > total {
			due = total
		}
		// Never burst more than 10 ms worth to catch up after a stall:
		// what could not be sent in time is counted as skipped.
		if done := st.Sent + st.SendErrors + st.Skipped; due > done+uint64(pps/100)+1 {
			skip := due - done - uint64(pps/100) - 1
			st.Skipped += skip
		}
		for st.Sent+st.SendErrors+st.Skipped < due {
			if err := unix.Sendto(fd, synDatagram(rng, dst), 0, to); err != nil {
				st.SendErrors++
				if st.FirstError == "" {
					st.FirstError = err.Error()
				}
				continue
			}
			st.Sent++
		}
		time.Sleep(time.Millisecond)
	}
	st.ElapsedS = time.Since(start).Seconds()
	if st.ElapsedS > 0 {
		st.AchievedPPS = float64(st.Sent) / st.ElapsedS
	}
	return st, nil
}

// mss1460 is the TCP option a SYN of a real client carries.
var mss1460 = []byte{2, 4, 0x05, 0xb4}

// synDatagram is an IPv4+TCP SYN (MSS option, 44 bytes) from a random
// 10.20.x.y source and port to dst, as an IPPROTO_RAW socket sends it.
func synDatagram(rng *rand.Rand, dst netip.AddrPort) []byte {
	src := netip.AddrFrom4([4]byte{10, 20, byte(rng.IntN(256)), byte(1 + rng.IntN(254))})
	id := uint16(rng.Uint32())
	return packet.TCP{
		Src:     netip.AddrPortFrom(src, uint16(1024+rng.IntN(64000))),
		Dst:     dst,
		IP:      packet.IP{ID: id},
		Flags:   packet.SYN,
		Seq:     rng.Uint32(),
		Options: mss1460,
	}.Datagram()
}
