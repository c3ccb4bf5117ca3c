// Package control holds the decisions of xdplb that need no privileges:
// which backend owns which Maglev slot, when a backend is up or down, how a
// backend is checked, and what the configuration means.
//
// Nothing here touches BPF or the network configuration of the node, so every
// piece is tested as ordinary Go: the health state machine and the check
// scheduler run against a fake clock, and the checkers against local
// listeners on 127.0.0.1.
package control
