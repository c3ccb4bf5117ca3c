/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Refusing a connection at once: the packet that asked for it is turned,
 * in place, into the RST its sender's kernel accepts (RFC 793: to a segment
 * with ACK, seq = its ack; else seq 0 and ack = its end), addressed back to
 * the sender. A client refused this way reconnects or fails at once instead
 * of retransmitting SYNs into a drop. */
#ifndef XDPLB_RESET_H
#define XDPLB_RESET_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "parsing.h"
#include "tcp.h"

/* The checksum differences of turning p into its RST, not yet applied. */
struct reset_diff {
	__u32 ip;  /* IP header: TTL */
	__u32 tcp; /* TCP header: sequence, acknowledgment, flags, window, urgent pointer */
};

/* Rewrites p's headers into the RST refusing it (addresses, ports and MACs
 * swapped: their checksum contributions only trade places) and returns the
 * checksum differences, which the caller applies as its hook allows. */
static __always_inline struct reset_diff make_reset(struct packet *p)
{
	struct ethhdr *eth = p->eth;
	struct iphdr *ip = p->ip;
	struct tcphdr *tcp = p->tcp;
	struct reset_diff d = {};
	__u8 mac[ETH_ALEN];
	__be32 addr, seq, ack;
	__be16 port, old_word, new_word, ttl_word;

	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;

	ttl_word = *(__be16 *)&ip->ttl;
	ip->ttl = 64;
	d.ip = csum_diff16(ttl_word, *(__be16 *)&ip->ttl);

	if (p->tcp_flags & TH_ACK) {
		seq = tcp->ack_seq;
		ack = 0;
	} else {
		seq = 0;
		ack = bpf_htonl(seg_end(p));
	}
	d.tcp = csum_add(csum_diff32(tcp->seq, seq), csum_diff32(tcp->ack_seq, ack));
	tcp->seq = seq;
	tcp->ack_seq = ack;
	/* Data offset and flags share a word; the offset stays (options, if
	 * any, stay too: a receiver ignores them on a RST). */
	old_word = ((__be16 *)tcp)[6];
	((__u8 *)tcp)[13] = (p->tcp_flags & TH_ACK) ? TH_RST : (TH_RST | TH_ACK);
	new_word = ((__be16 *)tcp)[6];
	d.tcp = csum_add(d.tcp, csum_diff16(old_word, new_word));
	d.tcp = csum_add(d.tcp, csum_add(csum_diff16(tcp->window, 0), csum_diff16(tcp->urg_ptr, 0)));
	tcp->window = 0;
	tcp->urg_ptr = 0;
	return d;
}

#endif
