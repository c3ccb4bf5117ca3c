/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Flow sync: the data path reports each connection's life to userspace,
 * which streams it to the peer LB so that the peer's data path can forward
 * the connection the moment the VIP moves. Reported: the connection
 * established (the client's ACK), each change of state (closing, reset,
 * closed), a refresh at most every sync_refresh_ns while packets flow (so
 * the peer's copy never ages out while the connection lives here), and the
 * data path forgetting it. Half-open connections are not reported: a SYN
 * flood would be copied to the peer, and a handshake cut by a failover is
 * retried by the client. Off (sync_enabled 0), all of it is dead code the
 * verifier removes. */
#ifndef XDPLB_SYNC_H
#define XDPLB_SYNC_H

#include <bpf/bpf_helpers.h>
#include "xdplb_structs.h"
#include "xdplb_maps.h"

/* 1: report connections for the peer LB. */
volatile const __u32 sync_enabled = 0;
/* How often, at most, a live connection is reported again. */
volatile const __u64 sync_refresh_ns = 10ULL * 1000000000ULL;

/* Report the connection whose client->frontend entry is client (keyed ck)
 * and whose reply entry is reply (NULL if unknown). */
static __always_inline void sync_report(void *ctx, __u8 kind, struct flow *client, const struct flow_key *ck,
					struct flow *reply, __u64 now)
{
	struct sync_event ev = {};

	if (!sync_enabled)
		return;
	ev.kind = kind;
	ev.state = client->state;
	ev.client_flags = client->flags;
	ev.backend = client->backend;
	ev.key = *ck;
	ev.snat_port = client->sport;
	ev.client_seq = client->seq_next;
	ev.created_ns = client->created_ns;
	ev.last_seen_ns = client->last_seen_ns;
	if (reply) {
		__builtin_memcpy(ev.client_mac, reply->dmac, sizeof(ev.client_mac));
		ev.backend_flags = reply->flags;
		ev.backend_seq = reply->seq_next;
		if (reply->last_seen_ns > ev.last_seen_ns)
			ev.last_seen_ns = reply->last_seen_ns;
		reply->synced_ns = now;
	}
	client->synced_ns = now;
	bpf_perf_event_output(ctx, &xdplb_sync_ev, BPF_F_CURRENT_CPU, &ev, sizeof(ev));
}

/* Report the connection entry f (keyed k) and its twin tf (keyed tk)
 * belong to, whichever direction f is. */
static __always_inline void sync_report_pair(void *ctx, __u8 kind, struct flow *f, const struct flow_key *k,
					     struct flow *tf, const struct flow_key *tk, __u64 now)
{
	if (!sync_enabled)
		return;
	if (f->dir == FLOW_TO_BACKEND)
		sync_report(ctx, kind, f, k, tf, now);
	else if (tf)
		sync_report(ctx, kind, tf, tk, f, now);
}

#endif
