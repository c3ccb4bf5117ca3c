/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Limits and well-known values of the xdplb data path.
 *
 * The sizes userspace must agree with are the enum xdplb_limit below: bpf2go
 * exports it (-type xdplb_limit) as Go constants, so they are written once,
 * here; bpf/limits_test.go checks the loaded map specs against them. */
#ifndef XDPLB_CONSTS_H
#define XDPLB_CONSTS_H

enum xdplb_limit {
	/* Backend slots. A backend keeps its index for its whole life so that
	 * flows and counters that name it stay meaningful while the set
	 * changes. A Maglev slot holding an index at or above this is empty. */
	XDPLB_MAX_BACKENDS = 256,
	/* Maglev lookup table size: a prime >= 100 x the handful of API
	 * servers xdplb fronts keeps disruption far below 1%. Two tables live
	 * side by side so userspace can fill one while the data path reads the
	 * other, then flip. */
	XDPLB_MAGLEV_SIZE = 65537,
	/* Established (and closing) flows, two entries per connection: one
	 * keyed as the client sends, one keyed as the backend replies. */
	XDPLB_FLOWS_MAX = 262144,
	/* Half-open flows live in their own LRU so a SYN flood of spoofed
	 * sources evicts only other half-open flows, never an established
	 * connection. */
	XDPLB_HALF_OPEN_MAX = 65536,
	/* Clients whose connections are counted for the per-client limit. */
	XDPLB_CLIENTS_MAX = 65536,
};

/* Attempts at a random SNAT port before the pool counts as exhausted. */
#define SNAT_PORT_TRIES 8

/* Maglev probes when the chosen backend has just refused a SYN. */
#define BACKEND_PROBES 4

/* What lookups return when no backend can take a flow. */
#define NO_BACKEND 0xffffffffU

/* Only rewrite last_seen when it is this stale: avoids a store (and a
 * cache line bouncing between CPUs) on every packet. */
#define LAST_SEEN_GRANULARITY_NS 1000000000ULL

#define ETH_P_IP_BE 0x0008       /* htons(ETH_P_IP) */
#define ETH_P_8021Q_BE 0x0081    /* htons(ETH_P_8021Q) */
#define ETH_P_8021AD_BE 0xa888   /* htons(ETH_P_8021AD) */

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#endif
