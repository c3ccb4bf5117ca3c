package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/testenv"
	"github.com/xdplb/xdplb/tests/testnet"
)

// A lab made for a program (Create) runs an instance in front of echo
// sinks, and Close leaves nothing: no namespace, no bpffs mount, no
// directory, no daemon.
func TestCreateRunClose(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, mounts bpffs, attaches XDP programs")
	if testing.Short() {
		t.Skip("builds xdplb and runs it")
	}
	l, err := Create(Options{Spec: testnet.Spec{Servers: 2, LBs: 1, Agents: 1, TxOffloadOff: true, PassXDPOnLBPeers: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.StartServers(Echo); err != nil {
		t.Fatal(err)
	}
	in, err := l.NewInstance(l.LB(1), InstanceConfig{Tag: "t1", Args: []string{"--check", "tcp", "--hook", "xdp", "--xdp-mode", "generic"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(); err != nil {
		t.Fatal(err)
	}
	if err := in.Start(); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("second Start: %v", err)
	}
	if !l.Agent(1).CanDial(Frontend().String(), 3*time.Second) {
		t.Fatal("agent-1 cannot connect through the instance")
	}
	st, err := in.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Instance != in.Name || len(st.Backends) != 2 || !strings.HasPrefix(st.Version, "lab-1") {
		t.Fatalf("status: instance %q version %q backends %+v", st.Instance, st.Version, st.Backends)
	}
	if _, err := os.Stat(in.PinDir()); err != nil {
		t.Fatalf("no pins: %v", err)
	}
	proc, mnt, dir := in.Process(), in.BPFFS, l.dir
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !proc.Exited() {
		t.Error("daemon still runs after Close")
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	if strings.Contains(string(mounts), mnt) {
		t.Errorf("bpffs %s still mounted", mnt)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s left: %v", dir, err)
	}
	if left, _ := filepath.Glob(filepath.Join("/run/netns", l.Prefix+"-*")); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if _, err := os.Stat(in.SocketPath()); err == nil {
		t.Error("control socket left")
	}
	if _, err := l.NewInstance(l.LB(1), InstanceConfig{}); err == nil {
		t.Error("NewInstance on a closed lab")
	}
}
