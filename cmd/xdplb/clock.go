package main

import "golang.org/x/sys/unix"

// monotonic is the data path's clock (CLOCK_MONOTONIC, ns).
func monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
