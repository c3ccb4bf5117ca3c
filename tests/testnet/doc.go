// Package testnet builds throw-away L2 networks out of Linux network
// namespaces, veth pairs and a bridge, for the end-to-end tests, the demo and
// the benchmarks of xdplb.
//
// Every "host" is a network namespace named "<prefix>-<name>" (bind-mounted
// under /run/netns, so `ip netns exec` and `nsenter --net=/run/netns/NAME`
// reach it). Its interface toward the wire is always called eth1, like the
// nodes of the K3s HA guide. The other end of each host's veth pair lives in a
// switch namespace "<prefix>-sw" and is enslaved to the bridge br0 there.
//
// Safety rules the package keeps, and its callers must keep too:
//
//   - Nothing is created in the root network namespace: veth pairs are
//     created by a netlink socket opened inside the switch namespace, with the
//     host end created directly inside the host namespace. No test address or
//     route is ever added to the root namespace and no packet is sent from it.
//   - Every run uses a unique prefix ("xl" + 6 random hex digits by default),
//     so test packages running in parallel do not collide.
//   - Net.Close removes everything: background processes started through
//     Host.Start (by PID), the veth pairs, the bridge and the namespaces. New
//     registers Close with t.Cleanup, which also runs when the test fails or
//     panics. A run killed outright (SIGKILL, go test -timeout) leaves an owner
//     file under /run/xdplb-testnet; the next Create removes what such dead
//     runs left behind (see SweepStale).
//
// Running code inside a host: Host.Do runs a function on a locked OS thread
// that has joined the host's namespace (the pattern of cloudflare/tubular's
// internal/testutil). Sockets created inside Do stay in that namespace after
// the thread has left it, so Host.Dial and Host.Listen return ordinary
// net.Conn and net.Listener values usable from any goroutine. Goroutines
// started by the function itself run in the root namespace: create sockets
// before spawning them.
//
// Running commands inside a host: Host.Exec and Host.Start use
// `nsenter --net=/run/netns/NAME`, which only switches the network namespace
// and keeps the caller's view of /sys, so /sys/fs/bpf (bpffs) stays visible.
// Host.ExecIPNetns uses `ip netns exec`, which also remounts /sys for the
// namespace and therefore hides bpffs: use it only for commands that want the
// namespace's own /sys/class/net view.
package testnet
