package main

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdplb/xdplb/control/daemon"
)

func statusCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "backends, health, weights, connections, counters and the attachment, from the daemon",
		Args:  noArgs,
	}
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		instance, _ := instanceOf(cmd, e)
		resp, err := daemon.Call(instance, daemon.Request{Cmd: "status"})
		if err != nil {
			return err
		}
		if !resp.OK || resp.Status == nil {
			return fmt.Errorf("status: %s", resp.Error)
		}
		if *asJSON {
			return printJSON(e.stdout, resp.Status)
		}
		printStatus(e, resp.Status)
		return nil
	}
	return cmd
}

func printStatus(e env, st *daemon.Status) {
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
	if r := st.Reload; r != nil && !r.At.IsZero() {
		ok := "applied"
		if !r.OK {
			ok = "FAILED: " + r.Error
		}
		printf(e.stdout, "last reload %s ago: %s\n", time.Since(r.At).Round(time.Second), ok)
	}
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
	if st.FailingOpen {
		printf(e.stdout, "  FAILING OPEN: no backend can take new connections as far as this node sees; new connections go to every configured backend (all-down: %s)\n", st.AllDown)
	}
	if sy := st.Sync; sy != nil {
		printSync(e, sy)
	}
	printf(e.stdout, "daemon: %d of %d file descriptors\n\n", st.FDs, st.FDLimit)
	tw := tabwriter.NewWriter(e.stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBACKEND\tSTATE\tWEIGHT\tCONNS\tNEW\tPACKETS\tBYTES\tCHECK\tLAST CHECK")
	for _, b := range st.Backends {
		state := string(b.State)
		if b.Refused {
			state += " (refused)"
		}
		name := b.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.1fms\t%s\n", name, b.Addr, state, b.Weight, b.Connections, b.NewFlows, b.Packets, b.Bytes, b.CheckMillis, b.Health)
	}
	tw.Flush()
	printf(e.stdout, "\npackets:")
	for _, name := range daemon.SortedCounters(st.Counters) {
		if v := st.Counters[name]; v > 0 && !daemon.IsEvent(name) {
			printf(e.stdout, " %s=%d", name, v)
		}
	}
	printf(e.stdout, "\nevents:")
	for _, name := range daemon.SortedCounters(st.Counters) {
		if v := st.Counters[name]; v > 0 && daemon.IsEvent(name) {
			printf(e.stdout, " %s=%d", name, v)
		}
	}
	printf(e.stdout, "\n")
}

const checkLong = `Exit 0 if and only if this node forwards: its daemon runs and its program is
attached. keepalived's track script (unweighted: a failure puts the node in
FAULT and the VIP moves). With --backends, also fail when no backend can take
new connections (every one down, drained, or unreachable from this node), and
say why: the weighted track script that only lowers the node's priority.`

func checkCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check [--backends] [--quiet]",
		Short: "exit 0 iff this node forwards (for keepalived's track script)",
		Long:  checkLong,
		Args:  noArgs,
	}
	quiet := cmd.Flags().BoolP("quiet", "q", false, "print nothing")
	backends := cmd.Flags().Bool("backends", false, "also fail when no backend can take new connections (every one down or drained), saying why")
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		instance, _ := instanceOf(cmd, e)
		resp, err := daemon.Call(instance, daemon.Request{Cmd: "check", Backends: *backends})
		if err == nil && !resp.OK {
			err = fmt.Errorf("check: %s", resp.Error)
		}
		if *asJSON {
			out := struct {
				OK    bool   `json:"ok"`
				Error string `json:"error,omitempty"`
			}{OK: err == nil}
			if err != nil {
				out.Error = err.Error()
			}
			printJSON(e.stdout, out)
			if err != nil {
				return &exitError{code: exitFailure, err: errSilent}
			}
			return nil
		}
		if err != nil {
			if *quiet {
				return &exitError{code: exitFailure, err: errSilent}
			}
			return err
		}
		if !*quiet {
			printf(e.stdout, "ok\n")
		}
		return nil
	}
	return cmd
}

func backendCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backend drain|enable|weight",
		Short: "drain, enable or weigh a backend (by name or address) until the next reload or restart of the weights",
		Args:  noArgs,
		RunE:  needSubcommand,
	}
	var asJSON *bool
	op := func(use, short string, n int, req func(args []string) (daemon.Request, error)) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Args: exactArgs(n), ValidArgsFunction: completeBackends(e)}
		c.RunE = func(c *cobra.Command, args []string) error {
			instance, _ := instanceOf(c, e)
			r, err := req(args)
			if err != nil {
				return err
			}
			resp, err := daemon.Call(instance, r)
			if err != nil {
				return err
			}
			if !resp.OK {
				return fmt.Errorf("backend %s: %s", r.Cmd, resp.Error)
			}
			if *asJSON {
				return printJSON(e.stdout, resp)
			}
			printf(e.stdout, "ok\n")
			return nil
		}
		return c
	}
	cmd.AddCommand(
		op("drain NAME|ADDR", "no new connections to the backend; established ones stay", 1, func(a []string) (daemon.Request, error) {
			return daemon.Request{Cmd: "drain", Addr: a[0]}, nil
		}),
		op("enable NAME|ADDR", "undo drain", 1, func(a []string) (daemon.Request, error) {
			return daemon.Request{Cmd: "enable", Addr: a[0]}, nil
		}),
		op("weight NAME|ADDR N", "set the backend's Maglev weight, 0 (drained) to 256; the file's weight comes back at the next reload", 2, func(a []string) (daemon.Request, error) {
			n, err := strconv.ParseUint(a[1], 10, 32)
			if err != nil {
				return daemon.Request{}, usageError("weight %q: not a number", a[1])
			}
			return daemon.Request{Cmd: "weight", Addr: a[0], Weight: uint32(n)}, nil
		}),
	)
	asJSON = cmd.PersistentFlags().Bool("json", false, "print JSON")
	return cmd
}

func flowsCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "flows [--backend NAME|ADDR] [--json]",
		Short: "tracked connections, read from the pinned maps (works without the daemon)",
		Args:  noArgs,
	}
	backend := cmd.Flags().String("backend", "", "only connections to this backend (name, ip or ip:port)")
	cmd.RegisterFlagCompletionFunc("backend", completeBackends(e))
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		instance, bpffs := instanceOf(cmd, e)
		// Names come from the daemon, when it answers: the pinned maps
		// know addresses only.
		names := backendNames(instance)
		var filter func(netip.AddrPort) bool
		if b := *backend; b != "" {
			if ap, err := netip.ParseAddrPort(b); err == nil {
				filter = func(a netip.AddrPort) bool { return a == ap }
			} else if ip, err := netip.ParseAddr(b); err == nil {
				filter = func(a netip.AddrPort) bool { return a.Addr() == ip }
			} else if addr, ok := nameAddr(names, b); ok {
				filter = func(a netip.AddrPort) bool { return a == addr }
			} else {
				return usageError("--backend %q: want a backend's name (the daemon names none such), ip or ip:port", b)
			}
		}
		rows, err := daemon.Flows(bpffs, instance, filter)
		if err != nil {
			return err
		}
		for i := range rows {
			if ap, err := netip.ParseAddrPort(rows[i].Backend); err == nil {
				rows[i].Name = names[ap]
			}
		}
		if *asJSON {
			return printJSON(e.stdout, rows)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT\tNAME\tBACKEND\tSNAT\tSTATE\tAGE\tIDLE")
		for _, r := range rows {
			name := r.Name
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%ds\t%ds\n", r.Client, name, r.Backend, r.SNAT, r.State, r.AgeSec, r.IdleSec)
		}
		tw.Flush()
		printf(e.stdout, "%d connections\n", len(rows))
		return nil
	}
	return cmd
}

// backendNames asks the daemon for its backends' names; none when it does
// not answer within a second.
func backendNames(instance string) map[netip.AddrPort]string {
	names := map[netip.AddrPort]string{}
	resp, err := daemon.CallTimeout(instance, daemon.Request{Cmd: "status"}, time.Second)
	if err != nil || resp.Status == nil {
		return names
	}
	for _, b := range resp.Status.Backends {
		if ap, err := netip.ParseAddrPort(b.Addr); err == nil && b.Name != "" {
			names[ap] = b.Name
		}
	}
	return names
}

func nameAddr(names map[netip.AddrPort]string, name string) (netip.AddrPort, bool) {
	for a, n := range names {
		if n == name {
			return a, true
		}
	}
	return netip.AddrPort{}, false
}

func detachCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detach",
		Short: "stop the daemon, remove the program, pins and state (drops tracked connections)",
		Args:  noArgs,
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		instance, bpffs := instanceOf(cmd, e)
		stopped, err := daemon.Detach(bpffs, instance)
		if stopped {
			printf(e.stdout, "stopped the daemon of instance %s\n", instance)
		}
		if err != nil {
			return err
		}
		printf(e.stdout, "detached instance %s: program, pins and state removed\n", instance)
		return nil
	}
	return cmd
}

const reloadLong = `Make the instance's daemon read its configuration again (its file and the
flags it was started with) and apply it: backends added, removed or renamed,
weights, check settings and timers, live; no connection is touched and the
program stays attached. A setting that only a restart applies (frontend
address or port, hook, XDP mode, SNAT range, table sizes, listeners) refuses
the whole reload, saying to restart (which loses no connection). A broken file
changes nothing either. The same as SIGHUP (systemctl reload xdplb), but
waits for the result: exit 0 when applied, 1 when refused.

--config names the file only to find the instance (its instance key) when
--instance is not given; the daemon reads the file it was started with.`

func reloadCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reload [--instance NAME | --config FILE]",
		Short: "apply the configuration again, live (as SIGHUP), and say what changed",
		Long:  reloadLong,
		Args:  noArgs,
	}
	configFlag(cmd.Flags())
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		instance, _ := instanceOf(cmd, e)
		if !cmd.Flags().Changed("instance") {
			instance = instanceFromFile(cmd.Flags().Lookup("config").Value.String(), e, instance)
		}
		resp, err := daemon.Call(instance, daemon.Request{Cmd: "reload"})
		if err != nil {
			return err
		}
		if *asJSON {
			printJSON(e.stdout, resp)
			if !resp.OK {
				return &exitError{code: exitFailure, err: errSilent}
			}
			return nil
		}
		if !resp.OK {
			return fmt.Errorf("reload: %s", resp.Error)
		}
		if r := resp.Reload; r != nil {
			if len(r.Changes) == 0 {
				printf(e.stdout, "reloaded: nothing changed\n")
			}
			for _, c := range r.Changes {
				printf(e.stdout, "%s\n", c)
			}
			for _, w := range r.Warnings {
				printf(e.stderr, "xdplb: warning: %s\n", w)
			}
		}
		return nil
	}
	return cmd
}

// instanceFromFile reads the instance key of a configuration file, or
// returns def when the file gives none (or cannot be read: the daemon will
// say what is wrong with it).
func instanceFromFile(path string, e env, def string) string {
	cfg, _, err := loadFile(path, e)
	if err != nil || cfg.Instance == "" {
		return def
	}
	return cfg.Instance
}

func versionCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "print the version",
		Args:  noArgs,
	}
	asJSON := jsonFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		v := daemon.Build()
		if *asJSON {
			return printJSON(e.stdout, v)
		}
		printf(e.stdout, "xdplb %s (data path: %s; %s %s/%s)\n", v.Version, strings.Join(v.Hooks, "+"), v.GoVersion, v.OS, v.Arch)
		return nil
	}
	return cmd
}

// printSync prints flow sync's part of the status.
func printSync(e env, sy *daemon.SyncStatus) {
	vip := "does not hold the VIP"
	if sy.HoldsVIP {
		vip = "holds the VIP"
	}
	gate := "check may pass"
	if !sy.GateOpen {
		gate = "CHECK FAILS: " + sy.GateWhy
	}
	printf(e.stdout, "sync with %s: %s since %s; this node %s; %s\n", sy.Peer, sy.State, sy.StateSince.Format(time.TimeOnly), vip, gate)
	c := sy.Counters
	printf(e.stdout, "  lag %.1fms (%d waiting; sent p50 %.1fms p99 %.1fms); flows sent %d, received %d, installed %d, removed %d; events lost %d\n",
		sy.LagMS, sy.Pending, sy.LagP50MS, sy.LagP99MS, c["flows_sent"], c["flows_received"], c["flows_installed"], c["flows_removed"], c["events_lost"])
	var drops []string
	for r, n := range sy.Dropped {
		if n > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", r, n))
		}
	}
	sort.Strings(drops)
	if len(drops) > 0 {
		printf(e.stdout, "  refused from the peer: %s\n", strings.Join(drops, " "))
	}
	if r := sy.LastResync; r != nil {
		printf(e.stdout, "  last resync at %s: %d connections in %.0fms (whole table: %v, %d stale removed)\n",
			r.At.Format(time.TimeOnly), r.Connections, r.DurationMS, r.FullTable, r.StaleRemoved)
	}
	if t := sy.LastTakeover; t != nil {
		printf(e.stdout, "  last takeover at %s: %d connections ready (sync %s); %d takeovers\n", t.At.Format(time.TimeOnly), t.ConnectionsReady, t.SyncState, sy.Takeovers)
	}
	if sy.LastError != "" && sy.State == "disconnected" {
		printf(e.stdout, "  last error: %s\n", sy.LastError)
	}
}
