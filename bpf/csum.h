/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* Incremental Internet checksum arithmetic (RFC 1624). All values are the
 * packet's 16-bit words as they sit in memory, so byte order cancels out. */
#ifndef XDPLB_CSUM_H
#define XDPLB_CSUM_H

#include <linux/types.h>

static __always_inline __u32 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* Difference contributed by replacing 32-bit word old with new. */
static __always_inline __u32 csum_diff32(__be32 old, __be32 new)
{
	__u32 sum = (~old & 0xffff) + (~old >> 16);
	sum += (new & 0xffff) + (new >> 16);
	return csum_fold32(sum);
}

static __always_inline __u32 csum_diff16(__be16 old, __be16 new)
{
	return csum_fold32((__u32)(__u16)~old + (__u32)new);
}

static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	return csum_fold32(a + b);
}

/* HC' = ~(~HC + diff) */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return (__u16)~csum_fold32((__u32)(__u16)~check + diff);
}

#endif
