package daemon

import (
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/control/config"
)

// TestFailingOpen: with every backend down the node says it fails open
// (policy open) and the table holds every backend; check passes, check
// --backends fails. With the drop policy it does not fail open.
func TestFailingOpen(t *testing.T) {
	for _, policy := range []config.AllDownPolicy{config.AllDownOpen, config.AllDownDrop} {
		r := newRigWith(t, func(cfg *config.Config, _ *parts) { cfg.AllDown = policy })
		if st := r.d.status(); st.FailingOpen || st.AllDown != string(policy) {
			t.Fatalf("%s, backends up: failing open %v, all_down %q", policy, st.FailingOpen, st.AllDown)
		}
		for _, s := range []string{s1.String(), s2.String(), s3.String()} {
			r.d.bal.SetHealth(netip.MustParseAddrPort(s), false, false)
		}
		st := r.d.status()
		if st.FailingOpen != (policy == config.AllDownOpen) {
			t.Fatalf("%s, every backend down: failing open %v", policy, st.FailingOpen)
		}
		live := map[uint32]int{}
		for _, id := range r.dp.Live() {
			live[id]++
		}
		if open := len(live) >= 3; open != (policy == config.AllDownOpen) {
			t.Fatalf("%s: live table %v", policy, live)
		}
		if resp := r.d.handle(Request{Cmd: "check"}); !resp.OK {
			t.Fatalf("%s: check fails with every backend down: %s", policy, resp.Error)
		}
		if resp := r.d.handle(Request{Cmd: "check", Backends: true}); resp.OK {
			t.Fatalf("%s: check --backends passes with every backend down", policy)
		}
	}
}
