/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Types shared with userspace. bpf2go exports each of them to Go (-type), so
 * a layout change here is a layout change of the pinned maps: loading a new
 * program against maps of an old layout fails, and the loader says so. */
#ifndef XDPLB_STRUCTS_H
#define XDPLB_STRUCTS_H

#include <linux/types.h>

/* Why a packet got its verdict. Every packet is counted under exactly one
 * verdict reason; the INFO_ ones count events on top of that. The Go labels
 * live in bpf/stats.go and a test keeps both lists in sync. */
enum xdplb_stat {
	STAT_PASS_NOT_IPV4 = 0, /* ARP, IPv6, LLDP, ... */
	STAT_PASS_VLAN,         /* tagged frame: not ours to parse */
	STAT_PASS_TRUNCATED,    /* shorter than the headers it announces */
	STAT_PASS_BAD_IP,       /* IHL < 5, total length inconsistent */
	STAT_PASS_IP_OPTIONS,   /* IHL > 5: left to the kernel */
	STAT_PASS_FRAGMENT,     /* fragments are left to the kernel */
	STAT_PASS_NOT_TCP,
	STAT_PASS_BAD_TCP,      /* data offset < 5 or beyond the packet */
	STAT_PASS_OTHER_ADDR,   /* not addressed to the frontend */
	STAT_PASS_OTHER_PORT,   /* frontend address, port not ours */
	STAT_PASS_NO_FLOW,      /* client non-SYN without a flow: kernel resets */
	STAT_PASS_REPLY_NO_FLOW,/* to a SNAT port without a flow */
	STAT_PASS_ICMP_NO_FLOW, /* ICMP error about no tracked connection */
	STAT_FWD_NEW_FLOW,      /* SYN that opened a flow */
	STAT_FWD_TO_BACKEND,
	STAT_FWD_TO_CLIENT,
	STAT_FWD_ICMP,          /* ICMP error translated for a tracked connection */
	STAT_RESET_NO_BACKEND,  /* new connection refused with a RST: no backend can take it */
	STAT_RESET_TABLE_FULL,  /* new connection refused with a RST: connection table full */
	STAT_RESET_CLIENT_LIMIT,/* new connection refused with a RST: the client holds its limit */
	STAT_DROP_NO_BACKEND,   /* table empty or every probed backend refused */
	STAT_DROP_PORTS_EXHAUSTED,
	STAT_DROP_NO_NEIGH,     /* backend next hop MAC unknown yet */
	STAT_DROP_BACKEND_RESET,/* backend answered our SYN with RST */
	STAT_DROP_FLOW_INSERT,  /* map update failed */
	STAT_DROP_BAD_FLAGS,    /* invalid TCP flag combination (SYN+FIN, no flags, ...) */
	STAT_DROP_BAD_RST,      /* RST to our SYN that does not acknowledge it: spoofed */
	STAT_ABORTED_REDIRECT,  /* redirect to another interface failed */
	STAT_INFO_FLOW_EXPIRED, /* an idle entry found and removed */
	STAT_INFO_FLOW_REOPENED,/* SYN reused the 4-tuple of a finished flow */
	STAT_INFO_FIB_LOOKUP,   /* backend MAC came from bpf_fib_lookup */
	STAT_INFO_GSO,          /* TC hook: rewrote a GSO packet */
	STAT_INFO_CLOSE_IGNORED,/* RST or FIN not at the sender's next sequence number:
				 * forwarded, the flow kept (the receiver judges it) */
	STAT_MAX,
};

/* The stats map's one value: a counter per enum xdplb_stat, in the enum's
 * order and named as the Go labels (bpf/stats.go), so that `bpftool map
 * dump` prints every counter by name. count() indexes it by the enum (an
 * array access at a constant offset: no cost over an array keyed by the
 * enum, which the kernel refuses: an array's key must be an integer in
 * its BTF). TestStatLabels keeps the fields in step with the enum. */
struct xdplb_stats {
	__u64 not_ipv4;
	__u64 vlan;
	__u64 truncated;
	__u64 bad_ip;
	__u64 ip_options;
	__u64 fragment;
	__u64 not_tcp;
	__u64 bad_tcp;
	__u64 other_addr;
	__u64 other_port;
	__u64 no_flow;
	__u64 reply_no_flow;
	__u64 icmp_no_flow;
	__u64 new_flow;
	__u64 to_backend;
	__u64 to_client;
	__u64 icmp;
	__u64 reset_no_backend;
	__u64 reset_table_full;
	__u64 reset_client_limit;
	__u64 no_backend;
	__u64 ports_exhausted;
	__u64 no_neigh;
	__u64 backend_reset;
	__u64 flow_insert;
	__u64 bad_flags;
	__u64 bad_rst;
	__u64 aborted;
	__u64 flow_expired;
	__u64 flow_reopened;
	__u64 fib_lookup;
	__u64 gso;
	__u64 close_ignored;
};

enum flow_state {
	FLOW_SYN_SENT = 1,
	FLOW_ESTABLISHED = 2,
	FLOW_CLOSING = 3, /* one side sent its FIN */
	FLOW_RESET = 4,   /* a RST at the sender's next sequence number was seen */
	FLOW_CLOSED = 5,  /* both sides sent their FIN */
};

enum flow_dir {
	FLOW_TO_BACKEND = 1, /* key: client -> frontend */
	FLOW_TO_CLIENT = 2,  /* key: backend -> frontend:snat port */
};

/* A flow key is the packet's addressing as it arrives at the LB. */
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What to do with a packet that matches a flow_key. Self-contained so the
 * established path is one lookup and a rewrite. */
struct flow {
	__u64 created_ns;
	__u64 last_seen_ns;
	/* rewritten addressing */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	/* one's complement differences of the rewrite, folded to 16 bits:
	 * addresses (IP header and TCP pseudo header), ports (TCP header) */
	__u32 csum_addr;
	__u32 csum_port;
	__u32 backend;  /* backend index */
	__u32 ifindex;  /* egress interface; 0 = the ingress interface */
	__u8 dmac[6];   /* next hop */
	__u8 smac[6];   /* ours on ifindex (used only when redirecting) */
	__u8 state;     /* enum flow_state */
	__u8 dir;       /* enum flow_dir */
	__u8 flags;     /* FLOW_F_* */
	__u8 pad;
	/* TCP tracking of the direction this entry is keyed by, host order:
	 * what lets the data path tell a real close from a blind attacker's
	 * RST or FIN (valid when FLOW_F_SEQ says so). */
	__u32 seq_next; /* the sender's next sequence number: highest seq + length seen */
	__u32 pad2;
	/* When this connection was last reported to the peer LB (sync). */
	__u64 synced_ns;
};

/* A half-open flow whose backend has answered the SYN: the client's ACK
 * will complete it. Until then it stays out of the established table, so a
 * SYN flood of spoofed sources (which never ACK) cannot fill that table
 * even when the backends answer every SYN. */
#define FLOW_F_SYNACK 0x01
#define FLOW_F_SEQ 0x02 /* seq_next is known */
#define FLOW_F_FIN 0x08 /* this direction's sender has closed (its FIN seen in order) */

#define BACKEND_F_MAC 0x01 /* mac/smac/ifindex are resolved */

/* xdplb_policy bits. RESET_NO_BACKEND: a new connection no backend can take
 * gets a RST at once (userspace sets it while no backend is up and the
 * table holds every configured one: failing open), instead of a drop that
 * lets the client retransmit its SYN (right while only some backends
 * refuse: the retransmission finds a live one once they are marked down). */
#define POLICY_F_RESET_NO_BACKEND 0x01

struct backend {
	__be32 addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
	__u8 mac[6];
	__u8 smac[6];
	__u32 ifindex;
};

struct backend_counters {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/* What the data path tells userspace of a connection for the peer LB
 * (flow sync): through a perf event array, which Linux 5.4 has. One event
 * describes the whole connection, as seen by its client->frontend entry and
 * its reply entry. */
enum sync_event_kind {
	SYNC_EV_UPSERT = 1, /* established, changed state, or refreshed */
	SYNC_EV_DELETE = 2, /* forgotten by the data path (expired, reopened) */
};

struct sync_event {
	__u8 kind;       /* enum sync_event_kind */
	__u8 state;      /* enum flow_state */
	__u8 client_flags; /* FLOW_F_* of the client->frontend entry */
	__u8 backend_flags; /* FLOW_F_* of the reply entry */
	__u32 backend;   /* backend index (of this node) */
	struct flow_key key; /* client -> frontend */
	__be16 snat_port;
	__u8 client_mac[6]; /* the client's next hop, learnt from its SYN */
	__u32 client_seq;   /* the client's next sequence number */
	__u32 backend_seq;  /* the backend's */
	__u32 pad;
	__u64 created_ns;
	__u64 last_seen_ns;
};

/* Single-entry array: state userspace sets for the data path. */
struct lb_control {
	__u32 maglev_active; /* which half of the maglev map is live: 0 or 1 */
	__u32 refuse_new;    /* 1: the connection table is full by policy: new connections get a RST */
};

#endif
