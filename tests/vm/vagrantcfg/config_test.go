// Package vagrantcfg keeps the Vagrant cluster's generated xdplb.yaml
// (vagrant/xdplb-config.sh) in step with the config parser: each check mode
// it can write must load and validate.
package vagrantcfg

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
)

func script(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", "vagrant", "xdplb-config.sh")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("vagrant/xdplb-config.sh: %v", err)
	}
	return p
}

func TestGeneratedConfigLoads(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash")
	}
	tests := []struct {
		name      string
		arg       string
		ca, token bool
		wantCheck health.CheckKind
		wantCA    bool
		wantToken bool
	}{
		{name: "tcp", arg: "tcp", ca: true, wantCheck: health.CheckTCP},
		{name: "tls with the K3s CA", arg: "tls", ca: true, wantCheck: health.CheckTLS, wantCA: true},
		{name: "tls without a CA", arg: "tls", wantCheck: health.CheckTLS},
		{name: "https with token and CA", arg: "https", ca: true, token: true, wantCheck: health.CheckHTTPS, wantCA: true, wantToken: true},
		{name: "https without a token falls back to tls", arg: "https", ca: true, wantCheck: health.CheckTLS, wantCA: true},
		{name: "default from vagrant.env", arg: "", ca: true, wantCheck: health.CheckTLS, wantCA: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			env := "VIP=10.10.10.100\nBACKENDS=\"10.10.10.50 10.10.10.51 10.10.10.52\"\nCHECK=tls\n"
			write(t, filepath.Join(dir, "vagrant.env"), env)
			if tt.ca {
				write(t, filepath.Join(dir, "k3s-ca.crt"), "-----BEGIN CERTIFICATE-----\n")
			}
			if tt.token {
				write(t, filepath.Join(dir, "check-token"), "token")
			}
			args := []string{script(t)}
			if tt.arg != "" {
				args = append(args, tt.arg)
			}
			cmd := exec.Command("bash", args...)
			cmd.Env = append(os.Environ(), "XDPLB_ETC="+dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("xdplb-config.sh %s: %v\n%s", tt.arg, err, out)
			}
			cfg, err := config.LoadConfig(filepath.Join(dir, "xdplb.yaml"))
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if cfg.Iface != "eth1" || cfg.VIP != netip.MustParseAddr("10.10.10.100") || cfg.Port != 6443 {
				t.Errorf("frontend = %s %s:%d, want eth1 10.10.10.100:6443", cfg.Iface, cfg.VIP, cfg.Port)
			}
			var backends []string
			for _, b := range cfg.ResolvedBackends() {
				backends = append(backends, b.Addr.String())
			}
			if got := strings.Join(backends, " "); got != "10.10.10.50:6443 10.10.10.51:6443 10.10.10.52:6443" {
				t.Errorf("backends = %s", got)
			}
			if cfg.Check != tt.wantCheck {
				t.Errorf("check = %s, want %s", cfg.Check, tt.wantCheck)
			}
			if (cfg.CheckCA != "") != tt.wantCA || (cfg.CheckTokenFile != "") != tt.wantToken {
				t.Errorf("check-ca %q, check-token-file %q; want set: %v, %v", cfg.CheckCA, cfg.CheckTokenFile, tt.wantCA, tt.wantToken)
			}
			if tt.wantToken && cfg.CheckPath != "/readyz" {
				t.Errorf("check-path = %q, want /readyz", cfg.CheckPath)
			}
			if p := cfg.HealthParams(); p.Inter != 10*time.Second || p.DownInter != 5*time.Second {
				t.Errorf("inter %s, downinter %s; want the guide's 10s and 5s", p.Inter, p.DownInter)
			}
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
