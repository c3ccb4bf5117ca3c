/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Header parsing with a bounds check before every read. The parser accepts
 * exactly what the rewrite can handle safely (Ethernet II, IPv4 without
 * options, unfragmented, TCP) and names the reason for anything else. */
#ifndef XDPLB_PARSING_H
#define XDPLB_PARSING_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include "xdplb_consts.h"
#include "xdplb_structs.h"

struct packet {
	void *ctx;      /* the program's context: xdp_md or __sk_buff */
	void *data;
	void *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 len;      /* bytes on the wire (TC: skb->len) */
	__u32 ifindex;  /* ingress interface */
	__u32 payload;  /* TCP payload bytes */
	__u8 tcp_flags;
};

/* What parse_packet returns for a packet to consider: any other value is
 * the STAT_PASS_* reason to let it go to the kernel untouched. */
#define PARSE_OK (-1)

/* Reads the headers into p, bounds-checking before every read. */
static __always_inline int parse_packet(struct packet *p)
{
	void *data = p->data;
	void *data_end = p->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u32 tot_len;

	if ((void *)(eth + 1) > data_end)
		return STAT_PASS_TRUNCATED;
	if (eth->h_proto == ETH_P_8021Q_BE || eth->h_proto == ETH_P_8021AD_BE)
		return STAT_PASS_VLAN;
	if (eth->h_proto != ETH_P_IP_BE)
		return STAT_PASS_NOT_IPV4;

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return STAT_PASS_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return STAT_PASS_BAD_IP;
	if (ip->ihl > 5)
		return STAT_PASS_IP_OPTIONS;
	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len < sizeof(*ip))
		return STAT_PASS_BAD_IP;
	if (tot_len > p->len - sizeof(*eth))
		return STAT_PASS_TRUNCATED;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return STAT_PASS_FRAGMENT;
	/* A whole IPv4 header: ICMP errors are read from here on. */
	p->eth = eth;
	p->ip = ip;
	if (ip->protocol != IPPROTO_TCP)
		return STAT_PASS_NOT_TCP;

	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return STAT_PASS_TRUNCATED;
	if (tot_len < sizeof(*ip) + sizeof(*tcp))
		return STAT_PASS_BAD_IP;
	if (tcp->doff < 5 || (__u32)tcp->doff * 4 > tot_len - sizeof(*ip))
		return STAT_PASS_BAD_TCP;

	p->tcp = tcp;
	p->tcp_flags = ((__u8 *)tcp)[13];
	p->payload = tot_len - sizeof(*ip) - (__u32)tcp->doff * 4;
	return PARSE_OK;
}

#endif
