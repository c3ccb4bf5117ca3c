//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR MIT
/* xdplb data path: full-NAT TCP load balancing of one frontend address:port
 * over backends chosen by Maglev, with connection tracking.
 *
 *   client:cport -> frontend:fport   becomes  frontend:snat -> backend:bport
 *   backend:bport -> frontend:snat   becomes  frontend:fport -> client:cport
 *
 * The same logic runs as an XDP program and as a TC (clsact/tcx ingress)
 * program; only reading the packet and applying the rewrite differ. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <stddef.h>

#include "xdplb_consts.h"
#include "xdplb_structs.h"
#include "xdplb_maps.h"
#include "parsing.h"
#include "csum.h"
#include "jhash.h"
#include "tcp.h"
#include "reset.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The clock flows age by. bpf_ktime_get_ns reads the clocksource, which in
 * a VM (kvm-clock) costs more than the whole rest of the established path;
 * kernels >= 5.11 have a coarse clock (the same CLOCK_MONOTONIC, at tick
 * resolution) that costs a memory read. The loader probes for the helper and
 * picks the object built with XDPLB_COARSE_CLOCK when the kernel has it. */
#ifdef XDPLB_COARSE_CLOCK
#define clock_now() bpf_ktime_get_coarse_ns()
#else
#define clock_now() bpf_ktime_get_ns()
#endif

/* Load-time configuration, set by the loader through spec.Variables before
 * the program is loaded. Addresses and the frontend port in network byte
 * order; the SNAT range and timeouts in host order. */
volatile const __be32 frontend_addr = 0;
volatile const __be16 frontend_port = 0;
volatile const __u16 snat_port_lo = 0;
volatile const __u16 snat_port_hi = 0;
volatile const __u64 timeout_syn_ns = 10ULL * 1000000000ULL;
volatile const __u64 timeout_established_ns = 7200ULL * 1000000000ULL;
volatile const __u64 timeout_closing_ns = 10ULL * 1000000000ULL;
volatile const __u64 timeout_reset_ns = 2ULL * 1000000000ULL;
/* How long a backend that answered a SYN with RST is skipped by new flows
 * unless the health checker clears it sooner: the data path heals itself
 * when no daemon runs. */
volatile const __u64 refused_hold_ns = 10ULL * 1000000000ULL;
/* Fixed, so both LBs of a pair pick the same backend for a connection. */
volatile const __u32 hash_seed = 0x786c6231; /* "xlb1" */
/* Established connections one client address may hold; 0: no limit. */
volatile const __u32 max_conns_per_client = 0;
/* 1: a new connection no backend can take gets a RST at once; 0: its SYN
 * is dropped (the client retransmits), unless xdplb_policy says otherwise
 * at run time (POLICY_F_RESET_NO_BACKEND). */
volatile const __u32 no_backend_reset = 0;

/* After the consts: it reads frontend_addr. */
#include "icmp.h"
#include "sync.h"

static __always_inline void count(__u32 reason)
{
	__u32 zero = 0;
	struct xdplb_stats *s = bpf_map_lookup_elem(&xdplb_stats, &zero);

	if (s && reason < STAT_MAX)
		((__u64 *)s)[reason] += 1;
}

static __always_inline void count_backend(__u32 id, __u32 bytes, int new_flow)
{
	struct backend_counters *s = bpf_map_lookup_elem(&xdplb_be_stats, &id);

	if (!s)
		return;
	s->packets += 1;
	s->bytes += bytes;
	s->new_flows += new_flow;
}

static __always_inline __u64 flow_timeout(__u8 state)
{
	switch (state) {
	case FLOW_SYN_SENT:
		return timeout_syn_ns;
	case FLOW_ESTABLISHED:
		return timeout_established_ns;
	case FLOW_CLOSING:
		return timeout_closing_ns;
	default:
		return timeout_reset_ns;
	}
}

static __always_inline int flow_expired(const struct flow *f, __u64 now)
{
	return now > f->last_seen_ns && now - f->last_seen_ns > flow_timeout(f->state);
}

/* The key of the other direction of the connection f belongs to. */
static __always_inline void twin_key(const struct flow *f, struct flow_key *k)
{
	k->saddr = f->daddr;
	k->daddr = f->saddr;
	k->sport = f->dport;
	k->dport = f->sport;
	k->proto = IPPROTO_TCP;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline void set_state(struct flow *f, __u8 state, __u64 now)
{
	f->state = state;
	f->last_seen_ns = now;
}

/* A FIN or RST on an established flow (f, keyed k: the entry of the
 * sender's direction). Only one the endpoint itself sent (see tcp.h) moves
 * the connection towards its end, in both entries so they age out
 * together; anything else is forwarded and left to the receiver. */
static __always_inline void track_close(struct flow *f, const struct flow_key *k, const struct packet *p, __u64 now)
{
	struct flow_key tk;
	struct flow *twin;
	__u8 state;

	if (p->tcp_flags & TH_RST) {
		if (!trusted_rst(f, p)) {
			count(STAT_INFO_CLOSE_IGNORED);
			return;
		}
		state = FLOW_RESET;
	} else {
		if (!trusted_fin(f, p)) {
			count(STAT_INFO_CLOSE_IGNORED);
			return;
		}
		f->flags |= FLOW_F_FIN;
		state = FLOW_CLOSING;
	}
	twin_key(f, &tk);
	twin = bpf_map_lookup_elem(&xdplb_flows, &tk);
	if (state == FLOW_CLOSING && twin && (twin->flags & FLOW_F_FIN))
		state = FLOW_CLOSED;
	if (f->state < state)
		set_state(f, state, now);
	if (twin && twin->state < state)
		set_state(twin, state, now);
	sync_report_pair(p->ctx, SYNC_EV_UPSERT, f, k, twin, &tk, now);
}

/* A connection the data path forgets before its end: its client counts
 * one connection less. */
static __always_inline void uncount_client(__be32 client)
{
	__u32 *n = bpf_map_lookup_elem(&xdplb_clients, &client);

	if (n && *n > 0)
		__sync_fetch_and_add(n, -1);
}

static __always_inline void count_client(__be32 client)
{
	__u32 *n = bpf_map_lookup_elem(&xdplb_clients, &client);
	__u32 one = 1;

	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	if (bpf_map_update_elem(&xdplb_clients, &client, &one, BPF_NOEXIST)) {
		n = bpf_map_lookup_elem(&xdplb_clients, &client);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
}

/* Deletes both entries of the connection f (keyed k) from map. */
static __always_inline void forget(const struct packet *p, void *map, struct flow *f, struct flow_key *k, __u64 now)
{
	struct flow_key tk;

	twin_key(f, &tk);
	if (map == (void *)&xdplb_flows) {
		uncount_client(f->dir == FLOW_TO_BACKEND ? k->saddr : f->daddr);
		sync_report_pair(p->ctx, SYNC_EV_DELETE, f, k, bpf_map_lookup_elem(map, &tk), &tk, now);
	}
	bpf_map_delete_elem(map, &tk);
	bpf_map_delete_elem(map, k);
}

/* A packet of an established connection: note the time (at most once a
 * second: a store per packet would bounce the cache line between CPUs),
 * and report the connection again to the peer LB when it is due. */
static __always_inline void touch(const struct packet *p, struct flow *f, const struct flow_key *k, __u64 now)
{
	struct flow_key tk;

	if (now - f->last_seen_ns <= LAST_SEEN_GRANULARITY_NS)
		return;
	f->last_seen_ns = now;
	if (sync_enabled && f->dir == FLOW_TO_BACKEND && f->state >= FLOW_ESTABLISHED &&
	    now - f->synced_ns > sync_refresh_ns) {
		twin_key(f, &tk);
		sync_report(p->ctx, SYNC_EV_UPSERT, f, k, bpf_map_lookup_elem(&xdplb_flows, &tk), now);
	}
}

/* A half-open connection's packet: its time only. */
static __always_inline void touch_half_open(struct flow *f, __u64 now)
{
	if (now - f->last_seen_ns > LAST_SEEN_GRANULARITY_NS)
		f->last_seen_ns = now;
}

/* Look a key up in one flow table, dropping the connection (both entries)
 * when it has aged out: the userspace GC may not have run yet. */
static __always_inline struct flow *lookup_live(const struct packet *p, void *map, struct flow_key *k, __u64 now)
{
	struct flow *f = bpf_map_lookup_elem(map, k);

	if (f && flow_expired(f, now)) {
		forget(p, map, f, k, now);
		count(STAT_INFO_FLOW_EXPIRED);
		return NULL;
	}
	return f;
}

static __always_inline __u32 flow_hash(const struct flow_key *k)
{
	return jhash_3words(k->saddr, k->daddr, ((__u32)k->sport << 16) | k->dport, hash_seed);
}

/* Maglev: the live table's slot for this connection, skipping a backend
 * that has just refused a SYN (its API server process is gone). */
static __always_inline __u32 pick_backend(const struct flow_key *k, __u64 now)
{
	__u32 zero = 0, hash, slot, i;
	struct lb_control *ctl;
	__u32 *id;
	__u64 *refused;

	ctl = bpf_map_lookup_elem(&xdplb_control, &zero);
	if (!ctl)
		return NO_BACKEND;
	hash = flow_hash(k);

#pragma unroll
	for (i = 0; i < BACKEND_PROBES; i++) {
		slot = hash % XDPLB_MAGLEV_SIZE;
		if (ctl->maglev_active)
			slot += XDPLB_MAGLEV_SIZE;
		id = bpf_map_lookup_elem(&xdplb_maglev, &slot);
		if (!id || *id >= XDPLB_MAX_BACKENDS)
			return NO_BACKEND;
		refused = bpf_map_lookup_elem(&xdplb_refused, id);
		if (!refused || *refused == 0 || now - *refused > refused_hold_ns)
			return *id;
		hash = hash * 0x9e3779b1 + 1;
	}
	return NO_BACKEND;
}

/* Where packets toward backend be leave: resolved by userspace through
 * netlink (the common case), else asked of the kernel's FIB. */
static __always_inline int backend_nexthop(void *ctx, const struct packet *p, const struct backend *be,
					   struct flow *f)
{
	struct bpf_fib_lookup fib = {};
	__u32 ifindex;

	if (be->flags & BACKEND_F_MAC) {
		__builtin_memcpy(f->dmac, be->mac, ETH_ALEN);
		__builtin_memcpy(f->smac, be->smac, ETH_ALEN);
		ifindex = be->ifindex;
	} else {
		fib.family = AF_INET;
		fib.l4_protocol = IPPROTO_TCP;
		fib.tot_len = bpf_ntohs(p->ip->tot_len);
		fib.ipv4_src = frontend_addr;
		fib.ipv4_dst = be->addr;
		fib.ifindex = p->ifindex;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
			return -1;
		__builtin_memcpy(f->dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(f->smac, fib.smac, ETH_ALEN);
		ifindex = fib.ifindex;
		count(STAT_INFO_FIB_LOOKUP);
	}
	/* 0 means "out of the interface it came in on", which stays true when
	 * the entry is synced to the peer LB, whose ifindex may differ. */
	f->ifindex = ifindex == p->ifindex ? 0 : ifindex;
	return 0;
}

/* Where a forwarded packet leaves: the next hop's MAC, ours, and the
 * interface (0: the one it came in on). */
struct egress {
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u32 ifindex;
};

/* What process decided for a packet it forwards. */
struct verdict {
	struct flow *f;  /* the rewrite (TCP) */
	struct egress out;
};

static __always_inline void egress_of_flow(struct egress *out, const struct flow *f)
{
	__builtin_memcpy(out->dmac, f->dmac, ETH_ALEN);
	__builtin_memcpy(out->smac, f->smac, ETH_ALEN);
	out->ifindex = f->ifindex;
}

/* Toward a backend, the next hop is the backend's current one: a server
 * whose MAC changed (NIC replaced, VM migrated) keeps its connections as
 * soon as userspace resolves it anew. The flow's own copy serves when
 * userspace has not resolved it (bpf_fib_lookup gave it). */
static __always_inline void egress_to_backend(struct egress *out, const struct flow *f, __u32 in_ifindex)
{
	struct backend *be = bpf_map_lookup_elem(&xdplb_backends, &f->backend);

	if (be && (be->flags & BACKEND_F_MAC)) {
		__builtin_memcpy(out->dmac, be->mac, ETH_ALEN);
		__builtin_memcpy(out->smac, be->smac, ETH_ALEN);
		out->ifindex = be->ifindex == in_ifindex ? 0 : be->ifindex;
		return;
	}
	egress_of_flow(out, f);
}

/* The verdict for a new connection no backend can take: a RST when the
 * load-time constant or userspace's policy (failing open) says so, else a
 * drop (the client retransmits its SYN). */
static __always_inline int no_backend(void)
{
	__u32 zero = 0;
	__u32 *policy;

	if (no_backend_reset)
		return STAT_RESET_NO_BACKEND;
	policy = bpf_map_lookup_elem(&xdplb_policy, &zero);
	if (policy && (*policy & POLICY_F_RESET_NO_BACKEND))
		return STAT_RESET_NO_BACKEND;
	return STAT_DROP_NO_BACKEND;
}

/* A client SYN without a flow: choose a backend and a SNAT port, record
 * both directions as half-open. *out receives the client->backend entry. */
static __always_inline int open_flow(void *ctx, const struct packet *p, const struct flow_key *ck, __u64 now,
				     struct flow *out)
{
	struct flow_key rk = {};
	struct flow rev = {};
	struct backend *be;
	struct lb_control *ctl;
	__u32 id, range, i, next, zero = 0;
	__u32 *held, *cursor;
	__u16 port = 0;
	int claimed = 0;

	ctl = bpf_map_lookup_elem(&xdplb_control, &zero);
	if (ctl && ctl->refuse_new)
		return STAT_RESET_TABLE_FULL;
	if (max_conns_per_client) {
		held = bpf_map_lookup_elem(&xdplb_clients, &ck->saddr);
		if (held && *held >= max_conns_per_client)
			return STAT_RESET_CLIENT_LIMIT;
	}
	id = pick_backend(ck, now);
	if (id == NO_BACKEND)
		return no_backend();
	be = bpf_map_lookup_elem(&xdplb_backends, &id);
	if (!be || be->addr == 0)
		return no_backend();

	__builtin_memset(out, 0, sizeof(*out));
	if (backend_nexthop(ctx, p, be, out))
		return STAT_DROP_NO_NEIGH;

	/* backend -> client: back out where the SYN came from, to whoever
	 * sent it (the LB's kernel never saw the client, so no neighbour). */
	rev.created_ns = now;
	rev.last_seen_ns = now;
	rev.saddr = frontend_addr;
	rev.daddr = ck->saddr;
	rev.sport = frontend_port;
	rev.dport = ck->sport;
	rev.csum_addr = csum_add(csum_diff32(be->addr, frontend_addr), csum_diff32(frontend_addr, ck->saddr));
	rev.backend = id;
	rev.ifindex = 0;
	__builtin_memcpy(rev.dmac, p->eth->h_source, ETH_ALEN);
	__builtin_memcpy(rev.smac, p->eth->h_dest, ETH_ALEN);
	rev.state = FLOW_SYN_SENT;
	rev.dir = FLOW_TO_CLIENT;

	rk.saddr = be->addr;
	rk.daddr = frontend_addr;
	rk.sport = be->port;
	rk.proto = IPPROTO_TCP;

	range = (__u32)snat_port_hi - snat_port_lo + 1;
	cursor = bpf_map_lookup_elem(&xdplb_snat_next, &id);
	if (!cursor)
		return STAT_DROP_PORTS_EXHAUSTED;
	if (*cursor == 0)
		*cursor = bpf_get_prandom_u32() % range + 1;
#pragma unroll
	for (i = 0; i < SNAT_PORT_TRIES; i++) {
		next = (*cursor + i) % range;
		port = snat_port_lo + next;
		rk.dport = bpf_htons(port);
		if (bpf_map_lookup_elem(&xdplb_flows, &rk))
			continue;
		rev.csum_port = csum_add(csum_diff16(be->port, frontend_port), csum_diff16(rk.dport, ck->sport));
		/* NOEXIST makes the claim atomic against other CPUs. */
		if (bpf_map_update_elem(&xdplb_half_open, &rk, &rev, BPF_NOEXIST) == 0) {
			claimed = 1;
			*cursor = next + 1;
			break;
		}
	}
	if (!claimed) {
		/* Move on past the window: otherwise a run of taken ports
		 * ahead of the cursor (the connections a peer synced to us
		 * hold the ports its own cursor handed out) would refuse
		 * every new connection to this backend for as long as they
		 * live, instead of this one SYN (its retransmit tries the
		 * next window). */
		*cursor = (*cursor + SNAT_PORT_TRIES - 1) % range + 1; /* 1..range: 0 is "not chosen yet" */
		return STAT_DROP_PORTS_EXHAUSTED;
	}

	out->created_ns = now;
	out->last_seen_ns = now;
	out->saddr = frontend_addr;
	out->daddr = be->addr;
	out->sport = rk.dport;
	out->dport = be->port;
	out->csum_addr = csum_add(csum_diff32(ck->saddr, frontend_addr), csum_diff32(frontend_addr, be->addr));
	out->csum_port = csum_add(csum_diff16(ck->sport, rk.dport), csum_diff16(frontend_port, be->port));
	out->backend = id;
	out->state = FLOW_SYN_SENT;
	out->dir = FLOW_TO_BACKEND;
	track_syn(out, p);
	if (bpf_map_update_elem(&xdplb_half_open, ck, out, BPF_ANY)) {
		bpf_map_delete_elem(&xdplb_half_open, &rk);
		return STAT_DROP_FLOW_INSERT;
	}
	return STAT_FWD_NEW_FLOW;
}

/* The client's ACK of a SYN-ACK: the handshake is complete; move both
 * entries (f, keyed k, and its twin) to the established table. A full
 * table refuses the connection (a RST to the client) rather than evicting
 * anyone. */
static __always_inline int complete_flow(struct flow *f, struct flow_key *k, const struct packet *p, __u64 now,
					 struct flow *scratch, struct flow **apply)
{
	struct flow_key tk;
	struct flow *rev;

	twin_key(f, &tk);
	rev = bpf_map_lookup_elem(&xdplb_half_open, &tk);
	if (!rev) {
		/* The reply half was evicted: the client's ACK cannot be
		 * answered; let the kernel reset it so it reconnects. */
		bpf_map_delete_elem(&xdplb_half_open, k);
		return STAT_PASS_NO_FLOW;
	}
	__builtin_memcpy(scratch, rev, sizeof(*scratch));
	scratch->state = FLOW_ESTABLISHED;
	scratch->flags &= ~FLOW_F_SYNACK;
	scratch->last_seen_ns = now;
	if (bpf_map_update_elem(&xdplb_flows, &tk, scratch, BPF_NOEXIST)) {
		bpf_map_delete_elem(&xdplb_half_open, &tk);
		bpf_map_delete_elem(&xdplb_half_open, k);
		return STAT_RESET_TABLE_FULL;
	}
	__builtin_memcpy(scratch, f, sizeof(*scratch));
	scratch->state = FLOW_ESTABLISHED;
	scratch->flags &= ~FLOW_F_SYNACK;
	scratch->last_seen_ns = now;
	track_segment(scratch, p);
	if (bpf_map_update_elem(&xdplb_flows, k, scratch, BPF_NOEXIST)) {
		bpf_map_delete_elem(&xdplb_flows, &tk);
		bpf_map_delete_elem(&xdplb_half_open, &tk);
		bpf_map_delete_elem(&xdplb_half_open, k);
		return STAT_RESET_TABLE_FULL;
	}
	bpf_map_delete_elem(&xdplb_half_open, &tk);
	bpf_map_delete_elem(&xdplb_half_open, k);
	count_client(k->saddr);
	*apply = scratch;
	if (sync_enabled) {
		f = bpf_map_lookup_elem(&xdplb_flows, k);
		if (f)
			sync_report(p->ctx, SYNC_EV_UPSERT, f, k, bpf_map_lookup_elem(&xdplb_flows, &tk), now);
	}
	return STAT_FWD_TO_BACKEND;
}

static __always_inline int is_pure_syn(__u8 flags)
{
	return (flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN;
}

/* client -> frontend:fport */
static __always_inline int client_packet(void *ctx, struct packet *p, struct flow_key *k, __u64 now,
					 struct flow *scratch, struct flow **apply)
{
	struct flow *f;
	int r;

	f = lookup_live(p, &xdplb_flows, k, now);
	if (f && is_pure_syn(p->tcp_flags) && (f->state == FLOW_RESET || f->state == FLOW_CLOSED)) {
		/* The client reuses the 4-tuple of a finished connection:
		 * a new connection, which may go to another backend. A SYN on
		 * a connection that is not finished goes to its backend,
		 * whose kernel answers it (RFC 5961: a challenge ACK). */
		forget(p, &xdplb_flows, f, k, now);
		count(STAT_INFO_FLOW_REOPENED);
		f = NULL;
	}
	if (f) {
		touch(p, f, k, now);
		if (p->tcp_flags & (TH_FIN | TH_RST))
			track_close(f, k, p, now);
		track_segment(f, p);
		*apply = f;
		return STAT_FWD_TO_BACKEND;
	}

	f = lookup_live(p, &xdplb_half_open, k, now);
	if (f) {
		if ((f->flags & FLOW_F_SYNACK) && (p->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) == TH_ACK)
			return complete_flow(f, k, p, now, scratch, apply);
		/* SYN retransmission (or the client giving up with RST):
		 * same backend, same SNAT port. */
		touch_half_open(f, now);
		if ((p->tcp_flags & TH_RST) && trusted_rst(f, p))
			set_state(f, FLOW_RESET, now);
		track_segment(f, p);
		*apply = f;
		return STAT_FWD_TO_BACKEND;
	}

	if (!is_pure_syn(p->tcp_flags))
		return STAT_PASS_NO_FLOW;
	r = open_flow(ctx, p, k, now, scratch);
	if (r == STAT_FWD_NEW_FLOW)
		*apply = scratch;
	return r;
}

/* backend -> frontend:snat port */
static __always_inline int backend_packet(struct packet *p, struct flow_key *k, __u64 now, struct flow *scratch,
					  struct flow **apply)
{
	struct flow_key ck;
	struct flow *f, *fwd;
	__u64 *refused;

	f = lookup_live(p, &xdplb_flows, k, now);
	if (f) {
		touch(p, f, k, now);
		if (p->tcp_flags & (TH_FIN | TH_RST))
			track_close(f, k, p, now);
		track_segment(f, p);
		*apply = f;
		return STAT_FWD_TO_CLIENT;
	}

	f = lookup_live(p, &xdplb_half_open, k, now);
	if (!f)
		return STAT_PASS_REPLY_NO_FLOW;
	twin_key(f, &ck);
	fwd = bpf_map_lookup_elem(&xdplb_half_open, &ck);

	if ((p->tcp_flags & TH_RST) && f->state == FLOW_SYN_SENT && !(f->flags & FLOW_F_SYNACK)) {
		/* A RST to our SYN is real only if it acknowledges the SYN
		 * (RFC 793); anyone can send the others. */
		if (!fwd || !(p->tcp_flags & TH_ACK) || !(fwd->flags & FLOW_F_SEQ) ||
		    bpf_ntohl(p->tcp->ack_seq) != fwd->seq_next)
			return STAT_DROP_BAD_RST;
		/* The backend's host is up but nothing listens: flag it so new
		 * flows skip it, forget this flow and swallow the reset, so the
		 * client's retransmitted SYN lands on a live backend. */
		refused = bpf_map_lookup_elem(&xdplb_refused, &f->backend);
		if (refused)
			*refused = now;
		bpf_map_delete_elem(&xdplb_half_open, &ck);
		bpf_map_delete_elem(&xdplb_half_open, k);
		return STAT_DROP_BACKEND_RESET;
	}

	if ((p->tcp_flags & (TH_SYN | TH_ACK)) != (TH_SYN | TH_ACK)) {
		touch_half_open(f, now);
		if ((p->tcp_flags & TH_RST) && trusted_rst(f, p))
			set_state(f, FLOW_RESET, now);
		track_segment(f, p);
		*apply = f;
		return STAT_FWD_TO_CLIENT;
	}

	/* SYN-ACK: remember that the backend answered; the client's ACK
	 * moves the connection to the established table. */
	if (!fwd) {
		/* The client's half was evicted (SYN flood): let the kernel
		 * reset the backend; the client's next SYN starts afresh. */
		bpf_map_delete_elem(&xdplb_half_open, k);
		return STAT_PASS_REPLY_NO_FLOW;
	}
	if ((fwd->flags & FLOW_F_SEQ) && bpf_ntohl(p->tcp->ack_seq) == fwd->seq_next) {
		f->flags |= FLOW_F_SYNACK;
		fwd->flags |= FLOW_F_SYNACK;
		track_syn(f, p);
	}
	touch_half_open(f, now);
	*apply = f;
	return STAT_FWD_TO_CLIENT;
}

/* An ICMP error to the frontend address: translated for the endpoint of
 * the connection it is about, else left to the kernel. */
static __always_inline int icmp_packet(struct packet *p, struct verdict *v)
{
	struct icmphdr *icmp;
	struct iphdr *in;
	__be16 *ports;
	struct flow_key k = {};
	struct flow *f;
	__u16 sport;

	if (icmp_quote(p, &icmp, &in, &ports))
		return STAT_PASS_NOT_TCP;
	/* The key of the connection's direction opposite to the quoted
	 * packet's: its entry rewrites toward the endpoint to tell. */
	k.saddr = in->daddr;
	k.daddr = frontend_addr;
	k.sport = ports[1];
	k.dport = ports[0];
	k.proto = IPPROTO_TCP;
	sport = bpf_ntohs(ports[0]);
	if (ports[0] != frontend_port && (sport < snat_port_lo || sport > snat_port_hi))
		return STAT_PASS_ICMP_NO_FLOW;
	f = bpf_map_lookup_elem(&xdplb_flows, &k);
	if (!f)
		f = bpf_map_lookup_elem(&xdplb_half_open, &k);
	if (!f)
		return STAT_PASS_ICMP_NO_FLOW;
	if (f->dir == FLOW_TO_BACKEND)
		egress_to_backend(&v->out, f, p->ifindex);
	else
		egress_of_flow(&v->out, f);
	icmp_translate(p, icmp, in, ports, f);
	return STAT_FWD_ICMP;
}

/* Decide. Returns the stat reason, which also names the verdict; v is
 * filled for the FWD_ reasons. */
static __always_inline int process(void *ctx, struct packet *p, struct flow *scratch, struct verdict *v)
{
	struct flow_key k = {};
	__u64 now;
	__u16 dport;
	int r;

	r = parse_packet(p);
	if (r == STAT_PASS_NOT_TCP && p->ip->daddr == frontend_addr && p->ip->protocol == IPPROTO_ICMP)
		return icmp_packet(p, v);
	if (r != PARSE_OK)
		return r;
	if (p->ip->daddr != frontend_addr)
		return STAT_PASS_OTHER_ADDR;

	k.saddr = p->ip->saddr;
	k.daddr = p->ip->daddr;
	k.sport = p->tcp->source;
	k.dport = p->tcp->dest;
	k.proto = IPPROTO_TCP;

	dport = bpf_ntohs(k.dport);
	if (k.dport != frontend_port && (dport < snat_port_lo || dport > snat_port_hi))
		return STAT_PASS_OTHER_PORT;
	if (!valid_flags(p->tcp_flags))
		return STAT_DROP_BAD_FLAGS;
	now = clock_now();
	if (k.dport == frontend_port)
		r = client_packet(ctx, p, &k, now, scratch, &v->f);
	else
		r = backend_packet(p, &k, now, scratch, &v->f);
	if (r == STAT_FWD_NEW_FLOW || r == STAT_FWD_TO_BACKEND) {
		if (v->f)
			egress_to_backend(&v->out, v->f, p->ifindex);
	} else if (r == STAT_FWD_TO_CLIENT) {
		if (v->f)
			egress_of_flow(&v->out, v->f);
	}
	return r;
}

static __always_inline int is_forward(int reason)
{
	return reason >= STAT_FWD_NEW_FLOW && reason <= STAT_FWD_ICMP;
}

static __always_inline int is_reset(int reason)
{
	return reason >= STAT_RESET_NO_BACKEND && reason <= STAT_RESET_CLIENT_LIMIT;
}

static __always_inline int is_drop(int reason)
{
	return reason >= STAT_DROP_NO_BACKEND && reason <= STAT_DROP_BAD_RST;
}

/* Set the Ethernet header for the next hop. */
static __always_inline void rewrite_eth(struct ethhdr *eth, const struct egress *out)
{
	if (out->ifindex == 0)
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	else
		__builtin_memcpy(eth->h_source, out->smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, out->dmac, ETH_ALEN);
}

/* Rewrite the addressing the parser validated. */
static __always_inline void rewrite_tcp(struct packet *p, const struct flow *f)
{
	p->ip->saddr = f->saddr;
	p->ip->daddr = f->daddr;
	p->tcp->source = f->sport;
	p->tcp->dest = f->dport;
}

SEC("xdp")
int xdplb_xdp(struct xdp_md *ctx)
{
	struct flow scratch;
	struct verdict v = {};
	struct packet p = {};
	struct reset_diff rd;
	const struct flow *f;
	int r;

	p.ctx = ctx;
	p.data = (void *)(long)ctx->data;
	p.data_end = (void *)(long)ctx->data_end;
	p.len = p.data_end - p.data;
	p.ifindex = ctx->ingress_ifindex;

	r = process(ctx, &p, &scratch, &v);
	count(r);
	if (is_reset(r)) {
		/* Refused: the SYN (or ACK) goes back to its sender as a RST. */
		rd = make_reset(&p);
		p.ip->check = csum_apply(p.ip->check, rd.ip);
		p.tcp->check = csum_apply(p.tcp->check, rd.tcp);
		return XDP_TX;
	}
	if (is_drop(r))
		return XDP_DROP;
	if (!is_forward(r))
		return XDP_PASS;
	if (r != STAT_FWD_ICMP) {
		f = v.f;
		if (!f) {
			count(STAT_ABORTED_REDIRECT);
			return XDP_ABORTED;
		}
		count_backend(f->backend, p.len, r == STAT_FWD_NEW_FLOW);
		rewrite_tcp(&p, f);
		/* XDP sees complete checksums (a NIC's receive path), so
		 * plain incremental updates are right. */
		p.ip->check = csum_apply(p.ip->check, f->csum_addr);
		p.tcp->check = csum_apply(p.tcp->check, csum_add(f->csum_addr, f->csum_port));
	}
	rewrite_eth(p.eth, &v.out);
	if (v.out.ifindex == 0 || v.out.ifindex == p.ifindex)
		return XDP_TX;
	r = bpf_redirect(v.out.ifindex, 0);
	if (r != XDP_REDIRECT)
		count(STAT_ABORTED_REDIRECT);
	return r;
}

#define TC_HEADERS_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct tcphdr))
#define IP_CSUM_OFF (sizeof(struct ethhdr) + offsetof(struct iphdr, check))
#define TCP_CSUM_OFF (sizeof(struct ethhdr) + sizeof(struct iphdr) + offsetof(struct tcphdr, check))

/* The TC variant, for interfaces where XDP cannot run. Here the kernel's own
 * senders hand over GSO packets with partial checksums, so the checksum
 * helpers (which know the skb's checksum state) do the arithmetic: only the
 * pseudo-header part (addresses) touches a partial checksum. */
SEC("tc")
int xdplb_tc(struct __sk_buff *skb)
{
	struct flow scratch;
	struct verdict v = {};
	struct packet p = {};
	struct reset_diff rd;
	const struct flow *f;
	__u32 ifindex, pull;
	__u32 csum_addr, csum_port;
	int r;

	p.ctx = skb;
	p.data = (void *)(long)skb->data;
	p.data_end = (void *)(long)skb->data_end;
	/* Direct access needs the headers in the linear part; ICMP errors
	 * need their quote too. */
	pull = skb->protocol == bpf_htons(ETH_P_IP) && skb->len >= ICMP_ERR_LEN ? ICMP_ERR_LEN : TC_HEADERS_LEN;
	if (p.data + pull > p.data_end && skb->len >= pull) {
		bpf_skb_pull_data(skb, pull);
		p.data = (void *)(long)skb->data;
		p.data_end = (void *)(long)skb->data_end;
	}
	p.len = skb->len;
	p.ifindex = skb->ifindex;

	r = process(skb, &p, &scratch, &v);
	count(r);
	if (is_reset(r)) {
		rd = make_reset(&p);
		/* The helpers invalidate packet pointers: nothing reads the
		 * packet after them. A partial checksum stays right: the
		 * helpers leave it alone for non pseudo-header changes. */
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, 0, rd.ip, 0) ||
		    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, rd.tcp, 0)) {
			count(STAT_ABORTED_REDIRECT);
			return TC_ACT_SHOT;
		}
		return bpf_redirect(skb->ifindex, 0);
	}
	if (is_drop(r))
		return TC_ACT_SHOT;
	if (!is_forward(r))
		return TC_ACT_UNSPEC;
	rewrite_eth(p.eth, &v.out);
	ifindex = v.out.ifindex ? v.out.ifindex : skb->ifindex;
	if (r == STAT_FWD_ICMP)
		return bpf_redirect(ifindex, 0);
	f = v.f;
	if (!f) {
		count(STAT_ABORTED_REDIRECT);
		return TC_ACT_SHOT;
	}
	count_backend(f->backend, p.len, r == STAT_FWD_NEW_FLOW);
	if (skb->gso_segs > 1)
		count(STAT_INFO_GSO);
	rewrite_tcp(&p, f);
	csum_addr = f->csum_addr;
	csum_port = f->csum_port;
	/* The helpers below invalidate packet pointers: nothing reads the
	 * packet after them. */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, 0, csum_addr, 0) ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, csum_addr, BPF_F_PSEUDO_HDR) ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, csum_port, 0)) {
		count(STAT_ABORTED_REDIRECT);
		return TC_ACT_SHOT;
	}
	return bpf_redirect(ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Referenced so that clang emits their BTF and bpf2go exports them to Go. */
const enum xdplb_stat *unused_stat __attribute__((unused));
const enum flow_state *unused_flow_state __attribute__((unused));
const enum flow_dir *unused_flow_dir __attribute__((unused));
const enum xdplb_limit *unused_limit __attribute__((unused));
const struct sync_event *unused_sync_event __attribute__((unused));
const enum sync_event_kind *unused_sync_event_kind __attribute__((unused));
