package apiserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

type fixture struct {
	ca     *CA
	srv    *Server
	addr   string
	client *http.Client
}

// start serves a Server on 127.0.0.1 with a certificate from a fresh CA.
func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueServer(cfg.Name, "10.10.10.50")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Certificate == nil {
		cfg.Certificate = &kp.TLS
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &fixture{ca: ca, srv: srv, addr: ln.Addr().String(), client: newClient(ca, nil)}
}

func newClient(ca *CA, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: ca.Pool()}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
	}
}

func (f *fixture) get(t *testing.T, c *http.Client, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "https://"+f.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestReadyzAndWhoami(t *testing.T) {
	f := start(t, Config{Name: "server-1"})
	if code, body := f.get(t, f.client, "/readyz", ""); code != 200 || body != "ok" {
		t.Errorf("readyz = %d %q, want 200 ok", code, body)
	}
	f.srv.SetReady(false)
	if code, _ := f.get(t, f.client, "/readyz", ""); code != 503 {
		t.Errorf("readyz when unready = %d, want 503", code)
	}
	if code, _ := f.get(t, f.client, "/livez", ""); code != 200 {
		t.Errorf("livez when unready = %d, want 200", code)
	}
	f.srv.SetReady(true)
	if code, _ := f.get(t, f.client, "/readyz", ""); code != 200 {
		t.Errorf("readyz after SetReady(true) = %d", code)
	}
	if code, body := f.get(t, f.client, "/whoami", ""); code != 200 || body != "server-1\n" {
		t.Errorf("whoami = %d %q", code, body)
	}
	if code, _ := f.get(t, f.client, "/nope", ""); code != 404 {
		t.Errorf("unknown path = %d, want 404", code)
	}
	if st := f.srv.Stats(); st.Requests != 6 {
		t.Errorf("Stats().Requests = %d, want 6", st.Requests)
	}
}

func TestStartUnready(t *testing.T) {
	f := start(t, Config{Name: "s", Unready: true})
	if code, _ := f.get(t, f.client, "/readyz", ""); code != 503 {
		t.Errorf("readyz = %d, want 503", code)
	}
}

func TestTokenAuth(t *testing.T) {
	f := start(t, Config{Name: "server-2", Token: "s3cret"})
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/whoami", "", 401},
		{"/whoami", "wrong", 401},
		{"/whoami", "s3cret", 200},
		{"/readyz", "", 401}, // K3s refuses anonymous health checks too
		{"/readyz", "s3cret", 200},
		{"/watch?heartbeat=bad", "s3cret", 400},
	} {
		if code, body := f.get(t, f.client, tc.path, tc.token); code != tc.want {
			t.Errorf("GET %s token %q = %d %q, want %d", tc.path, tc.token, code, body, tc.want)
		}
	}
	if st := f.srv.Stats(); st.Unauthorized != 3 {
		t.Errorf("Unauthorized = %d, want 3", st.Unauthorized)
	}

	pub := start(t, Config{Name: "server-3", Token: "s3cret", PublicReadyz: true})
	if code, _ := pub.get(t, pub.client, "/readyz", ""); code != 200 {
		t.Errorf("PublicReadyz: readyz without token = %d", code)
	}
	if code, _ := pub.get(t, pub.client, "/whoami", ""); code != 401 {
		t.Errorf("PublicReadyz: whoami without token = %d", code)
	}
}

func TestClientCertAuth(t *testing.T) {
	clientCA, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, Config{Name: "server-1", ClientCAs: clientCA.Pool(), Token: "tok"})
	good, err := clientCA.IssueClient("system:node:agent-1")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := NewCA()
	bad, err := otherCA.IssueClient("mallory")
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := f.get(t, newClient(f.ca, &good.TLS), "/whoami", ""); code != 200 {
		t.Errorf("with a valid client certificate: %d, want 200", code)
	}
	if code, _ := f.get(t, f.client, "/whoami", ""); code != 401 {
		t.Errorf("without credentials: %d, want 401", code)
	}
	if code, _ := f.get(t, f.client, "/whoami", "tok"); code != 200 {
		t.Errorf("with the token instead: %d, want 200", code)
	}
	// A certificate from another CA fails the handshake.
	req, _ := http.NewRequest(http.MethodGet, "https://"+f.addr+"/whoami", nil)
	if resp, err := newClient(f.ca, &bad.TLS).Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("certificate from an unknown CA accepted: %d", resp.StatusCode)
	}
}

func readHeartbeats(t *testing.T, r *bufio.Reader, n int) []Heartbeat {
	t.Helper()
	var out []Heartbeat
	for range n {
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("after %d heartbeats: %v", len(out), err)
		}
		var hb Heartbeat
		if err := json.Unmarshal(line, &hb); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		out = append(out, hb)
	}
	return out
}

func TestWatchHeartbeats(t *testing.T) {
	f := start(t, Config{Name: "server-1", Heartbeat: 20 * time.Millisecond})
	resp, err := f.client.Get("https://" + f.addr + "/watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Server-Name") != "server-1" {
		t.Fatalf("watch: %d, X-Server-Name %q", resp.StatusCode, resp.Header.Get("X-Server-Name"))
	}
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("transfer encoding %v, want chunked", resp.TransferEncoding)
	}
	start := time.Now()
	hbs := readHeartbeats(t, bufio.NewReader(resp.Body), 11)
	elapsed := time.Since(start)
	for i, hb := range hbs {
		if hb.Seq != uint64(i) || hb.Server != "server-1" || hb.Time.IsZero() {
			t.Errorf("heartbeat %d = %+v", i, hb)
		}
	}
	// 10 intervals of 20ms after the immediate first line.
	if elapsed < 180*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("11 heartbeats at 20ms took %v", elapsed)
	}
	if st := f.srv.Stats(); st.ActiveWatches != 1 || st.TotalWatches != 1 {
		t.Errorf("stats %+v, want one active watch", st)
	}

	// ?heartbeat= overrides the interval.
	resp2, err := f.client.Get("https://" + f.addr + "/watch?heartbeat=5ms")
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	start = time.Now()
	readHeartbeats(t, bufio.NewReader(resp2.Body), 21)
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("21 heartbeats at 5ms took %v", d)
	}
}

// watchUntilEnd opens a watch and returns the error that ends it after the
// server is stopped by stop.
func watchUntilEnd(t *testing.T, f *fixture, stop func()) error {
	t.Helper()
	resp, err := f.client.Get("https://" + f.addr + "/watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	readHeartbeats(t, r, 2)
	stop()
	for {
		if _, err := r.ReadBytes('\n'); err != nil {
			return err
		}
	}
}

func TestWatchEndings(t *testing.T) {
	t.Run("shutdown ends the stream cleanly", func(t *testing.T) {
		f := start(t, Config{Name: "s", Heartbeat: 10 * time.Millisecond})
		err := watchUntilEnd(t, f, func() {
			go f.srv.Shutdown(context.Background())
		})
		if err != io.EOF {
			t.Errorf("after Shutdown: %v, want a clean io.EOF", err)
		}
	})
	t.Run("close ends it with EOF", func(t *testing.T) {
		f := start(t, Config{Name: "s", Heartbeat: 10 * time.Millisecond})
		err := watchUntilEnd(t, f, func() { f.srv.Close() })
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Errorf("after Close: %v, want EOF", err)
		}
	})
	t.Run("abort resets it", func(t *testing.T) {
		f := start(t, Config{Name: "s", Heartbeat: 10 * time.Millisecond})
		err := watchUntilEnd(t, f, func() { f.srv.Abort() })
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("after Abort: %v, want ECONNRESET", err)
		}
	})
}

func TestPKI(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueServer("server-1", "10.10.10.50")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(kp.TLS.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"10.10.10.100", "10.10.10.50", "10.10.10.98", "10.10.10.99", "127.0.0.1", "server-1", "localhost", "kubernetes.default"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.Pool()}); err != nil {
			t.Errorf("server certificate not valid for %s: %v", host, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "10.10.10.51", Roots: ca.Pool()}); err == nil {
		t.Error("server-1's certificate valid for server-2's address")
	}
	cl, err := ca.IssueClient("system:node:agent-1")
	if err != nil {
		t.Fatal(err)
	}
	ccert, _ := x509.ParseCertificate(cl.TLS.Certificate[0])
	if _, err := ccert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := ccert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate valid for server auth")
	}
	both, err := ca.Issue("node", "10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	bcert, _ := x509.ParseCertificate(both.TLS.Certificate[0])
	if bcert.Subject.CommonName != "node" || len(bcert.IPAddresses) != 1 || !slices.Contains(bcert.DNSNames, "node") {
		t.Errorf("Issue: CN %q IPs %v DNS %v", bcert.Subject.CommonName, bcert.IPAddresses, bcert.DNSNames)
	}
	if _, err := ca.Issue(); err == nil {
		t.Error("Issue without names: no error")
	}

	dir := t.TempDir()
	p, err := WritePKI(dir, "server-1", "10.10.10.50")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p.CAFile, p.ServerCert, p.ServerKey, p.ClientCert, p.ClientKey, p.TokenFile} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	if st, _ := os.Stat(p.ServerKey); st.Mode().Perm() != 0o600 {
		t.Errorf("server key mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey); err != nil {
		t.Error(err)
	}
	loaded, err := LoadCA(p.CAFile, filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(p.CA.Cert) {
		t.Error("LoadCA returned another certificate")
	}
	if _, err := loaded.IssueServer("server-9"); err != nil {
		t.Errorf("issue from a loaded CA: %v", err)
	}
	if _, err := LoadCA(p.ServerCert, p.ServerKey); err == nil {
		t.Error("LoadCA accepted a leaf certificate")
	}
	tok, _ := os.ReadFile(p.TokenFile)
	if strings.TrimSpace(string(tok)) != p.Token || !strings.HasPrefix(p.Token, "K10") {
		t.Errorf("token file %q, token %q", tok, p.Token)
	}
}

func TestEphemeralCertificate(t *testing.T) {
	srv, err := New(Config{Name: "eph"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get("https://" + ln.Addr().String() + "/whoami")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("status %d", resp.StatusCode)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without a name: no error")
	}
	if _, err := New(Config{Name: "x", Heartbeat: time.Microsecond}); err == nil {
		t.Error("New with a 1µs heartbeat: no error")
	}
}

func TestSinks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echo := ServeSink(ln, Echo)
	defer echo.Close()
	c, err := net.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte(strings.Repeat("x", 64))
	for range 3 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 64)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	// Half close: the sink finishes its side too.
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("after half close: %q %v", b, err)
	}
	c.Close()

	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	discard := ServeSink(ln2, Discard)
	c2, err := net.Dial("tcp", discard.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	deadline := time.Now().Add(5 * time.Second)
	for discard.Stats().Bytes != 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("discard sink counted %d bytes, want %d", discard.Stats().Bytes, 1<<20)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Close ends open connections too.
	c3, err := net.Dial("tcp", discard.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	for deadline := time.Now().Add(5 * time.Second); discard.Stats().Accepted < 2 || discard.Stats().Active != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("second connection not accepted: %+v", discard.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if err := discard.Close(); err != nil {
		t.Fatal(err)
	}
	c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Sink.Close")
	}
	if st := discard.Stats(); st.Accepted != 2 || st.Active != 0 {
		t.Errorf("stats %+v", st)
	}
}
