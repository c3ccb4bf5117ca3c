package bpf

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestStatLabels keeps the Go labels in sync with the C enum: every
// enumerator has a label, and its verdict class matches its C prefix.
func TestStatLabels(t *testing.T) {
	spec, err := loadXdplb()
	if err != nil {
		t.Fatal(err)
	}
	var enum *btf.Enum
	if err := spec.Types.TypeByName("xdplb_stat", &enum); err != nil {
		t.Fatal(err)
	}
	prefixes := map[string]string{
		"STAT_PASS_": VerdictPass, "STAT_FWD_": VerdictForward, "STAT_RESET_": VerdictReset, "STAT_DROP_": VerdictDrop,
		"STAT_ABORTED": VerdictAbort, "STAT_INFO_": VerdictInfo,
	}
	seen := map[string]bool{}
	for _, v := range enum.Values {
		if v.Name == "STAT_MAX" {
			if int(v.Value) != StatCount || len(statInfos) != StatCount {
				t.Fatalf("STAT_MAX %d, Go has %d labels, StatCount %d", v.Value, len(statInfos), StatCount)
			}
			continue
		}
		s := Stat(v.Value)
		if int(v.Value) >= len(statInfos) || statInfos[s].name == "" {
			t.Errorf("%s (%d) has no Go label", v.Name, v.Value)
			continue
		}
		want := ""
		for p, verdict := range prefixes {
			if strings.HasPrefix(v.Name, p) {
				want = verdict
			}
		}
		if s.Verdict() != want {
			t.Errorf("%s: Go verdict %q, C prefix says %q", v.Name, s.Verdict(), want)
		}
		if seen[s.Name()] {
			t.Errorf("label %q used twice", s.Name())
		}
		seen[s.Name()] = true
	}
	// The stats map's value names each counter as Go does, in the
	// enum's order, so that bpftool prints the labels of status and
	// metrics.
	var st *btf.Struct
	if err := spec.Types.TypeByName("xdplb_stats", &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != StatCount {
		t.Fatalf("struct xdplb_stats has %d counters, the enum %d", len(st.Members), StatCount)
	}
	for i, m := range st.Members {
		if m.Name != Stat(i).Name() || m.Offset.Bytes() != uint32(8*i) {
			t.Errorf("struct xdplb_stats member %d is %s at byte %d, want %s at %d", i, m.Name, m.Offset.Bytes(), Stat(i).Name(), 8*i)
		}
	}
}
