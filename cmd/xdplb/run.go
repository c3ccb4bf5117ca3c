package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"time"

	"github.com/xdplb/xdplb/bpf"
	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/daemon"
	"github.com/xdplb/xdplb/control/health"
)

func cmdRun(e env, args []string) error {
	var c common
	fset := newFlagSet(e, "run", &c)
	configPath := fset.String("config", config.DefaultConfigPath, "YAML configuration file (flags override it)")
	iface := fset.String("iface", "", "interface the frontend traffic arrives on (e.g. eth1)")
	vip := fset.String("vip", "", "frontend address: the VRRP VIP, or this node's own address")
	port := fset.Uint16("port", config.DefaultPort, "frontend TCP port")
	backends := fset.StringArray("backend", nil, "backend ip[:port] (repeatable; port defaults to --port)")
	check := fset.String("check", string(health.CheckTLS), "health check: tcp, tls or https")
	checkPath := fset.String("check-path", health.DefaultCheckPath, "https check path")
	checkCA := fset.String("check-ca", "", "CA file to verify backends with (default: no verification)")
	checkCert := fset.String("check-cert", "", "client certificate for checks")
	checkKey := fset.String("check-key", "", "client key for checks")
	checkToken := fset.String("check-token-file", "", "file holding a bearer token for https checks")
	checkStatus := fset.Int("check-expect-status", health.DefaultCheckStatus, "https status that means healthy")
	inter := fset.Duration("inter", health.DefaultInter, "check interval while up (HAProxy inter)")
	fastinter := fset.Duration("fastinter", 0, "check interval during transitions (default: inter)")
	downinter := fset.Duration("downinter", 0, "check interval while down (default: inter)")
	timeout := fset.Duration("check-timeout", 0, "check timeout (default: inter)")
	rise := fset.Int("rise", health.DefaultRise, "successes to mark a backend up")
	fall := fset.Int("fall", health.DefaultFall, "failures to mark a backend down")
	hook := fset.String("hook", string(bpf.HookXDP), "where the data path runs: xdp or tc")
	mode := fset.String("xdp-mode", string(bpf.XDPAuto), "XDP mode: auto, native or generic")
	snat := fset.String("snat-ports", "", "SNAT source port range LO-HI (default: chosen from the frontend kind)")
	metrics := fset.String("metrics-addr", config.DefaultMetricsAddr, "Prometheus metrics listen address (empty: no metrics)")
	idle := fset.Duration("established-timeout", 0, "idle timeout of established connections")
	maxConns := fset.Uint32("max-conns", 0, "connections the connection table holds (0: 131072); when full, new ones are refused with a RST")
	maxPerClient := fset.Uint32("max-conns-per-client", 0, "established connections one client address may hold (0: no cap)")
	syncPeer := fset.String("sync-peer", "", "the other LB's own address, ip[:port] (default port 6450): stream flows to it so connections survive a failover")
	syncKey := fset.String("sync-key-file", "", "file with the pair's shared secret for flow sync (at least 32 characters, e.g. openssl rand -hex 32)")
	allDown := fset.String("all-down", string(config.AllDownOpen), "when no backend is up: open (try every configured backend; a RST when none takes the connection) or drop")
	verbose := fset.Bool("verbose", false, "print verifier logs whole, and debug logs")
	noLink := fset.Bool("no-bpf-link", false, "attach through netlink/clsact even where bpf_link exists")
	if err := parse(fset, args); err != nil {
		if err == errHelp {
			return nil
		}
		return err
	}
	if fset.NArg() > 0 {
		return usageError("run takes no arguments, got %q", fset.Args())
	}

	cfg, err := config.LoadConfig(*configPath)
	if errors.Is(err, fs.ErrNotExist) && !fset.Changed("config") {
		cfg, err = config.DefaultConfig(), nil
	}
	if err != nil {
		return err
	}
	set := func(name string, apply func() error) error {
		if !fset.Changed(name) {
			return nil
		}
		if err := apply(); err != nil {
			return usageError("--%s: %v", name, err)
		}
		return nil
	}
	str := func(dst *string, v string) func() error { return func() error { *dst = v; return nil } }
	dur := func(dst *time.Duration, v time.Duration) func() error { return func() error { *dst = v; return nil } }
	num := func(dst *int, v int) func() error { return func() error { *dst = v; return nil } }
	steps := []struct {
		name  string
		apply func() error
	}{
		{"instance", str(&cfg.Instance, c.instance)},
		{"bpffs", str(&cfg.BPFFS, c.bpffs)},
		{"iface", str(&cfg.Iface, *iface)},
		{"vip", func() error {
			a, err := netip.ParseAddr(*vip)
			if err != nil {
				return fmt.Errorf("not an IP address: %q", *vip)
			}
			cfg.VIP = a
			return nil
		}},
		{"port", func() error { cfg.Port = *port; return nil }},
		{"backend", func() error {
			cfg.Backends = nil
			for _, s := range *backends {
				b, err := config.ParseBackend(s)
				if err != nil {
					return err
				}
				cfg.Backends = append(cfg.Backends, b)
			}
			return nil
		}},
		{"check", func() error { cfg.Check = health.CheckKind(*check); return nil }},
		{"check-path", str(&cfg.CheckPath, *checkPath)},
		{"check-ca", str(&cfg.CheckCA, *checkCA)},
		{"check-cert", str(&cfg.CheckCert, *checkCert)},
		{"check-key", str(&cfg.CheckKey, *checkKey)},
		{"check-token-file", str(&cfg.CheckTokenFile, *checkToken)},
		{"check-expect-status", num(&cfg.CheckExpectStatus, *checkStatus)},
		{"inter", dur(&cfg.Inter, *inter)},
		{"fastinter", dur(&cfg.FastInter, *fastinter)},
		{"downinter", dur(&cfg.DownInter, *downinter)},
		{"check-timeout", dur(&cfg.Timeout, *timeout)},
		{"rise", num(&cfg.Rise, *rise)},
		{"fall", num(&cfg.Fall, *fall)},
		{"hook", func() error { cfg.Hook = bpf.Hook(*hook); return nil }},
		{"xdp-mode", func() error { cfg.XDPMode = bpf.XDPMode(*mode); return nil }},
		{"snat-ports", func() error {
			r, err := config.ParsePortRange(*snat)
			cfg.SNATPorts = r
			return err
		}},
		{"metrics-addr", str(&cfg.MetricsAddr, *metrics)},
		{"established-timeout", dur(&cfg.EstablishedTimeout, *idle)},
		{"max-conns", func() error { cfg.MaxConns = *maxConns; return nil }},
		{"max-conns-per-client", func() error { cfg.MaxConnsPerClient = *maxPerClient; return nil }},
		{"sync-peer", func() error {
			if *syncPeer == "" {
				cfg.SyncPeer = netip.AddrPort{}
				return nil
			}
			ap, err := config.ParseSyncPeer(*syncPeer)
			cfg.SyncPeer = ap
			return err
		}},
		{"sync-key-file", str(&cfg.SyncKeyFile, *syncKey)},
		{"all-down", func() error { cfg.AllDown = config.AllDownPolicy(*allDown); return nil }},
	}
	for _, s := range steps {
		if err := set(s.name, s.apply); err != nil {
			return err
		}
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	return daemon.Run(e.ctx, cfg, daemon.Options{Verbose: *verbose, NoLink: *noLink, Logger: log})
}
