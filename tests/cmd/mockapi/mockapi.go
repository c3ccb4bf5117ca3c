package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/xdplb/xdplb/tests/apiserver"
)

type options struct {
	listen        string
	name          string
	cert, key     string
	ca            string
	token         string
	tokenFile     string
	heartbeat     time.Duration
	unready       bool
	publicReadyz  bool
	control       string
	echoListen    string
	discardListen string
	genPKI        string
	sans          []string
	shutdownGrace time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("mockapi", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", ":6443", `TLS API address; "" disables the API`)
	fs.StringVar(&o.name, "name", "", "server name for /whoami and heartbeats (default: host name)")
	fs.StringVar(&o.cert, "cert", "", "server certificate PEM (default: ephemeral self-signed)")
	fs.StringVar(&o.key, "key", "", "server key PEM")
	fs.StringVar(&o.ca, "ca", "", "client CA PEM: accept client certificates it signed as credentials")
	fs.StringVar(&o.token, "token", "", "bearer token accepted as credential (401 without a credential)")
	fs.StringVar(&o.tokenFile, "token-file", "", "read the bearer token from this file")
	fs.DurationVar(&o.heartbeat, "heartbeat", apiserver.DefaultHeartbeat, "interval between /watch heartbeats")
	fs.BoolVar(&o.unready, "unready", false, "start with /readyz answering 503")
	fs.BoolVar(&o.publicReadyz, "public-readyz", false, "serve /readyz, /healthz, /livez without credentials")
	fs.StringVar(&o.control, "control", "", "loopback control address (e.g. 127.0.0.1:6444): POST /ready, POST /unready, GET /status")
	fs.StringVar(&o.echoListen, "echo-listen", "", "plain TCP echo sink address (for rr/connrate benchmarks)")
	fs.StringVar(&o.discardListen, "discard-listen", "", "plain TCP discard sink address (for bulk benchmarks)")
	fs.StringVar(&o.genPKI, "gen-pki", "", "write ca.crt/key, server.crt/key, client.crt/key and token to this directory and exit")
	fs.StringSliceVar(&o.sans, "san", nil, "extra subject alternative names for --gen-pki (repeatable)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 2*time.Second, "how long SIGTERM waits for requests to finish")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mockapi [flags]\n\nA mock K3s API server: /readyz, /whoami, /watch over TLS; optional plain TCP echo/discard sinks.\nSIGUSR1: unready, SIGUSR2: ready, SIGTERM/SIGINT: exit.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Errorf("unexpected arguments: %q", fs.Args())}
	}
	if (o.cert == "") != (o.key == "") {
		return nil, usageError{errors.New("--cert and --key go together")}
	}
	if o.token != "" && o.tokenFile != "" {
		return nil, usageError{errors.New("--token and --token-file are exclusive")}
	}
	if o.genPKI == "" && o.listen == "" && o.echoListen == "" && o.discardListen == "" {
		return nil, usageError{errors.New("nothing to serve: set --listen, --echo-listen or --discard-listen")}
	}
	if o.control != "" {
		host, _, err := net.SplitHostPort(o.control)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, usageError{fmt.Errorf("--control %q: want a loopback address such as 127.0.0.1:6444", o.control)}
		}
	}
	return o, nil
}

// mockapi runs the command; sigs delivers SIGTERM/SIGINT/SIGUSR1/SIGUSR2.
func mockapi(ctx context.Context, stdout, stderr io.Writer, args []string, sigs <-chan os.Signal) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "mockapi: "+format+"\n", a...) }

	if o.genPKI != "" {
		p, err := apiserver.WritePKI(o.genPKI, o.sans...)
		if err != nil {
			return fmt.Errorf("write PKI to %s: %w", o.genPKI, err)
		}
		fmt.Fprintf(stdout, "wrote %s %s %s %s %s %s\n", p.CAFile, p.ServerCert, p.ServerKey, p.ClientCert, p.ClientKey, p.TokenFile)
		return nil
	}

	if o.name == "" {
		if o.name, err = os.Hostname(); err != nil {
			return fmt.Errorf("no --name and no host name: %w", err)
		}
	}
	token := o.token
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("read token: %w", err)
		}
		if token = strings.TrimSpace(string(b)); token == "" {
			return fmt.Errorf("read token: %s is empty", o.tokenFile)
		}
	}
	cfg := apiserver.Config{
		Name:         o.name,
		Token:        token,
		Heartbeat:    o.heartbeat,
		Unready:      o.unready,
		PublicReadyz: o.publicReadyz,
		Logf:         logf,
	}
	if o.cert != "" {
		pair, err := tls.LoadX509KeyPair(o.cert, o.key)
		if err != nil {
			return fmt.Errorf("load server certificate: %w", err)
		}
		cfg.Certificate = &pair
	} else if o.listen != "" {
		logf("no --cert: using an ephemeral self-signed certificate (clients need --insecure)")
	}
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("read client CA: no certificate in %s", o.ca)
		}
		cfg.ClientCAs = pool
	}
	srv, err := apiserver.New(cfg)
	if err != nil {
		return err
	}

	// Bind everything first, then announce, then serve.
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	var parts []string
	var apiLn net.Listener
	if o.listen != "" {
		if apiLn, err = net.Listen("tcp", o.listen); err != nil {
			return fmt.Errorf("listen on %s: %w", o.listen, err)
		}
		closers = append(closers, func() { apiLn.Close() })
		parts = append(parts, "api="+apiLn.Addr().String())
	}
	for _, sink := range []struct {
		addr string
		mode apiserver.SinkMode
	}{{o.echoListen, apiserver.Echo}, {o.discardListen, apiserver.Discard}} {
		if sink.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", sink.addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", sink.addr, err)
		}
		s := apiserver.ServeSink(ln, sink.mode)
		closers = append(closers, func() { s.Close() })
		parts = append(parts, sink.mode.String()+"="+ln.Addr().String())
	}
	var ctlSrv *http.Server
	if o.control != "" {
		ln, err := net.Listen("tcp", o.control)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.control, err)
		}
		ctlSrv = &http.Server{Handler: controlHandler(srv), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = ctlSrv.Serve(ln) }()
		closers = append(closers, func() { ctlSrv.Close() })
		parts = append(parts, "control="+ln.Addr().String())
	}

	serveErr := make(chan error, 1)
	var wg sync.WaitGroup
	if apiLn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(apiLn); err != nil {
				serveErr <- err
			}
		}()
	}
	fmt.Fprintf(stdout, "listening name=%s %s ready=%v\n", o.name, strings.Join(parts, " "), srv.Ready())
	if f, ok := stdout.(*os.File); ok {
		_ = f.Sync()
	}

	for {
		select {
		case err := <-serveErr:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
			return shutdown(srv, o.shutdownGrace, nil, &wg)
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR1:
				srv.SetReady(false)
			case syscall.SIGUSR2:
				srv.SetReady(true)
			default:
				logf("%v: shutting down", sig)
				return shutdown(srv, o.shutdownGrace, sigs, &wg)
			}
		}
	}
}

// shutdown ends gracefully within grace; a second terminating signal cuts
// it short.
func shutdown(srv *apiserver.Server, grace time.Duration, sigs <-chan os.Signal, wg *sync.WaitGroup) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs: // nil sigs: never
				if sig == syscall.SIGTERM || sig == syscall.SIGINT {
					cancel()
					return
				}
			}
		}
	}()
	_ = srv.Shutdown(ctx) // a timeout closes what is left: still a clean exit
	wg.Wait()
	return nil
}

func controlHandler(srv *apiserver.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ready", func(w http.ResponseWriter, r *http.Request) {
		srv.SetReady(true)
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("POST /unready", func(w http.ResponseWriter, r *http.Request) {
		srv.SetReady(false)
		io.WriteString(w, "unready\n")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := srv.Stats()
		fmt.Fprintf(w, "name=%s ready=%v requests=%d unauthorized=%d watches=%d conns=%d\n",
			srv.Name(), srv.Ready(), st.Requests, st.Unauthorized, st.ActiveWatches, st.Conns)
	})
	return mux
}
