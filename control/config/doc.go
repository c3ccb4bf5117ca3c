// Package config is what an operator tells xdplb: the configuration
// (defaults, then /etc/xdplb/xdplb.yaml, then the command line), its
// validation with messages that name the key and what to do, backends as
// written, and SNAT port ranges against the kernel's ephemeral range.
//
// It reads the configuration file and the ephemeral port range it is
// given the path of, and nothing else; it touches nothing of the node and
// imports of xdplb only bpf (the names of hooks and modes) and health (the
// check settings).
package config
