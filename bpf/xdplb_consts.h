/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Limits and well-known values of the xdplb data path. Sizes that userspace
 * must agree with live here once; the Go side reads the map sizes from the
 * loaded spec instead of repeating them. */
#ifndef XDPLB_CONSTS_H
#define XDPLB_CONSTS_H

/* Backend slots. A backend keeps its index for its whole life so that flows
 * and counters that name it stay meaningful while the set changes. */
#ifndef MAX_BACKENDS
#define MAX_BACKENDS 256
#endif

/* Maglev lookup table size: a prime >= 100 x MAX_BACKENDS would be 25601;
 * 65537 keeps disruption far below 1% for the handful of API servers xdplb
 * fronts. Two tables live side by side so userspace can fill one while the
 * data path reads the other, then flip. */
#ifndef MAGLEV_SIZE
#define MAGLEV_SIZE 65537
#endif

/* Established (and closing) flows, two entries per connection: one keyed as
 * the client sends, one keyed as the backend replies. */
#ifndef FLOWS_MAX
#define FLOWS_MAX 262144
#endif

/* Half-open flows live in their own LRU so a SYN flood of spoofed sources
 * evicts only other half-open flows, never an established connection. */
#ifndef HALF_OPEN_MAX
#define HALF_OPEN_MAX 65536
#endif

/* Attempts at a random SNAT port before the pool counts as exhausted. */
#define SNAT_PORT_TRIES 8

/* Maglev probes when the chosen backend has just refused a SYN. */
#define BACKEND_PROBES 4

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
#define TH_ACK 0x10

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#endif
