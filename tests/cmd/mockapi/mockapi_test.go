package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/apiserver"
	"github.com/xdplb/xdplb/tests/testenv"
)

type running struct {
	stdout, stderr *testenv.SyncBuffer
	sigs           chan os.Signal
	done           chan error
	addrs          map[string]string
}

func startMockapi(t *testing.T, args ...string) *running {
	t.Helper()
	r := &running{stdout: &testenv.SyncBuffer{}, stderr: &testenv.SyncBuffer{}, sigs: make(chan os.Signal, 4), done: make(chan error, 1), addrs: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- mockapi(ctx, r.stdout, r.stderr, args, r.sigs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("mockapi did not stop")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(r.stdout.String(), "listening") {
		select {
		case err := <-r.done:
			t.Fatalf("mockapi ended: %v\n%s", err, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listening line: %s", r.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, f := range strings.Fields(r.stdout.String()) {
		if k, v, ok := strings.Cut(f, "="); ok {
			r.addrs[k] = v
		}
	}
	return r
}

func get(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSignalsToggleReadiness(t *testing.T) {
	r := startMockapi(t, "--listen", "127.0.0.1:0", "--name", "server-1", "--heartbeat", "10ms")
	url := "https://" + r.addrs["api"] + "/readyz"
	if code := get(t, url); code != 200 {
		t.Fatalf("readyz = %d", code)
	}
	r.sigs <- syscall.SIGUSR1
	waitCode(t, url, 503)
	r.sigs <- syscall.SIGUSR2
	waitCode(t, url, 200)

	r.sigs <- syscall.SIGTERM
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		r.done <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

func waitCode(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for get(t, url) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d", url, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestControlAndSinks(t *testing.T) {
	dir := t.TempDir()
	p, err := apiserver.WritePKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := startMockapi(t, "--listen", "127.0.0.1:0", "--name", "s", "--cert", p.ServerCert, "--key", p.ServerKey,
		"--token-file", p.TokenFile, "--public-readyz", "--unready",
		"--control", "127.0.0.1:0", "--echo-listen", "127.0.0.1:0", "--discard-listen", "127.0.0.1:0")
	for _, k := range []string{"api", "control", "echo", "discard"} {
		if r.addrs[k] == "" {
			t.Fatalf("no %s address in %q", k, r.stdout)
		}
	}
	if !strings.Contains(r.stdout.String(), "ready=false") {
		t.Errorf("--unready not reported: %q", r.stdout)
	}
	api := "https://" + r.addrs["api"]
	if code := get(t, api+"/readyz"); code != 503 {
		t.Errorf("readyz = %d, want 503", code)
	}
	if code := get(t, api+"/whoami"); code != 401 {
		t.Errorf("whoami without token = %d, want 401", code)
	}
	resp, err := http.Post("http://"+r.addrs["control"]+"/ready", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code := get(t, api+"/readyz"); code != 200 {
		t.Errorf("readyz after POST /ready = %d", code)
	}
	resp, err = http.Get("http://" + r.addrs["control"] + "/status")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "name=s ready=true") || !strings.Contains(string(b), "unauthorized=1") {
		t.Errorf("status %q", b)
	}

	c, err := net.Dial("tcp", r.addrs["echo"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("echo: %q %v", buf, err)
	}
}

func TestEchoOnly(t *testing.T) {
	r := startMockapi(t, "--listen", "", "--echo-listen", "127.0.0.1:0")
	if r.addrs["api"] != "" || r.addrs["echo"] == "" {
		t.Errorf("listening line %q", r.stdout)
	}
}

func TestGenPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	var out, errb bytes.Buffer
	if err := mockapi(context.Background(), &out, &errb, []string{"--gen-pki", dir, "--san", "server-1", "--san", "10.10.10.50"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "token"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := apiserver.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
		t.Error(err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", ""},
		{"--cert", "x"},
		{"--token", "a", "--token-file", "b"},
		{"--control", "0.0.0.0:1"},
		{"--bogus"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		err := mockapi(context.Background(), &out, &errb, args, nil)
		if _, ok := err.(usageError); !ok {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
		if exitCode(err, io.Discard) != 2 {
			t.Errorf("%q: exit code %d", args, exitCode(err, io.Discard))
		}
	}
	var out bytes.Buffer
	if err := mockapi(context.Background(), &out, &out, []string{"--help"}, nil); err != nil {
		t.Errorf("--help: %v", err)
	}
	if err := mockapi(context.Background(), &out, &out, []string{"--listen", "127.0.0.1:0", "--cert", "/nonexistent", "--key", "/nonexistent"}, nil); err == nil || exitCode(err, io.Discard) != 1 {
		t.Errorf("missing certificate: %v", err)
	}
}
