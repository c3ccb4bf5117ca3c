/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* TCP awareness of the data path: which flag combinations are valid, and
 * each direction's next sequence number, so a
 * RST or FIN counts as the end of a connection only when it comes from the
 * endpoint itself (at its next sequence number), as the endpoints' kernels
 * demand (RFC 5961). A blind attacker who knows the 4-tuple would have to
 * guess a 32-bit number. Anything else is forwarded without touching the
 * flow, and the receiving kernel judges it. */
#ifndef XDPLB_TCP_H
#define XDPLB_TCP_H

#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "xdplb_consts.h"
#include "xdplb_structs.h"
#include "parsing.h"

/* The combinations of FIN, SYN, RST and ACK a TCP endpoint sends (PSH and
 * URG ride along with any): as netfilter's conntrack accepts them. */
static __always_inline int valid_flags(__u8 flags)
{
	switch (flags & (TH_FIN | TH_SYN | TH_RST | TH_ACK)) {
	case TH_SYN:
	case TH_SYN | TH_ACK:
	case TH_RST:
	case TH_RST | TH_ACK:
	case TH_FIN | TH_ACK:
	case TH_ACK:
		return 1;
	}
	return 0;
}

static __always_inline __u32 seg_seq(const struct packet *p)
{
	return bpf_ntohl(p->tcp->seq);
}

/* The sequence number after this segment: SYN and FIN count as one byte. */
static __always_inline __u32 seg_end(const struct packet *p)
{
	return seg_seq(p) + p->payload + !!(p->tcp_flags & TH_SYN) + !!(p->tcp_flags & TH_FIN);
}

/* How far past the sender's known next sequence number a segment may
 * start and still move it: the reordering gap one lost or late segment
 * leaves. A blind attacker's segment moves it with odds of 2^-12, and even
 * then the connection goes on: only the tracking of its close is lost (its
 * entries then age out by idleness). */
#define SEQ_MAX_GAP (1U << 20)

/* The handshake: a SYN's sender starts at its initial sequence number. */
static __always_inline void track_syn(struct flow *f, const struct packet *p)
{
	f->seq_next = seg_end(p);
	f->flags |= FLOW_F_SEQ;
}

/* Record how far an established sender has sent. SYN and RST say nothing
 * of it; a segment far ahead of what the sender sent so far is not
 * believed. Stores only when the number moves forward, so a data segment
 * touches one word and a pure ACK none. */
static __always_inline void track_segment(struct flow *f, const struct packet *p)
{
	__u32 end;

	if (p->tcp_flags & (TH_SYN | TH_RST))
		return;
	end = seg_end(p);
	if (!(f->flags & FLOW_F_SEQ)) {
		track_syn(f, p);
		return;
	}
	if ((__s32)(end - f->seq_next) > 0 && (__s32)(seg_seq(p) - f->seq_next) <= (__s32)SEQ_MAX_GAP)
		f->seq_next = end;
}

/* A RST from the endpoint itself carries its next sequence number. */
static __always_inline int trusted_rst(const struct flow *f, const struct packet *p)
{
	return (f->flags & FLOW_F_SEQ) && seg_seq(p) == f->seq_next;
}

/* A FIN sent in order (at the sender's next sequence number after its
 * data), or its retransmission. */
static __always_inline int trusted_fin(const struct flow *f, const struct packet *p)
{
	__u32 fin_at = seg_seq(p) + p->payload;

	return (f->flags & FLOW_F_SEQ) && (fin_at == f->seq_next || fin_at + 1 == f->seq_next);
}

#endif
