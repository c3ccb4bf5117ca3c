/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* The maps of one xdplb instance. All are pinned by name under
 * <bpffs>/xdplb/<instance>/ by the loader, with BTF so bpftool prints them. */
#ifndef XDPLB_MAPS_H
#define XDPLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdplb_consts.h"
#include "xdplb_structs.h"

/* Established and closing flows: both directions of each connection. A
 * plain hash, never an LRU: a new connection must never evict an
 * established one. When it is full, new connections are refused with a RST
 * (and userspace refuses them earlier, through lb_control.refuse_new).
 * The loader sizes it from the configuration. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPLB_FLOWS_MAX);
	__type(key, struct flow_key);
	__type(value, struct flow);
} xdplb_flows SEC(".maps");

/* Flows whose backend has not answered the SYN yet. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPLB_HALF_OPEN_MAX);
	__type(key, struct flow_key);
	__type(value, struct flow);
} xdplb_half_open SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} xdplb_backends SEC(".maps");

/* When (bpf_ktime_get_ns) a backend last answered a SYN with a reset; 0 when
 * clear. Written by the data path, cleared by the health checker. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u64);
} xdplb_refused SEC(".maps");

/* Two Maglev tables back to back; lb_control says which is live. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * XDPLB_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} xdplb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_control);
} xdplb_control SEC(".maps");

/* Single-entry array: policy bits userspace sets at run time (POLICY_F_*).
 * A map of its own rather than a field of lb_control, so that adding it
 * changed the layout of no pinned map (an upgrade keeps the old ones). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xdplb_policy SEC(".maps");

/* One entry (key 0) per CPU: a counter per reason, by name (struct
 * xdplb_stats). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdplb_stats);
} xdplb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_counters);
} xdplb_be_stats SEC(".maps");

/* Per backend, the offset in the SNAT range to try next (0: not chosen
 * yet). Ports are handed out in turn, not at random, so a port comes back
 * only after the whole range went round: a backend that still holds state
 * for a port's previous connection (a SYN_RECV left by a flood whose
 * half-open entry we already evicted) is not asked to take a new one on it.
 * Shared by the CPUs without atomics (5.4 has no fetching atomics): two
 * CPUs that read the same offset race for the port, the loser takes the
 * next one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u32);
} xdplb_snat_next SEC(".maps");

/* Flow sync events (struct sync_event), one ring per CPU; userspace sizes
 * it to the CPUs at load. */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} xdplb_sync_ev SEC(".maps");

/* Established connections per client address, for the per-client limit.
 * The data path counts opens and the closes it sees; userspace rewrites
 * the exact counts at every flow GC. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPLB_CLIENTS_MAX);
	__type(key, __be32);
	__type(value, __u32);
} xdplb_clients SEC(".maps");

#endif
