// Package bpf holds the xdplb data path: the C source of the XDP and TC
// programs, the bpf2go output built from it (committed, so building xdplb
// needs no clang) and the packet-level tests that run it through
// BPF_PROG_TEST_RUN.
package bpf

//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf -type flow_key -type flow -type backend -type backend_counters -type lb_control -type xdplb_stat -type flow_state -type flow_dir xdplb xdplb.c
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf floor floor.c
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -DXDPLB_COARSE_CLOCK -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package bpf xdplbCoarse xdplb.c
