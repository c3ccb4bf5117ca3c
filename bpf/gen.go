// Package bpf holds the xdplb data path: the C source of the XDP and TC
// programs, the bpf2go output built from it (committed, so building xdplb
// needs no clang), the Go view of what the data path shares with userspace
// (its map types and limits, the stat reasons, the load-time constants,
// hook and mode names, the pin layout on bpffs, its clock), and the
// packet-level tests that run it through BPF_PROG_TEST_RUN.
//
// Every fact about the data path is defined here once: sizes in the C enum
// xdplb_limit, exported to Go by bpf2go; stat labels kept in sync with the
// C enum by a test. It imports nothing of xdplb's; its non-test code only
// parses the embedded objects, sets their constants and reads the clock —
// loading, pinning and attaching are the loader's.
package bpf

//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf -type flow_key -type flow -type backend -type backend_counters -type lb_control -type xdplb_stat -type flow_state -type flow_dir -type xdplb_limit -type sync_event -type sync_event_kind xdplb xdplb.c
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf floor floor.c
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -DXDPLB_COARSE_CLOCK -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf xdplbCoarse xdplb.c
