package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/xdplb/xdplb/control/daemon"
)

func cmdStatus(e env, args []string) error {
	var c common
	fs := newFlagSet(e, "status", &c)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	resp, err := daemon.Call(c.instance, daemon.Request{Cmd: "status"})
	if err != nil {
		return err
	}
	if !resp.OK || resp.Status == nil {
		return fmt.Errorf("status: %s", resp.Error)
	}
	st := resp.Status
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	att := st.Attachment
	attached := "attached"
	if !st.Attached {
		attached = "NOT ATTACHED: " + st.AttachError
	}
	printf(e.stdout, "instance %s (xdplb %s, pid %d, up %s)\n", st.Instance, st.Version, st.PID, time.Since(st.Started).Round(time.Second))
	printf(e.stdout, "frontend %s (%s) on %s: %s %s via %s, prog id %d, %s\n", st.Frontend, st.FrontendIs, st.Iface, att.Hook, att.Mode, att.Via, att.ProgID, attached)
	if att.Reason != "" {
		printf(e.stdout, "  %s\n", att.Reason)
	}
	printf(e.stdout, "snat ports %s; checks: %s from %s; flows: %d established entries, %d half-open\n",
		st.SNATPorts, st.Check, st.CheckSource, st.Flows["flows"], st.Flows["half_open"])
	tb := st.Table
	perClient := "no per-client cap"
	if tb.MaxPerClient > 0 {
		perClient = fmt.Sprintf("at most %d per client", tb.MaxPerClient)
	}
	printf(e.stdout, "connections: %d live of %d (%s); refused: table full %d, client limit %d, no backend %d\n",
		tb.Live, tb.Capacity, perClient, st.Counters["reset_table_full"], st.Counters["reset_client_limit"], st.Counters["reset_no_backend"])
	if tb.Refusing {
		printf(e.stdout, "  TABLE FULL: new connections are refused with a RST (established ones are kept)\n")
	}
	if !st.LinkUp {
		printf(e.stdout, "  %s IS DOWN: health checks are not counted until it is back (backends keep their state)\n", st.Iface)
	}
	if st.LocalFaults > 0 {
		printf(e.stdout, "  %d health checks not counted (this node's own faults)\n", st.LocalFaults)
	}
	printf(e.stdout, "daemon: %d of %d file descriptors\n\n", st.FDs, st.FDLimit)
	tw := tabwriter.NewWriter(e.stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tSTATE\tWEIGHT\tCONNS\tNEW\tPACKETS\tBYTES\tCHECK\tLAST CHECK")
	for _, b := range st.Backends {
		state := b.State
		if b.Refused {
			state += " (refused)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1fms\t%s\n", b.Addr, state, b.Weight, b.Connections, b.NewFlows, b.Packets, b.Bytes, b.CheckMillis, b.Health)
	}
	tw.Flush()
	printf(e.stdout, "\ncounters:")
	for _, name := range daemon.SortedCounters(st.Counters) {
		if v := st.Counters[name]; v > 0 {
			printf(e.stdout, " %s=%d", name, v)
		}
	}
	printf(e.stdout, "\n")
	return nil
}

func cmdCheck(e env, args []string) error {
	var c common
	fs := newFlagSet(e, "check", &c)
	quiet := fs.BoolP("quiet", "q", false, "print nothing")
	backends := fs.Bool("backends", false, "also fail when no backend can take new connections (every one down or drained), saying why")
	if err := parse(fs, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return usageError("check takes no arguments, got %q", fs.Args())
	}
	resp, err := daemon.Call(c.instance, daemon.Request{Cmd: "check", Backends: *backends})
	if err == nil && !resp.OK {
		err = fmt.Errorf("check: %s", resp.Error)
	}
	if err != nil {
		if *quiet {
			return &exitError{code: 1, err: errSilent}
		}
		return err
	}
	if !*quiet {
		printf(e.stdout, "ok\n")
	}
	return nil
}

func cmdBackend(e env, args []string) error {
	var c common
	fs := newFlagSet(e, "backend", &c)
	if err := parse(fs, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	a := fs.Args()
	if len(a) < 2 {
		return usageError("usage: xdplb backend drain|enable|weight ADDR [N]")
	}
	req := daemon.Request{Cmd: a[0], Addr: a[1]}
	switch a[0] {
	case "drain", "enable":
		if len(a) != 2 {
			return usageError("usage: xdplb backend %s ADDR", a[0])
		}
	case "weight":
		if len(a) != 3 {
			return usageError("usage: xdplb backend weight ADDR N")
		}
		n, err := strconv.ParseUint(a[2], 10, 32)
		if err != nil {
			return usageError("weight %q: not a number", a[2])
		}
		req.Weight = uint32(n)
	default:
		return usageError("backend %q: want drain, enable or weight", a[0])
	}
	resp, err := daemon.Call(c.instance, req)
	if err != nil {
		return err
	}
	if !resp.OK {
		return fmt.Errorf("backend %s: %s", a[0], resp.Error)
	}
	printf(e.stdout, "ok\n")
	return nil
}

func cmdFlows(e env, args []string) error {
	var c common
	fs := newFlagSet(e, "flows", &c)
	backend := fs.String("backend", "", "only connections to this backend (ip or ip:port)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	var filter func(netip.AddrPort) bool
	if *backend != "" {
		if ap, err := netip.ParseAddrPort(*backend); err == nil {
			filter = func(a netip.AddrPort) bool { return a == ap }
		} else if ip, err := netip.ParseAddr(*backend); err == nil {
			filter = func(a netip.AddrPort) bool { return a.Addr() == ip }
		} else {
			return usageError("--backend %q: want ip or ip:port", *backend)
		}
	}
	// Read the pinned maps directly: works while no daemon runs.
	rows, err := daemon.Flows(c.bpffs, c.instance, filter)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(rows)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tBACKEND\tSNAT\tSTATE\tAGE\tIDLE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%ds\t%ds\n", r.Client, r.Backend, r.SNAT, r.State, r.AgeSec, r.IdleSec)
	}
	tw.Flush()
	printf(e.stdout, "%d connections\n", len(rows))
	return nil
}

func cmdDetach(e env, args []string) error {
	var c common
	fs := newFlagSet(e, "detach", &c)
	if err := parse(fs, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	stopped, err := daemon.Detach(c.bpffs, c.instance)
	if stopped {
		printf(e.stdout, "stopped the daemon of instance %s\n", c.instance)
	}
	if err != nil {
		return err
	}
	printf(e.stdout, "detached instance %s: program, pins and state removed\n", c.instance)
	return nil
}

func cmdVersion(e env, args []string) error {
	printf(e.stdout, "xdplb %s (data path: %s; %s)\n", daemon.Version, strings.Join([]string{"xdp", "tc"}, "+"), platform())
	return nil
}
