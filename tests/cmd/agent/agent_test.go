package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/agent"
	"github.com/xdplb/xdplb/tests/apiserver"
)

type env struct {
	pki *apiserver.PKI
	url string
	srv *apiserver.Server
}

func setup(t *testing.T) *env {
	t.Helper()
	p, err := apiserver.WritePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := p.CA.IssueServer("server-1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := apiserver.New(apiserver.Config{Name: "server-1", Certificate: &kp.TLS, Token: p.Token, Heartbeat: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &env{pki: p, url: "https://" + ln.Addr().String(), srv: srv}
}

func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, &out, &errb, args)
	return out.String(), errb.String(), err
}

func TestWhoamiCommand(t *testing.T) {
	e := setup(t)
	out, stderr, err := runCmd(t, "whoami", "--url", e.url, "-n", "5", "-c", "2", "--ca", e.pki.CAFile, "--token-file", e.pki.TokenFile)
	if err != nil {
		t.Fatalf("%v: %s", err, stderr)
	}
	if !strings.Contains(out, "server-1") || !strings.Contains(out, " 5\n") || !strings.Contains(out, "failures             0") {
		t.Errorf("output:\n%s", out)
	}
	out, _, err = runCmd(t, "whoami", "--url", e.url, "-n", "3", "--ca", e.pki.CAFile, "--token", e.pki.Token, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var res agent.BalanceResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Counts["server-1"] != 3 {
		t.Errorf("json %q: %+v %v", out, res, err)
	}
	// Without token: failures; --strict turns them into exit status 3.
	_, _, err = runCmd(t, "whoami", "--url", e.url, "-n", "2", "--ca", e.pki.CAFile, "--strict")
	if exitCode(err, io.Discard) != 3 {
		t.Errorf("--strict with failures: %v (exit %d), want exit 3", err, exitCode(err, io.Discard))
	}
	// Client certificate instead of a token is not enough here (server has no client CA).
	out, _, err = runCmd(t, "whoami", "--url", e.url, "--ca", e.pki.CAFile, "--cert", e.pki.ClientCert, "--key", e.pki.ClientKey, "--json")
	if err != nil || !strings.Contains(out, "http-401") {
		t.Errorf("client cert without client CA: %v %s", err, out)
	}
}

func TestWatchCommand(t *testing.T) {
	e := setup(t)
	out, stderr, err := runCmd(t, "watch", "--url", e.url, "-n", "3", "--duration", "300ms", "--ca", e.pki.CAFile,
		"--token-file", e.pki.TokenFile, "--progress", "100ms", "--strict")
	if err != nil {
		t.Fatalf("%v: %s", err, stderr)
	}
	var rep agent.WatchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	if rep.Open != 3 || rep.Broken != 0 || len(rep.Details) != 3 || rep.MaxGapMS <= 0 {
		t.Errorf("report %+v", rep)
	}
	if !strings.Contains(stderr, "watch: open=3") {
		t.Errorf("no progress lines: %q", stderr)
	}
	out, _, err = runCmd(t, "watch", "--url", e.url, "-n", "2", "--duration", "100ms", "--ca", e.pki.CAFile, "--details=false", "--strict")
	if exitCode(err, io.Discard) != 3 || !strings.Contains(out, `"broken": 2`) || strings.Contains(out, `"details": [`) {
		t.Errorf("without token, --strict: %v\n%s", err, out)
	}
}

func TestLoadCommands(t *testing.T) {
	eln, _ := net.Listen("tcp", "127.0.0.1:0")
	echo := apiserver.ServeSink(eln, apiserver.Echo)
	defer echo.Close()
	dln, _ := net.Listen("tcp", "127.0.0.1:0")
	discard := apiserver.ServeSink(dln, apiserver.Discard)
	defer discard.Close()

	out, _, err := runCmd(t, "rr", "--addr", echo.Addr().String(), "-n", "100", "--duration", "0")
	if err != nil || !strings.Contains(out, "rr addr=") || !strings.Contains(out, "ops=100 ") {
		t.Errorf("rr: %v %q", err, out)
	}
	out, _, err = runCmd(t, "connrate", "--addr", echo.Addr().String(), "-c", "2", "--duration", "200ms", "--rst-close", "--json")
	var res agent.LoadResult
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.Ops == 0 || res.Kind != "connrate" {
		t.Errorf("connrate: %v %q", err, out)
	}
	out, _, err = runCmd(t, "bulk", "--addr", discard.Addr().String(), "--duration", "200ms")
	if err != nil || !strings.Contains(out, "gbit/s=") {
		t.Errorf("bulk: %v %q", err, out)
	}
	// Unbounded and bad arguments are usage errors.
	for _, args := range [][]string{
		{"rr", "--addr", "127.0.0.1:1", "--duration", "0"},
		{"bulk", "--addr", "127.0.0.1:1", "--duration", "0"},
		{"connrate", "-c", "0"},
		{"whoami", "-n", "0"},
		{"watch", "--duration", "0"},
		{"nosuch"},
		{},
		{"whoami", "extra-arg"},
	} {
		if _, _, err := runCmd(t, args...); exitCode(err, io.Discard) != 2 {
			t.Errorf("%q: %v, want usage error (exit 2)", args, err)
		}
	}
	if out, _, err := runCmd(t, "--help"); err != nil || !strings.Contains(out, "connrate") {
		t.Errorf("--help: %v %q", err, out)
	}
	if _, _, err := runCmd(t, "rr", "--help"); err != nil {
		t.Errorf("rr --help: %v", err)
	}
}

func TestTokenFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runCmd(t, "whoami", "--token-file", filepath.Join(dir, "missing")); exitCode(err, io.Discard) != 1 {
		t.Errorf("missing token file: %v", err)
	}
	f := filepath.Join(dir, "tok")
	os.WriteFile(f, []byte("x"), 0o600)
	if _, _, err := runCmd(t, "whoami", "--token", "a", "--token-file", f); exitCode(err, io.Discard) != 2 {
		t.Errorf("--token with --token-file: %v", err)
	}
	if _, _, err := runCmd(t, "whoami", "--ca", filepath.Join(dir, "missing")); exitCode(err, io.Discard) != 1 {
		t.Errorf("missing CA: %v", err)
	}
}
