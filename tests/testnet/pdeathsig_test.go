package testnet

import (
	"fmt"
	"testing"
	"time"

	"github.com/xdplb/xdplb/tests/testenv"
)

// Processes started before namespaces are created must survive: creating a
// namespace retires an OS thread, which must never be the one that forked a
// child with Pdeathsig set.
func TestStartedProcessSurvivesNamespaceCreation(t *testing.T) {
	testenv.RequireRoot(t, "creates network namespaces, veth pairs and bridges")
	n := New(t, Options{})
	h, err := n.AddHost("h0", "")
	if err != nil {
		t.Fatal(err)
	}
	var procs []*Process
	for i := range 10 {
		p, err := h.Start("sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		if _, err := n.AddHost(fmt.Sprintf("h%d", i+1), ""); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	for _, p := range procs {
		if p.Exited() {
			t.Errorf("%s died when namespaces were created: %v", p, p.Wait())
		}
	}
}
