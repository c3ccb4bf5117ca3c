package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

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
	pkt := make([]byte, 44)
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
			buildSYN(pkt, rng, dst)
			if err := unix.Sendto(fd, pkt, 0, to); err != nil {
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

// buildSYN writes an IPv4+TCP SYN (MSS option) from a random 10.20.x.y
// source and port to dst into pkt (44 bytes).
func buildSYN(pkt []byte, rng *rand.Rand, dst netip.AddrPort) {
	src := [4]byte{10, 20, byte(rng.IntN(256)), byte(1 + rng.IntN(254))}
	d := dst.Addr().As4()
	// IPv4 header; the kernel fills in the checksum (IP_HDRINCL).
	pkt[0] = 0x45
	pkt[1] = 0
	binary.BigEndian.PutUint16(pkt[2:], 44)
	binary.BigEndian.PutUint16(pkt[4:], uint16(rng.Uint32()))
	binary.BigEndian.PutUint16(pkt[6:], 0x4000) // DF
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_TCP
	pkt[10], pkt[11] = 0, 0
	copy(pkt[12:16], src[:])
	copy(pkt[16:20], d[:])
	// TCP header with one option (MSS 1460).
	t := pkt[20:]
	binary.BigEndian.PutUint16(t[0:], uint16(1024+rng.IntN(64000)))
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], rng.Uint32())
	binary.BigEndian.PutUint32(t[8:], 0)
	t[12] = 6 << 4 // data offset: 24 bytes
	t[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	t[16], t[17] = 0, 0
	binary.BigEndian.PutUint16(t[18:], 0)
	t[20], t[21] = 2, 4
	binary.BigEndian.PutUint16(t[22:], 1460)
	// Checksum over the pseudo-header and the segment.
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	sum += unix.IPPROTO_TCP + 24
	for i := 0; i < 24; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(t[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(t[16:], ^uint16(sum))
}
