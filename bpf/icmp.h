/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* ICMP errors about translated connections. A router between the LB and a
 * backend that cannot forward one of our packets (path MTU too small: the
 * "fragmentation needed" of path MTU discovery; unreachable; TTL
 * exceeded) answers the packet's source, the frontend address, quoting the
 * packet as we rewrote it. Left to the LB's kernel, the error goes nowhere
 * and the connection hangs on a black hole. Like the kernel's NAT, the data
 * path translates it for the endpoint the quoted packet came from: outer
 * destination, quoted addresses and ports back to what that endpoint sent,
 * every checksum adjusted; errors from the far side come back the same way.
 *
 * Both hooks rewrite with direct packet access here: ICMP errors carry
 * whole checksums (nothing offloads them). */
#ifndef XDPLB_ICMP_H
#define XDPLB_ICMP_H

#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "parsing.h"

/* The ICMP header (linux/icmp.h drags in the C library's socket headers). */
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest; /* identifier and sequence, next-hop MTU, pointer */
};

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* Bytes of an ICMP error the translation reads and writes: the outer
 * headers, the quoted IPv4 header, and the quoted TCP header up to its
 * checksum (the data path pulls this much on TC). */
#define ICMP_ERR_LEN (sizeof(struct ethhdr) + 2 * sizeof(struct iphdr) + sizeof(struct icmphdr) + 18)

/* Outer IPv4 length up to the end of the quoted TCP checksum. */
#define ICMP_QUOTE_TCP_CHECK (2 * sizeof(struct iphdr) + sizeof(struct icmphdr) + 18)

static __always_inline int icmp_error_type(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* The quoted packet of an ICMP error p, when it is a TCP segment from the
 * frontend address: *in is its IPv4 header, *ports its TCP ports (the
 * first 4 bytes after the header; 8 are there at least). */
static __always_inline int icmp_quote(const struct packet *p, struct icmphdr **icmp, struct iphdr **in, __be16 **ports)
{
	void *data_end = p->data_end;
	struct icmphdr *ic = (void *)(p->ip + 1);
	struct iphdr *q;

	if ((void *)(ic + 1) > data_end || !icmp_error_type(ic->type))
		return -1;
	q = (void *)(ic + 1);
	if ((void *)(q + 1) > data_end || (void *)(q + 1) + 8 > data_end)
		return -1;
	if (q->version != 4 || q->ihl != 5 || q->protocol != IPPROTO_TCP || q->saddr != frontend_addr)
		return -1;
	*icmp = ic;
	*in = q;
	*ports = (void *)(q + 1);
	return 0;
}

/* Rewrites ICMP error p about the connection f belongs to, for the
 * endpoint f's rewrite leads to. The quoted packet is the one we sent:
 * f's own rewrite undone gives what that endpoint sent. */
static __always_inline void icmp_translate(struct packet *p, struct icmphdr *icmp, struct iphdr *in, __be16 *ports,
					   const struct flow *f)
{
	void *data_end = p->data_end;
	struct iphdr *ip = p->ip;
	__be16 *tcheck = (__be16 *)((void *)ports + 16);
	__be16 old_check;
	__u32 d_in, d_ports, d_icmp, d_out;
	__be32 osrc = ip->saddr;

	/* the quoted packet: from f's destination, to f's source */
	d_in = csum_add(csum_diff32(in->saddr, f->daddr), csum_diff32(in->daddr, f->saddr));
	d_ports = csum_add(csum_diff16(ports[0], f->dport), csum_diff16(ports[1], f->sport));
	d_icmp = csum_add(d_in, d_ports);
	old_check = in->check;
	in->check = csum_apply(in->check, d_in);
	d_icmp = csum_add(d_icmp, csum_diff16(old_check, in->check));
	/* The quoted TCP checksum, when the quote holds it (RFC 792 asks for
	 * 8 bytes; Linux quotes up to 576). */
	if ((void *)(tcheck + 1) <= data_end && bpf_ntohs(ip->tot_len) >= ICMP_QUOTE_TCP_CHECK) {
		old_check = *tcheck;
		*tcheck = csum_apply(*tcheck, csum_add(d_in, d_ports));
		d_icmp = csum_add(d_icmp, csum_diff16(old_check, *tcheck));
	}
	/* The error came from the far endpoint itself: it now comes from the
	 * frontend, as every packet of the connection does. */
	if (osrc == in->daddr)
		ip->saddr = f->saddr;
	in->saddr = f->daddr;
	in->daddr = f->saddr;
	ports[0] = f->dport;
	ports[1] = f->sport;
	icmp->checksum = csum_apply(icmp->checksum, d_icmp);

	d_out = csum_add(csum_diff32(osrc, ip->saddr), csum_diff32(ip->daddr, f->daddr));
	ip->daddr = f->daddr;
	ip->check = csum_apply(ip->check, d_out);
}

#endif
