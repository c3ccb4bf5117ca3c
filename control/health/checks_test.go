package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// checkEnv is a set of local backends, each showing one way an API server
// can be healthy or not, and the files a checker reads.
type checkEnv struct {
	closedAddr  string // nothing listens
	tcpAddr     string // accepts TCP, sends nothing
	closingAddr string // reads the client's first bytes, then closes
	api         *apiServer
	apiToken    *apiServer // requires a bearer token
	apiMTLS     *apiServer // requires a client certificate
	apiSlow     *apiServer // never answers a request

	caFile, otherCAFile    string
	clientCert, clientKey  string
	tokenFile, badTokFile  string
	tcpRemotes             *remoteLog
	serverDNSName, apiHost string
}

const testToken = "K10abc::server:s3cret"

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	ca := newTestCA(t, "k3s-server")
	other := newTestCA(t, "someone-else")
	clientCA := newTestCA(t, "k3s-client")
	serverCert := ca.issue(t, "k3s", false, []string{"kubernetes", "kubernetes.default"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	clientCertFile, clientKeyFile := writeKeyPair(t, "client", clientCA.issue(t, "system:xdplb", true, nil, nil))
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(clientCA.cert)

	env := &checkEnv{
		caFile: ca.pemFile, otherCAFile: other.pemFile,
		clientCert: clientCertFile, clientKey: clientKeyFile,
		tokenFile:  writeFile(t, "token", []byte(testToken+"\n")),
		badTokFile: writeFile(t, "bad-token", []byte("wrong")),
		tcpRemotes: &remoteLog{},
	}
	env.closedAddr = closedPort(t)
	env.tcpAddr = serveTCP(t, func(c net.Conn) {
		env.tcpRemotes.add(c.RemoteAddr())
		// Hold the connection, as a hung API server does, until the test ends.
		io.Copy(io.Discard, c)
	})
	env.closingAddr = serveTCP(t, func(c net.Conn) {
		c.Read(make([]byte, 4096))
		c.Close()
	})
	env.api = newAPIServer(t, serverCert, nil, "")
	env.apiToken = newAPIServer(t, serverCert, nil, testToken)
	env.apiMTLS = newAPIServer(t, serverCert, clientCAs, "")
	env.apiSlow = newAPIServer(t, serverCert, nil, "")
	env.apiSlow.hang.Store(true)
	return env
}

// apiServer is an HTTPS server answering like kube-apiserver's /readyz.
type apiServer struct {
	addr    string
	status  atomic.Int32
	hang    atomic.Bool
	remotes remoteLog
}

func newAPIServer(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool, token string) *apiServer {
	t.Helper()
	s := &apiServer{}
	s.status.Store(http.StatusOK)
	released := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.remotes.addString(r.RemoteAddr)
		if s.hang.Load() {
			select {
			case <-r.Context().Done():
			case <-released:
			}
			return
		}
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(int(s.status.Load()))
		io.WriteString(w, "ok")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		srv.TLS.ClientCAs = clientCAs
	}
	// The checks end connections at will; the server need not log it.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(func() {
		close(released)
		srv.Close()
	})
	s.addr = srv.Listener.Addr().String()
	return s
}

// remoteLog records the source addresses a server saw.
type remoteLog struct {
	mu    sync.Mutex
	hosts []string
}

func (l *remoteLog) add(a net.Addr) { l.addString(a.String()) }

func (l *remoteLog) addString(hostport string) {
	host, _, _ := net.SplitHostPort(hostport)
	l.mu.Lock()
	l.hosts = append(l.hosts, host)
	l.mu.Unlock()
}

func (l *remoteLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.hosts) == 0 {
		return ""
	}
	return l.hosts[len(l.hosts)-1]
}

// serveTCP accepts connections on 127.0.0.1 and hands each to handle.
func serveTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// closedPort returns an address on 127.0.0.1 where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestCheckers(t *testing.T) {
	env := newCheckEnv(t)
	tests := []struct {
		name    string
		kind    CheckKind
		opts    func(e *checkEnv) CheckOptions
		addr    func(e *checkEnv) string
		timeout time.Duration // default 2s
		wantErr string        // "" for a pass; else the whole message
	}{
		// tcp
		{name: "tcp: listener", kind: CheckTCP, addr: func(e *checkEnv) string { return e.tcpAddr }},
		{name: "tcp: refused", kind: CheckTCP, addr: func(e *checkEnv) string { return e.closedAddr },
			wantErr: "tcp connect: connection refused"},
		{name: "tcp: a hung server still passes", kind: CheckTCP, addr: func(e *checkEnv) string { return e.api.addr }},

		// tls
		{name: "tls: no CA, self-signed server passes", kind: CheckTLS, addr: func(e *checkEnv) string { return e.api.addr }},
		{name: "tls: refused", kind: CheckTLS, addr: func(e *checkEnv) string { return e.closedAddr },
			wantErr: "tls handshake: connection refused"},
		{name: "tls: accepts TCP, never speaks TLS", kind: CheckTLS, addr: func(e *checkEnv) string { return e.tcpAddr },
			timeout: 200 * time.Millisecond, wantErr: "tls handshake: i/o timeout"},
		{name: "tls: closes during the handshake", kind: CheckTLS, addr: func(e *checkEnv) string { return e.closingAddr },
			wantErr: "tls handshake: connection closed by backend"},
		{name: "tls: CA verifies the chain, not the IP", kind: CheckTLS,
			opts: func(e *checkEnv) CheckOptions { return CheckOptions{CAFile: e.caFile} },
			addr: func(e *checkEnv) string { return e.api.addr }},
		{name: "tls: wrong CA", kind: CheckTLS,
			opts:    func(e *checkEnv) CheckOptions { return CheckOptions{CAFile: e.otherCAFile} },
			addr:    func(e *checkEnv) string { return e.api.addr },
			wantErr: "tls handshake: x509: certificate signed by unknown authority"},
		{name: "tls: CA and server name", kind: CheckTLS,
			opts: func(e *checkEnv) CheckOptions { return CheckOptions{CAFile: e.caFile, ServerName: "kubernetes"} },
			addr: func(e *checkEnv) string { return e.api.addr }},
		{name: "tls: CA and a name the certificate lacks", kind: CheckTLS,
			opts:    func(e *checkEnv) CheckOptions { return CheckOptions{CAFile: e.caFile, ServerName: "k3s.example"} },
			addr:    func(e *checkEnv) string { return e.api.addr },
			wantErr: "tls handshake: x509: certificate is valid for kubernetes, kubernetes.default, not k3s.example"},

		// https
		{name: "https: 200", kind: CheckHTTPS, addr: func(e *checkEnv) string { return e.api.addr }},
		{name: "https: refused", kind: CheckHTTPS, addr: func(e *checkEnv) string { return e.closedAddr },
			wantErr: "https GET /readyz: connection refused"},
		{name: "https: no answer to the request", kind: CheckHTTPS, addr: func(e *checkEnv) string { return e.apiSlow.addr },
			timeout: 200 * time.Millisecond, wantErr: "https GET /readyz: i/o timeout"},
		{name: "https: anonymous request refused", kind: CheckHTTPS, addr: func(e *checkEnv) string { return e.apiToken.addr },
			wantErr: "https GET /readyz: status 401"},
		{name: "https: bearer token", kind: CheckHTTPS,
			opts: func(e *checkEnv) CheckOptions { return CheckOptions{TokenFile: e.tokenFile} },
			addr: func(e *checkEnv) string { return e.apiToken.addr }},
		{name: "https: wrong token", kind: CheckHTTPS,
			opts:    func(e *checkEnv) CheckOptions { return CheckOptions{TokenFile: e.badTokFile} },
			addr:    func(e *checkEnv) string { return e.apiToken.addr },
			wantErr: "https GET /readyz: status 401"},
		{name: "https: expected status configured", kind: CheckHTTPS,
			opts: func(e *checkEnv) CheckOptions { return CheckOptions{ExpectStatus: http.StatusUnauthorized} },
			addr: func(e *checkEnv) string { return e.apiToken.addr }},
		{name: "https: other path", kind: CheckHTTPS,
			opts:    func(e *checkEnv) CheckOptions { return CheckOptions{Path: "/livez", TokenFile: e.badTokFile} },
			addr:    func(e *checkEnv) string { return e.apiToken.addr },
			wantErr: "https GET /livez: status 401"},
		{name: "https: client certificate required, none sent", kind: CheckHTTPS,
			addr:    func(e *checkEnv) string { return e.apiMTLS.addr },
			wantErr: "https GET /readyz: remote error: tls: certificate required"},
		{name: "https: client certificate", kind: CheckHTTPS,
			opts: func(e *checkEnv) CheckOptions {
				return CheckOptions{CAFile: e.caFile, CertFile: e.clientCert, KeyFile: e.clientKey}
			},
			addr: func(e *checkEnv) string { return e.apiMTLS.addr }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts CheckOptions
			if tt.opts != nil {
				opts = tt.opts(env)
			}
			checker, err := NewChecker(tt.kind, opts)
			if err != nil {
				t.Fatalf("NewChecker() = %v", err)
			}
			timeout := cmpOr(tt.timeout, 2*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			err = checker.Check(ctx, tt.addr(env))
			if took := time.Since(start); took > timeout+time.Second {
				t.Errorf("check took %v with a %v timeout", took, timeout)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Check() = %q, want a pass", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("Check() passed, want %q", tt.wantErr)
			case tt.wantErr != "" && err.Error() != tt.wantErr:
				t.Errorf("Check() = %q, want %q", err, tt.wantErr)
			}
		})
	}
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func TestCheckErrorKeepsTheCause(t *testing.T) {
	env := newCheckEnv(t)
	err := (&TCPChecker{}).Check(context.Background(), env.closedAddr)
	var ce *CheckError
	if !errors.As(err, &ce) || ce.Step != "tcp connect" {
		t.Fatalf("Check() = %#v, want a *CheckError of step tcp connect", err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("errors.Is(%v, ECONNREFUSED) = false: the cause must stay reachable", err)
	}
}

// TestCheckersBindSourceIP: checks leave from the node's address, never the
// VIP. 127.0.0.2 stands for it: all of 127/8 is local on Linux.
func TestCheckersBindSourceIP(t *testing.T) {
	env := newCheckEnv(t)
	source := net.IPv4(127, 0, 0, 2)
	tests := []struct {
		kind    CheckKind
		addr    string
		remotes *remoteLog
	}{
		{CheckTCP, env.tcpAddr, env.tcpRemotes},
		{CheckHTTPS, env.api.addr, &env.api.remotes},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			checker, err := NewChecker(tt.kind, CheckOptions{SourceIP: source})
			if err != nil {
				t.Fatalf("NewChecker() = %v", err)
			}
			if err := checker.Check(context.Background(), tt.addr); err != nil {
				t.Fatalf("Check() = %v", err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for tt.remotes.last() != "127.0.0.2" && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond) // the TCP server records after Accept
			}
			if got := tt.remotes.last(); got != "127.0.0.2" {
				t.Errorf("server saw the check from %q, want 127.0.0.2", got)
			}
		})
	}
}

// TestHTTPSCheckerRereadsToken: a token rotated on disk is used by the next
// check, without a restart.
func TestHTTPSCheckerRereadsToken(t *testing.T) {
	env := newCheckEnv(t)
	tokenFile := writeFile(t, "token", []byte("old-token"))
	checker, err := NewHTTPSChecker(CheckOptions{TokenFile: tokenFile})
	if err != nil {
		t.Fatalf("NewHTTPSChecker() = %v", err)
	}
	if err := checker.Check(context.Background(), env.apiToken.addr); err == nil || !strings.HasSuffix(err.Error(), "status 401") {
		t.Fatalf("Check() with the old token = %v, want status 401", err)
	}
	if err := os.WriteFile(tokenFile, []byte(testToken), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checker.Check(context.Background(), env.apiToken.addr); err != nil {
		t.Errorf("Check() after rotation = %v, want a pass", err)
	}
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	// A token this node cannot read says nothing of the backend: the
	// failure is the node's own and counts neither way.
	err = checker.Check(context.Background(), env.apiToken.addr)
	if err == nil || !strings.Contains(err.Error(), "https GET /readyz: cannot read the check's token: read token file: open ") || Classify(err) != LocalFault {
		t.Errorf("Check() without the token file = %v (%v), want a read token file error classified as a local fault", err, Classify(err))
	}
	// Swapped for /dev/zero or a FIFO: refused at once, still local.
	for _, target := range []string{"/dev/zero", writeFifo(t)} {
		os.Remove(tokenFile)
		if err := os.Symlink(target, tokenFile); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = checker.Check(context.Background(), env.apiToken.addr)
		if err == nil || !strings.Contains(err.Error(), "not a regular file") || Classify(err) != LocalFault || time.Since(start) > time.Second {
			t.Errorf("token file -> %s: Check() = %v (%v) after %v, want a prompt local fault", target, err, Classify(err), time.Since(start))
		}
	}
}

func writeFifo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHTTPSCheckerFollowsStatus(t *testing.T) {
	env := newCheckEnv(t)
	checker, err := NewChecker(CheckHTTPS, CheckOptions{})
	if err != nil {
		t.Fatalf("NewChecker() = %v", err)
	}
	for _, tt := range []struct {
		status  int
		wantErr string
	}{
		{http.StatusOK, ""},
		{http.StatusServiceUnavailable, "https GET /readyz: status 503"},
		{http.StatusInternalServerError, "https GET /readyz: status 500"},
		{http.StatusOK, ""},
	} {
		env.api.status.Store(int32(tt.status))
		err := checker.Check(context.Background(), env.api.addr)
		if got := errString(err); got != tt.wantErr {
			t.Errorf("status %d: Check() = %q, want %q", tt.status, got, tt.wantErr)
		}
	}
}

func TestNewCheckerErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := writeFile(t, "not-pem", []byte("hello"))
	emptyToken := writeFile(t, "empty-token", []byte(" \n"))
	fifo := writeFifo(t)
	tests := []struct {
		name string
		kind CheckKind
		opts CheckOptions
		want string
	}{
		{"unknown kind", "http", CheckOptions{}, `unknown check "http": use tcp, tls or https`},
		{"cert without key", CheckTLS, CheckOptions{CertFile: "/x.crt"}, "client certificate: set both the certificate and the key file, or neither"},
		{"key without cert", CheckHTTPS, CheckOptions{KeyFile: "/x.key"}, "client certificate: set both"},
		{"missing cert", CheckTLS, CheckOptions{CertFile: dir + "/x.crt", KeyFile: dir + "/x.key"}, "read client certificate: open " + dir + "/x.crt: no such file or directory"},
		{"token is /dev/zero", CheckHTTPS, CheckOptions{TokenFile: "/dev/zero"}, "read token file: read /dev/zero: not a regular file (a character device)"},
		{"CA is a FIFO", CheckTLS, CheckOptions{CAFile: fifo}, "read CA file: read " + fifo + ": not a regular file (a FIFO)"},
		{"key is a FIFO", CheckTLS, CheckOptions{CertFile: notPEM, KeyFile: fifo}, "read client key: read " + fifo + ": not a regular file (a FIFO)"},
		{"missing CA", CheckTLS, CheckOptions{CAFile: dir + "/ca.pem"}, "read CA file: open " + dir + "/ca.pem: no such file or directory"},
		{"CA without PEM", CheckHTTPS, CheckOptions{CAFile: notPEM}, "no PEM certificate found"},
		{"missing token", CheckHTTPS, CheckOptions{TokenFile: dir + "/token"}, "read token file: open " + dir + "/token"},
		{"empty token", CheckHTTPS, CheckOptions{TokenFile: emptyToken}, "token file " + emptyToken + " is empty"},
		{"relative path", CheckHTTPS, CheckOptions{Path: "readyz"}, `check path "readyz": must start with /`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewChecker(tt.kind, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewChecker() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestCheckerNames(t *testing.T) {
	for kind, want := range map[CheckKind]string{
		CheckTCP: "tcp connect", CheckTLS: "tls handshake", CheckHTTPS: "https GET /readyz",
	} {
		c, err := NewChecker(kind, CheckOptions{})
		if err != nil {
			t.Fatalf("NewChecker(%s) = %v", kind, err)
		}
		if got := checkDetail(c, nil); got != want+" ok" {
			t.Errorf("%s: success detail = %q, want %q", kind, got, want+" ok")
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
