package daemon

import "testing"

// TestEthtoolReads: the feature names and their state come back from the
// kernel (a get request on the loopback, which changes nothing; no root
// needed): the two preflight reads, and one that is always on there.
func TestEthtoolReads(t *testing.T) {
	feats, err := ethFeatures("lo", "rx-lro", "rx-gro-hw", "loopback")
	if err != nil {
		t.Fatalf("ethFeatures(lo): %v", err)
	}
	for _, name := range []string{"rx-lro", "rx-gro-hw", "loopback"} {
		if _, ok := feats[name]; !ok {
			t.Errorf("feature %s not read: %v", name, feats)
		}
	}
	if !feats["loopback"] || feats["rx-lro"] {
		t.Errorf("lo's features: %v (loopback is always on, LRO never)", feats)
	}
	if _, err := ethFeatures("no-such-if0", "loopback"); err == nil {
		t.Error("a missing interface read without error")
	}
}
