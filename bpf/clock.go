package bpf

import "golang.org/x/sys/unix"

// Now is the data path's clock: CLOCK_MONOTONIC in ns, which both
// bpf_ktime_get_ns and bpf_ktime_get_coarse_ns read. Flow timestamps
// (created, last seen) and refusal flags are in this clock.
func Now() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
