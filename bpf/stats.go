package bpf

import "fmt"

// Stat is a counter index of the stats map: the reason for a verdict, or an
// event counted on top of one (Info).
type Stat = xdplbXdplbStat

// StatCount is the number of counters.
const StatCount = int(xdplbXdplbStatSTAT_MAX)

// SumStats adds up the stats map's per-CPU values (its one entry, key 0,
// holds a counter per Stat in order) into one counter per Stat.
func SumStats(per [][StatCount]uint64) []uint64 {
	out := make([]uint64, StatCount)
	for _, cpu := range per {
		for i, v := range cpu {
			out[i] += v
		}
	}
	return out
}

// Verdict classes of a Stat.
const (
	VerdictPass    = "pass"
	VerdictForward = "forward"
	VerdictReset   = "reset"
	VerdictDrop    = "drop"
	VerdictAbort   = "abort"
	VerdictInfo    = "info"
)

type statInfo struct {
	name    string
	verdict string
	help    string
}

// statInfos is indexed by Stat. TestStatLabels keeps it in sync with the C
// enum through the BTF of the compiled object.
var statInfos = [...]statInfo{
	xdplbXdplbStatSTAT_PASS_NOT_IPV4:        {"not_ipv4", VerdictPass, "not IPv4 (ARP, IPv6, ...)"},
	xdplbXdplbStatSTAT_PASS_VLAN:            {"vlan", VerdictPass, "VLAN-tagged frame"},
	xdplbXdplbStatSTAT_PASS_TRUNCATED:       {"truncated", VerdictPass, "shorter than its headers"},
	xdplbXdplbStatSTAT_PASS_BAD_IP:          {"bad_ip", VerdictPass, "malformed IPv4 header"},
	xdplbXdplbStatSTAT_PASS_IP_OPTIONS:      {"ip_options", VerdictPass, "IPv4 options present"},
	xdplbXdplbStatSTAT_PASS_FRAGMENT:        {"fragment", VerdictPass, "IPv4 fragment"},
	xdplbXdplbStatSTAT_PASS_NOT_TCP:         {"not_tcp", VerdictPass, "not TCP"},
	xdplbXdplbStatSTAT_PASS_BAD_TCP:         {"bad_tcp", VerdictPass, "malformed TCP header"},
	xdplbXdplbStatSTAT_PASS_OTHER_ADDR:      {"other_addr", VerdictPass, "not to the frontend address"},
	xdplbXdplbStatSTAT_PASS_OTHER_PORT:      {"other_port", VerdictPass, "frontend address, other port"},
	xdplbXdplbStatSTAT_PASS_NO_FLOW:         {"no_flow", VerdictPass, "client segment without a flow (kernel resets it)"},
	xdplbXdplbStatSTAT_PASS_REPLY_NO_FLOW:   {"reply_no_flow", VerdictPass, "to a SNAT port without a flow"},
	xdplbXdplbStatSTAT_PASS_ICMP_NO_FLOW:    {"icmp_no_flow", VerdictPass, "ICMP error about no tracked connection"},
	xdplbXdplbStatSTAT_FWD_NEW_FLOW:         {"new_flow", VerdictForward, "SYN that opened a flow"},
	xdplbXdplbStatSTAT_FWD_TO_BACKEND:       {"to_backend", VerdictForward, "client to backend"},
	xdplbXdplbStatSTAT_FWD_TO_CLIENT:        {"to_client", VerdictForward, "backend to client"},
	xdplbXdplbStatSTAT_FWD_ICMP:             {"icmp", VerdictForward, "ICMP error translated for a tracked connection"},
	xdplbXdplbStatSTAT_RESET_NO_BACKEND:     {"reset_no_backend", VerdictReset, "new connection refused with a RST: no backend can take it"},
	xdplbXdplbStatSTAT_RESET_TABLE_FULL:     {"reset_table_full", VerdictReset, "new connection refused with a RST: connection table full"},
	xdplbXdplbStatSTAT_RESET_CLIENT_LIMIT:   {"reset_client_limit", VerdictReset, "new connection refused with a RST: client at its connection limit"},
	xdplbXdplbStatSTAT_DROP_NO_BACKEND:      {"no_backend", VerdictDrop, "no backend available"},
	xdplbXdplbStatSTAT_DROP_PORTS_EXHAUSTED: {"ports_exhausted", VerdictDrop, "SNAT port pool exhausted"},
	xdplbXdplbStatSTAT_DROP_NO_NEIGH:        {"no_neigh", VerdictDrop, "backend next hop unresolved"},
	xdplbXdplbStatSTAT_DROP_BACKEND_RESET:   {"backend_reset", VerdictDrop, "backend refused a SYN (RST swallowed)"},
	xdplbXdplbStatSTAT_DROP_FLOW_INSERT:     {"flow_insert", VerdictDrop, "flow table update failed"},
	xdplbXdplbStatSTAT_DROP_BAD_FLAGS:       {"bad_flags", VerdictDrop, "invalid TCP flag combination"},
	xdplbXdplbStatSTAT_DROP_BAD_RST:         {"bad_rst", VerdictDrop, "RST to a SYN that does not acknowledge it (spoofed)"},
	xdplbXdplbStatSTAT_ABORTED_REDIRECT:     {"aborted", VerdictAbort, "rewrite or redirect failed"},
	xdplbXdplbStatSTAT_INFO_FLOW_EXPIRED:    {"flow_expired", VerdictInfo, "idle flow removed by the data path"},
	xdplbXdplbStatSTAT_INFO_FLOW_REOPENED:   {"flow_reopened", VerdictInfo, "SYN reused a closed flow's 4-tuple"},
	xdplbXdplbStatSTAT_INFO_FIB_LOOKUP:      {"fib_lookup", VerdictInfo, "backend MAC from bpf_fib_lookup"},
	xdplbXdplbStatSTAT_INFO_GSO:             {"gso", VerdictInfo, "GSO packet rewritten (TC)"},
	xdplbXdplbStatSTAT_INFO_CLOSE_IGNORED:   {"close_ignored", VerdictInfo, "RST or FIN off the sender's next sequence number: forwarded, flow kept"},
}

func (s Stat) info() statInfo {
	if int(s) < len(statInfos) && statInfos[s].name != "" {
		return statInfos[s]
	}
	return statInfo{name: fmt.Sprintf("stat_%d", s), verdict: VerdictInfo}
}

// Name is the counter's label in metrics and `xdplb status`.
func (s Stat) Name() string { return s.info().name }

// Verdict is the verdict class the counter belongs to.
func (s Stat) Verdict() string { return s.info().verdict }

// Help says what the counter counts.
func (s Stat) Help() string { return s.info().help }

// Stats lists every counter in index order.
func Stats() []Stat {
	out := make([]Stat, StatCount)
	for i := range out {
		out[i] = Stat(i)
	}
	return out
}

// Names for the counters tests and the control plane use.
const (
	StatNotIPv4          = xdplbXdplbStatSTAT_PASS_NOT_IPV4
	StatVLAN             = xdplbXdplbStatSTAT_PASS_VLAN
	StatTruncated        = xdplbXdplbStatSTAT_PASS_TRUNCATED
	StatBadIP            = xdplbXdplbStatSTAT_PASS_BAD_IP
	StatIPOptions        = xdplbXdplbStatSTAT_PASS_IP_OPTIONS
	StatFragment         = xdplbXdplbStatSTAT_PASS_FRAGMENT
	StatNotTCP           = xdplbXdplbStatSTAT_PASS_NOT_TCP
	StatBadTCP           = xdplbXdplbStatSTAT_PASS_BAD_TCP
	StatOtherAddr        = xdplbXdplbStatSTAT_PASS_OTHER_ADDR
	StatOtherPort        = xdplbXdplbStatSTAT_PASS_OTHER_PORT
	StatNoFlow           = xdplbXdplbStatSTAT_PASS_NO_FLOW
	StatReplyNoFlow      = xdplbXdplbStatSTAT_PASS_REPLY_NO_FLOW
	StatICMPNoFlow       = xdplbXdplbStatSTAT_PASS_ICMP_NO_FLOW
	StatNewFlow          = xdplbXdplbStatSTAT_FWD_NEW_FLOW
	StatToBackend        = xdplbXdplbStatSTAT_FWD_TO_BACKEND
	StatToClient         = xdplbXdplbStatSTAT_FWD_TO_CLIENT
	StatICMP             = xdplbXdplbStatSTAT_FWD_ICMP
	StatResetNoBackend   = xdplbXdplbStatSTAT_RESET_NO_BACKEND
	StatResetTableFull   = xdplbXdplbStatSTAT_RESET_TABLE_FULL
	StatResetClientLimit = xdplbXdplbStatSTAT_RESET_CLIENT_LIMIT
	StatNoBackend        = xdplbXdplbStatSTAT_DROP_NO_BACKEND
	StatPortsExhausted   = xdplbXdplbStatSTAT_DROP_PORTS_EXHAUSTED
	StatNoNeigh          = xdplbXdplbStatSTAT_DROP_NO_NEIGH
	StatBackendReset     = xdplbXdplbStatSTAT_DROP_BACKEND_RESET
	StatFlowInsert       = xdplbXdplbStatSTAT_DROP_FLOW_INSERT
	StatBadFlags         = xdplbXdplbStatSTAT_DROP_BAD_FLAGS
	StatBadRST           = xdplbXdplbStatSTAT_DROP_BAD_RST
	StatAborted          = xdplbXdplbStatSTAT_ABORTED_REDIRECT
	StatFlowExpired      = xdplbXdplbStatSTAT_INFO_FLOW_EXPIRED
	StatFlowReopened     = xdplbXdplbStatSTAT_INFO_FLOW_REOPENED
	StatFIBLookup        = xdplbXdplbStatSTAT_INFO_FIB_LOOKUP
	StatGSO              = xdplbXdplbStatSTAT_INFO_GSO
	StatCloseIgnored     = xdplbXdplbStatSTAT_INFO_CLOSE_IGNORED
)
